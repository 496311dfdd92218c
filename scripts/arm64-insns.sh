#!/usr/bin/env bash
# Instructions per (row, token, block) of dl_matmul in the arm64 library, counted under qemu-aarch64
# with a TCG plugin (scripts/arm64-insns/plugin.c): a proxy for the NEON kernels' speed where no
# arm64 machine is at hand (no timing: qemu's speed says nothing about a Cortex-A76's).
#   bash scripts/arm64-insns.sh [--cpu cortex-a72|cortex-a76] [--type q4_0|q8_0] [ROWS N_IN TOKENS]
# Defaults: cortex-a76 (NEON + dotprod; cortex-a72 is NEON only), q4_0, 256 2048 64.
set -euo pipefail
cd "$(dirname "$0")/.."
cpu=cortex-a76 type=2
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --cpu) cpu=$2; shift 2 ;;
    --type) case $2 in q4_0) type=2 ;; q8_0) type=8 ;; *) echo "arm64-insns: --type is q4_0 or q8_0, not $2" >&2; exit 2 ;; esac; shift 2 ;;
    *) echo "arm64-insns: unknown flag $1" >&2; exit 2 ;;
  esac
done
rows=${1:-256} n_in=${2:-2048} tokens=${3:-64}
sysroot=/usr/aarch64-linux-gnu
if ! command -v qemu-aarch64 >/dev/null || [ ! -e "$sysroot/lib/ld-linux-aarch64.so.1" ]; then
  echo "arm64-insns: needs qemu-aarch64 and an arm64 glibc in $sysroot (apt-get install qemu-user libc6-arm64-cross)" >&2
  exit 2
fi
out=build/arm64-insns
mkdir -p "$out"
npx bun scripts/build-native.ts --target aarch64 >&2
cc -shared -fPIC -O2 -o "$out/plugin.so" scripts/arm64-insns/plugin.c
npx bun scripts/build-native.ts --zig cc -target aarch64-linux-gnu -O2 -o "$out/driver" scripts/arm64-insns/driver.c >&2
lib=$PWD/build/native/aarch64-linux/lib/libdairllm.so
count() {
  qemu-aarch64 -L "$sysroot" -cpu "$cpu" -plugin "$out/plugin.so" "$out/driver" "$lib" "$rows" "$n_in" "$tokens" "$1" "$type" 2>&1 |
    sed -n 's/^insns //p'
}
a=$(count 1)
b=$(count 3)
if [[ -z $a || -z $b ]]; then echo "arm64-insns: qemu did not report a count" >&2; exit 1; fi
python3 -c "
per = ($b - $a) / 2 / ($rows * $tokens * ($n_in // 32))
print(f'$cpu, $( [[ $type == 2 ]] && echo Q4_0 || echo Q8_0 ) ${rows}x${n_in}, $tokens token(s): {per:.2f} instructions per row, token and block')"
