// Builds one self-contained dairllm-worker executable per target with `bun build --compile`, each
// embedding the native library built for its own architecture (zig cross-compiles the arm64 one):
//   dist/dairllm-worker-linux-x64, dist/dairllm-worker-linux-x64-baseline, dist/dairllm-worker-linux-arm64
//
//   bun scripts/build-binaries.ts [--only linux-x64,linux-arm64,...]
import { mkdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Arch, ensureNative, libraryPath } from "./build-native";

const ROOT = join(import.meta.dir, "..");
/** The demo model every binary carries: `dairllm-worker --root` with no --model runs it. */
const DEMO = join(ROOT, "test", "fixtures", "demo", "dairllm-demo-13m-q4_0.gguf");
const TARGETS: { name: string; bunTarget: string; arch: Arch }[] = [
  { name: "linux-x64", bunTarget: "bun-linux-x64", arch: "x86_64" },
  { name: "linux-x64-baseline", bunTarget: "bun-linux-x64-baseline", arch: "x86_64" },
  { name: "linux-arm64", bunTarget: "bun-linux-arm64", arch: "aarch64" },
];

const args = process.argv.slice(2);
const oi = args.indexOf("--only");
const only = oi >= 0 ? (args[oi + 1] ?? "").split(",") : TARGETS.map((t) => t.name);
for (const o of only) {
  if (!TARGETS.some((t) => t.name === o)) {
    console.error(`--only: unknown target ${o} (targets: ${TARGETS.map((t) => t.name).join(", ")})`);
    process.exit(2);
  }
}

mkdirSync(join(ROOT, "dist"), { recursive: true });
mkdirSync(join(ROOT, "build", "entry"), { recursive: true });
for (const t of TARGETS.filter((x) => only.includes(x.name))) {
  const lib = ensureNative(t.arch);
  // The entry embeds this architecture's library and registers it before the CLI runs.
  const entry = join(ROOT, "build", "entry", `${t.name}.ts`);
  writeFileSync(
    entry,
    [
      `import lib from ${JSON.stringify(lib)} with { type: "file" };`,
      `import demo from ${JSON.stringify(DEMO)} with { type: "file" };`,
      `import { setEmbeddedLibrary } from ${JSON.stringify(join(ROOT, "src", "native", "ffi.ts"))};`,
      `import { exitWith, runCli, setBuildInfo } from ${JSON.stringify(join(ROOT, "src", "main.ts"))};`,
      "setEmbeddedLibrary(lib);",
      `setBuildInfo({ target: ${JSON.stringify(t.name)}, defaultModel: demo });`,
      "exitWith(await runCli(process.argv.slice(2)));",
      "",
    ].join("\n"),
  );
  const out = join(ROOT, "dist", `dairllm-worker-${t.name}`);
  const t0 = performance.now();
  const p = Bun.spawnSync([process.execPath, "build", "--compile", `--target=${t.bunTarget}`, "--minify", entry, "--outfile", out], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  if (p.exitCode !== 0) {
    console.error(`bun build --compile for ${t.name} failed:\n${p.stdout}${p.stderr}`);
    process.exit(1);
  }
  const mb = statSync(out).size / 2 ** 20;
  console.log(`${out}  ${mb.toFixed(1)} MiB  (${t.arch} library ${libraryPath(t.arch)}, ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
}
