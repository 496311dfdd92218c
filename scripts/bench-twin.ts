// What this machine allows a pair: the C twin of a root and one worker (scripts/pair-twin.c: the same
// matmuls through the kernel library, two 2176-byte exchanges per layer over TCP on 127.0.0.1, no
// runtime around them) against the same program as one process with 2 threads, alternated round by
// round, beside bench:cluster's ratio for the real pair. Where the twin is at par and the real pair is
// not, the difference is ours (frames, event loop, wake-ups, the JIT), not the machine's.
//
//   bun scripts/bench-twin.ts [-n TOKENS] [--rounds R]      (npx bun run bench:twin)
//
// Needs 2 CPUs (the pair is pinned to CPU 0 and 1, as on two machines) and a C compiler (the project's
// zig, else cc).
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { ensureNative, findZig, hostArch, libraryPath } from "./build-native";

const args = process.argv.slice(2);
const arg = (name: string, def: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1]! : def;
};
const tokens = Number(arg("-n", "128"));
const rounds = Number(arg("--rounds", "3"));
if (!(tokens >= 1) || !(rounds >= 1)) {
  console.error("usage: bun scripts/bench-twin.ts [-n TOKENS] [--rounds R]");
  process.exit(2);
}
if (navigator.hardwareConcurrency < 2) {
  console.error("bench-twin: needs 2 CPUs (the pair runs on CPU 0 and 1)");
  process.exit(1);
}

const ROOT = join(import.meta.dir, "..");
ensureNative();
const libDir = join(libraryPath(hostArch()), "..");
const out = join(ROOT, "build", "pair-twin");
mkdirSync(join(ROOT, "build"), { recursive: true });
const zig = findZig();
const cc = zig ? [...zig.cmd, "cc"] : [Bun.which("cc") ?? "cc"];
const build = Bun.spawnSync([...cc, "-O2", "-o", out, join(import.meta.dir, "pair-twin.c"), "-I", join(ROOT, "cpp"), "-L", libDir, "-ldairllm", `-Wl,-rpath,${libDir}`], {
  env: { ...process.env, ...(zig?.env ?? {}) },
  stderr: "pipe",
});
if (build.exitCode !== 0 || !existsSync(out)) {
  console.error(`bench-twin: could not build ${out}:\n${build.stderr.toString()}`);
  process.exit(1);
}

function run(mode: string[]): { tps: number; exchange: number; write: number } {
  const p = Bun.spawnSync([out, ...mode], { stdout: "pipe", stderr: "pipe" });
  const m = /tokens_per_s (\S+) exchange_us (\S+) write_us (\S+)/.exec(p.stdout.toString());
  if (p.exitCode !== 0 || !m) throw new Error(`pair-twin ${mode.join(" ")} failed: ${p.stderr.toString()}${p.stdout.toString()}`);
  return { tps: Number(m[1]), exchange: Number(m[2]), write: Number(m[3]) };
}

console.log(`C twin of a TinyLlama-shape Q4_0 pair (matmuls only), ${tokens} tokens per run, ${rounds} rounds`);
console.log(`command: bun scripts/bench-twin.ts ${args.join(" ")}`.trimEnd());
const ratios: number[][] = [[], []];
for (let r = 0; r < rounds; r++) {
  const one = run(["single", String(tokens)]);
  const sleep = run(["pair", String(tokens), "0"]);
  const poll = run(["pair", String(tokens), "1"]);
  ratios[0]!.push(sleep.tps / one.tps);
  ratios[1]!.push(poll.tps / one.tps);
  console.log(
    `round ${r + 1}: one process, 2 threads ${one.tps.toFixed(1)} tokens/s; pair, blocking recv ${sleep.tps.toFixed(1)} (${(sleep.tps / one.tps).toFixed(3)}; exchange ${sleep.exchange.toFixed(0)} µs, write ${sleep.write.toFixed(0)}); pair, polling ${poll.tps.toFixed(1)} (${(poll.tps / one.tps).toFixed(3)}; exchange ${poll.exchange.toFixed(0)} µs)`,
  );
}
const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
console.log(`pair / one process, median of ${rounds}: blocking ${med(ratios[0]!).toFixed(3)}, polling ${med(ratios[1]!).toFixed(3)} (bench:cluster's target for the real pair: 0.97)`);
