// The benchmarks' generated models: TinyLlama-1.1B-shape GGUFs made once by make-model.ts into
// build/models/ and reused by every benchmark.
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..");

/** build/models/tinyllama-TYPE.gguf, generated on first use. */
export function tinyllamaModel(type: string): string {
  const path = join(ROOT, "build", "models", `tinyllama-${type}.gguf`);
  if (!existsSync(path)) {
    mkdirSync(join(ROOT, "build", "models"), { recursive: true });
    console.log(`generating ${path} (TinyLlama-1.1B shape, ${type.toUpperCase()}) ...`);
    const p = Bun.spawnSync([process.execPath, join(ROOT, "scripts", "make-model.ts"), "--out", path, "--preset", "tinyllama", "--type", type], { stdout: "inherit", stderr: "inherit" });
    if (p.exitCode !== 0) throw new Error("make-model failed");
  }
  return path;
}
