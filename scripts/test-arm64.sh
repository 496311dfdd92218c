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
rm -f "$log"
exit $status
