// The build without zig: the system C compiler builds a native-only library, says why, and that
// library passes a kernel check through the same loader.
import { expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..");
const EXEC = (process.env.DAIRLLM_TEST_EXEC ?? "").split(" ").filter(Boolean);

test.skipIf(!Bun.which("cc") || !!process.env.DAIRLLM_LIB)("without zig, the C compiler builds the library, with a clear message", () => {
  const dir = mkdtempSync(join(tmpdir(), "dairllm-cc-"));
  try {
    const env = { ...process.env, DAIRLLM_ZIG: "none", DAIRLLM_BUILD_DIR: dir };
    const build = Bun.spawnSync([...EXEC, process.execPath, "scripts/build-native.ts", "--force"], { cwd: ROOT, env, stderr: "pipe", stdout: "pipe" });
    const log = build.stderr.toString();
    expect(log).toContain("is missing");
    expect(log).toContain("falling back to the system C compiler");
    expect(build.exitCode).toBe(0);
    const lib = build.stdout.toString().trim();
    expect(lib).toStartWith(dir);
    const script = `
      import { createNativeKernels, nativeInfo } from "./src/native/ffi.ts";
      import { GGMLType } from "./src/native/types.ts";
      const info = nativeInfo();
      const k = createNativeKernels(2);
      const w = new Float32Array([1, 2, 3, 4, 5, 6]), x = new Float32Array([1, 1, 1]), out = new Float32Array(2);
      k.matmul(out, 2, w, GGMLType.F32, x, 3, 0, 2, 1);
      console.log(info.variants.length, Array.from(out).join(","));
      k.close();`;
    const run = Bun.spawnSync([...EXEC, process.execPath, "-e", script], { cwd: ROOT, env: { ...process.env, DAIRLLM_LIB: lib } });
    expect(run.stdout.toString().trim()).toBe(`${process.arch === "x64" ? 5 : 3} 6,15`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, 120_000);
