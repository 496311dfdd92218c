// A binary made by `bun build --compile` carries libdairllm inside (with { type: "file" }) and loads
// it from there: run from an empty directory with an empty environment.
import { expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

test.skipIf(process.arch !== "x64" || !!process.env.DAIRLLM_LIB)("a compiled binary loads its embedded native library", () => {
  const dir = mkdtempSync(join(tmpdir(), "dairllm-embed-"));
  try {
    const bin = join(dir, "embedded-test");
    const build = Bun.spawnSync([process.execPath, "build", "--compile", join(import.meta.dir, "fixtures", "embedded-lib-entry.ts"), "--outfile", bin], { stderr: "pipe", stdout: "pipe" });
    expect(build.stderr.toString()).not.toContain("error");
    expect(build.exitCode).toBe(0);
    const run = Bun.spawnSync(["env", "-i", bin], { cwd: dir, stdout: "pipe", stderr: "pipe" });
    expect(run.stderr.toString()).toBe("");
    const result = JSON.parse(run.stdout.toString());
    expect(result.kernels).toMatch(/^native:/);
    expect(result.path).toStartWith("/$bunfs/");
    expect(result.out).toEqual([11, 22, 33]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, 60_000);
