// The single-file executables: built from this checkout, copied alone into an empty directory and run
// with an empty environment, they generate the same text as the source tree, with the embedded native
// library and the embedded demo model. (arm64: scripts/test-arm64.sh runs the arm64 one under qemu.)
import { beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..");
const MODEL = join(import.meta.dir, "fixtures", "models", "mini-q4_0.gguf");
const skip = process.arch !== "x64" || !!process.env.DAIRLLM_LIB;

function source(...args: string[]): string {
  const p = Bun.spawnSync([process.execPath, join(ROOT, "src", "main.ts"), ...args], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  expect(p.exitCode).toBe(0);
  return p.stdout.toString();
}

describe.skipIf(skip)("x64 binaries", () => {
  beforeAll(() => {
    const p = Bun.spawnSync([process.execPath, join(ROOT, "scripts", "build-binaries.ts"), "--only", "linux-x64,linux-x64-baseline"], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
    if (p.exitCode !== 0) throw new Error(`build-binaries failed:\n${p.stdout}${p.stderr}`);
  }, 180_000);

  for (const target of ["linux-x64", "linux-x64-baseline"]) {
    test(`${target}: alone in an empty directory, with an empty environment, it generates the source tree's text`, () => {
      const dir = mkdtempSync(join(tmpdir(), "dairllm-bin-"));
      try {
        const bin = join(dir, "dairllm-worker");
        copyFileSync(join(ROOT, "dist", `dairllm-worker-${target}`), bin);
        copyFileSync(MODEL, join(dir, "m.gguf"));
        const run = (...args: string[]) => Bun.spawnSync(["env", "-i", bin, ...args], { cwd: dir, stdout: "pipe", stderr: "pipe" });
        const v = run("--version");
        expect(v.exitCode).toBe(0);
        expect(v.stdout.toString()).toMatch(new RegExp(`^dairllm-worker [\\d.]+, target ${target}, bun [\\d.]+\\n$`));
        const args = ["--root", "-p", "The old man and the sea", "-n", "24", "--temp", "0"];
        const g = run(...args, "-m", "m.gguf");
        expect(g.stderr.toString()).not.toContain("TypeScript kernels"); // the embedded native library loaded
        expect(g.exitCode).toBe(0);
        expect(g.stdout.toString()).toBe(source(...args, "-m", MODEL));
        // no --model: the embedded demo model completes Python
        const demo = run("--root", "-n", "16", "--temp", "0");
        expect(demo.exitCode).toBe(0);
        expect(demo.stdout.toString()).toBe(source("--root", "-n", "16", "--temp", "0"));
        expect(run("selftest").exitCode).toBe(0);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }, 60_000);
  }
});
