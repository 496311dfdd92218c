#!/usr/bin/env bash
# The kernel tests on arm64, under qemu-user: the C-level tests and the same `bun test` kernel tests,
# with an arm64 bun from npm, once as a Raspberry Pi 4 (cortex-a72: NEON, no dotprod) and once as a
# Raspberry Pi 5 (cortex-a76: NEON + dotprod). Needs Debian's qemu-user and libc6-arm64-cross.
#   bash scripts/test-arm64.sh
set -euo pipefail
cd "$(dirname "$0")/.."

sysroot=/usr/aarch64-linux-gnu
if ! command -v qemu-aarch64 >/dev/null || [ ! -e "$sysroot/lib/ld-linux-aarch64.so.1" ]; then
  echo "test-arm64: needs qemu-aarch64 and an arm64 glibc in $sysroot (apt-get install qemu-user libc6-arm64-cross)" >&2
  exit 2
fi

bun_version=$(node -p 'require("./package.json").devDependencies.bun')
arm_bun=.tools/bun-linux-aarch64-$bun_version/package/bin/bun
if [ ! -x "$arm_bun" ]; then
  echo "test-arm64: fetching bun $bun_version for linux-aarch64 from npm"
  dir=$(dirname "$(dirname "$(dirname "$arm_bun")")")
  mkdir -p "$dir"
  (cd "$dir" && npm pack --silent "@oven/bun-linux-aarch64@$bun_version" >/dev/null && tar xzf oven-bun-linux-aarch64-*.tgz)
fi

npx bun scripts/build-native.ts --target aarch64
npx bun scripts/build-native.ts --zig build test-exe -Dtarget=aarch64-linux-gnu -Drelease -p build/native/aarch64-linux
lib=$PWD/build/native/aarch64-linux/lib/libdairllm.so

status=0
log=$(mktemp)
for cpu in cortex-a72 cortex-a76; do
  qemu="qemu-aarch64 -L $sysroot -cpu $cpu"
  echo "== arm64 ($cpu): C kernel tests"
  if ! $qemu build/native/aarch64-linux/bin/test_kernels >"$log" 2>&1; then status=1; fi
  tail -n 8 "$log"
  echo "== arm64 ($cpu): bun test test/kernels.test.ts test/native.test.ts"
  if ! DAIRLLM_LIB=$lib DAIRLLM_TEST_EXEC="$qemu" $qemu "$arm_bun" test --timeout 120000 \
      test/kernels.test.ts test/native.test.ts >"$log" 2>&1; then status=1; fi
  grep -vE '^\(pass\)' "$log" | tail -n 25
done

# The arm64 executable: selftest on both CPUs, the same greedy tokens as the x64 one, and a mixed
# cluster (root on x64, worker on emulated arm64).
echo "== arm64 executable"
npx bun scripts/build-binaries.ts --only linux-x64,linux-arm64
x64=dist/dairllm-worker-linux-x64
arm=dist/dairllm-worker-linux-arm64
model=test/fixtures/models/mini-q4_0.gguf
args=(--root -m "$model" -p "The old man and the sea" -n 24 --temp 0)
want=$("$x64" "${args[@]}" 2>/dev/null)
for cpu in cortex-a72 cortex-a76; do
  qemu="qemu-aarch64 -L $sysroot -cpu $cpu"
  if $qemu "$arm" selftest >"$log" 2>&1; then echo "arm64 ($cpu) selftest: passed"; else echo "arm64 ($cpu) selftest: FAILED"; cat "$log"; status=1; fi
  got=$($qemu "$arm" "${args[@]}" 2>/dev/null) || true
  if [ "$got" = "$want" ]; then echo "arm64 ($cpu) greedy generation: same text as x64"; else echo "arm64 ($cpu) greedy generation DIFFERS: '$got' vs '$want'"; status=1; fi
  demo_x64=$("$x64" --root -n 16 --temp 0 2>/dev/null)
  demo_arm=$($qemu "$arm" --root -n 16 --temp 0 2>/dev/null) || true
  if [ "$demo_arm" = "$demo_x64" ]; then echo "arm64 ($cpu) embedded demo model: same text as x64"; else echo "arm64 ($cpu) embedded demo model DIFFERS"; status=1; fi
done
qemu-aarch64 -L $sysroot -cpu cortex-a72 "$arm" --port 0 --host 127.0.0.1 -m "$model" -t 1 2>"$log" &
wpid=$!
for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
addr=$(grep -o 'listening on [0-9.]*:[0-9]*' "$log" | awk '{print $3}')
got=$("$x64" "${args[@]}" --workers "$addr" 2>/dev/null) || true
kill $wpid 2>/dev/null
if [ -n "$addr" ] && [ "$got" = "$want" ]; then echo "root on x64 + worker on arm64 (cortex-a72): same text"; else echo "mixed-architecture cluster FAILED ($addr): '$got'"; cat "$log"; status=1; fi
echo "binary sizes: $(ls -l dist/dairllm-worker-* | awk '{printf "%s %.1f MiB; ", $9, $5/1048576}')"
rm -f "$log"
echo "arm64 checks: $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status
