// dairllm-worker: the command line (and the entry point of the compiled binary).
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type FlagSpec, formatHelp, parseArgs, type ParsedFlags, UsageError } from "./cli/args";
import { evaluateLogits, generate, openEngine, perplexity } from "./engine";
import { GGUFError, GGUFFile, ggmlTypeName } from "./model/gguf";
import { readConfig } from "./model/config";
import { fileIdentity, progressBar } from "./cluster/storage";
import { DEFAULT_SAMPLER } from "./model/sampler";
import { Tokenizer } from "./model/tokenizer";
import { GGMLType, TYPE_TRAITS } from "./native/types";
import { startWorker } from "./cluster/worker";
import { MAX_SPLIT_WEIGHT } from "./cluster/partition";
import { dominantType, measureSpeed } from "./cluster/speed";
import { loadKernels } from "./native/index";
import { parseSize } from "./model/streamed";
import { selftest } from "./selftest";
import { formatProfile, runProfile } from "./profile/run";
import { renderHtml } from "./profile/html";
import type { WireType } from "./cluster/protocol";
import pkg from "../package.json";

/** What the compiled entry points register: the target and the embedded demo model. */
const build = { target: `source checkout (${process.platform}-${process.arch})`, defaultModel: "" };
export function setBuildInfo(info: { target: string; defaultModel: string }): void {
  Object.assign(build, info);
}
const DEMO_PROMPT = "def fibonacci(n):";

function defaultModel(): string {
  if (build.defaultModel) return build.defaultModel;
  const dev = join(import.meta.dir, "..", "test", "fixtures", "demo", "dairllm-demo-13m-q4_0.gguf");
  return existsSync(dev) ? dev : "";
}

const THREADS: FlagSpec = { name: "threads", short: "t", type: "int", value: "N", min: 1, max: 256, help: `native threads (default: ${navigator.hardwareConcurrency}, the cores of this machine)` };
const MODEL: FlagSpec = { name: "model", short: "m", type: "string", value: "FILE", help: "the GGUF model file" };
const CLUSTER_FLAGS: FlagSpec[] = [
  { name: "workers", short: "w", type: "string", value: "H:P,...", help: "workers to share the model with (host:port, comma-separated); each maps its own copy of the model file" },
  { name: "wire", type: "string", value: "q8_0|f16|f32", help: "activation encoding between nodes (default q8_0: 3.8x smaller than f32)" },
  { name: "secret", type: "string", value: "S", help: "cluster secret (default: $DAIRLLM_SECRET); workers started with one refuse roots without it" },
  { name: "split", type: "string", value: "even|auto|W,...", help: "how big each node's share is: equal (even, default), in proportion to each node's measured speed (auto), or to relative weights, the root first (e.g. 2,1,1)" },
  { name: "mesh", type: "string", value: "on|off", help: "with 2+ workers: links between the workers so that each reduction crosses the network once (on, default) or every reduction through the root (off)" },
  { name: "verify", type: "string", value: "fast|full", help: "how nodes compare the model file: size + sampled MD5 (fast, default) or the whole file's MD5 (full)" },
  { name: "max-memory", type: "string", value: "SIZE", help: "stream this node's weights from disk through SIZE of memory (e.g. 512M, 2G) instead of mapping the file; for models larger than RAM" },
];

const RUN_FLAGS: FlagSpec[] = [
  { name: "root", type: "bool", help: "run the model here (the root node; with no workers it computes everything)" },
  MODEL,
  { name: "prompt", short: "p", type: "string", value: "TEXT", help: "the text to continue" },
  { name: "n-predict", short: "n", type: "int", value: "N", min: 0, help: "tokens to generate (default 128)" },
  { name: "temp", type: "float", value: "T", min: 0, help: `temperature; 0 = greedy (default ${DEFAULT_SAMPLER.temperature})` },
  { name: "top-k", type: "int", value: "K", min: 0, help: `keep the K most likely tokens; 0 = all (default ${DEFAULT_SAMPLER.topK})` },
  { name: "top-p", type: "float", value: "P", min: 0, max: 1, help: `keep the smallest set with probability >= P (default ${DEFAULT_SAMPLER.topP})` },
  { name: "min-p", type: "float", value: "P", min: 0, max: 1, help: `drop tokens below P x the top probability (default ${DEFAULT_SAMPLER.minP})` },
  { name: "repeat-penalty", type: "float", value: "R", min: 0, help: "penalise the last 64 tokens; 1 = off (default 1)" },
  { name: "seed", type: "int", value: "S", min: 0, max: 2 ** 32 - 1, help: "random seed: same seed, same text (default: random, printed)" },
  THREADS,
  { name: "ctx", short: "c", type: "int", value: "N", min: 8, help: "context size in tokens (default: the model's, at most 4096)" },
  { name: "kv", type: "string", value: "f32|f16", help: "KV cache type (default f32; f16 halves its memory)" },
  ...CLUSTER_FLAGS,
  { name: "port", type: "int", value: "N", min: 0, max: 65535, help: "worker mode (without --root): listen on this port (default 9998; 0 = any free port)" },
  { name: "host", type: "string", value: "ADDR", help: "worker mode: the address to listen on (default 0.0.0.0)" },
  { name: "help", short: "h", type: "bool", help: "show this help" },
  { name: "version", short: "v", type: "bool", help: "print the version" },
];

const USAGE = `dairllm-worker ${pkg.version}: run large language models on small machines

usage:
  dairllm-worker --root --model M.gguf --prompt TEXT [options]   generate text (with --workers: on a cluster)
  dairllm-worker --port 9998 --model M.gguf [--secret S]          be a worker for a root
  dairllm-worker selftest                                         check every SIMD variant of this CPU against the references
  dairllm-worker inspect M.gguf                                   architecture, dims, tensor types and sizes
  dairllm-worker verify M.gguf [--full]                           size and MD5 checksums (the cluster's file identity)
  dairllm-worker speed [--model M.gguf | --type q4_0] [-t N]      this machine's matrix x vector speed (for --split weights)
  dairllm-worker tokenize --model M.gguf [--no-bos] [--file F | TEXT]   token ids as a JSON array
  dairllm-worker logits --model M.gguf --tokens 1,5,7 --out F     all positions' logits, raw float32
  dairllm-worker perplexity --model M.gguf --file T.txt [--ctx N] PPL by llama.cpp's method
  dairllm-worker profile [--model M.gguf] [--workers ...] [-n N] [--json] [--html F]
                                                                  where the time of a token goes, per operation and node

options of --root:
${formatHelp(RUN_FLAGS)}

environment:
  DAIRLLM_SECRET               the cluster secret, when --secret is not given
  DAIRLLM_VARIANT=NAME         force a kernel variant (scalar, x86_64, ssse3, avx2, avx512; neon, dotprod)
  DAIRLLM_LIB=FILE             load this kernel library and no other
  DAIRLLM_SPIN_MS=N            cluster: busy-poll up to N ms for a reply that is due (default 5; 0: off)
  DAIRLLM_WARM=auto|MiB        cluster: read the next weights into the cache while waiting (default off)

Tokens stream to stdout; load time and speeds go to stderr. Exit codes: 0 ok, 1 error, 2 bad usage.`;

function need(flags: ParsedFlags, name: string, what: string): string {
  const v = flags[name];
  if (v === undefined || v === "") throw new UsageError(`--${name} is required (${what})`);
  return String(v);
}

function noPositional(cmd: string, positional: string[]): void {
  if (positional.length) throw new UsageError(`${cmd}: unexpected argument ${JSON.stringify(positional[0])}`);
}

async function run(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case "selftest":
      return selftest((l) => console.log(l)) ? 0 : 1;
    case "inspect":
      return inspect(rest);
    case "verify":
      return verify(rest);
    case "speed":
      return speed(rest);
    case "tokenize":
      return tokenize(rest);
    case "logits":
      return logits(rest);
    case "perplexity":
      return ppl(rest);
    case "profile":
      return profile(rest);
  }
  const { flags, positional } = parseArgs(argv, RUN_FLAGS);
  if (flags.help) {
    console.log(USAGE);
    return 0;
  }
  if (flags.version) {
    console.log(`dairllm-worker ${pkg.version}, target ${build.target}, bun ${Bun.version}`);
    return 0;
  }
  if (positional.length) throw new UsageError(`unknown command ${JSON.stringify(positional[0])} (commands: selftest, inspect, verify, tokenize, logits, perplexity, profile; or --root)`);
  if (!flags.root) {
    if (flags.port === undefined && flags.host === undefined) throw new UsageError("nothing to do: pass --root to generate, --port to be a worker, or a command; see --help");
    return worker(flags);
  }
  let path = flags.model as string | undefined;
  let prompt = flags.prompt as string | undefined;
  if (path === undefined) {
    path = defaultModel();
    if (!path) throw new UsageError("--model is required (the GGUF file to run)");
    prompt ??= DEMO_PROMPT;
    process.stderr.write(`no --model: running the built-in demo model (dairllm-demo-13m, trained on Python code)${flags.prompt === undefined ? ` on the prompt ${JSON.stringify(prompt)}` : ""}\n`);
  }
  if (prompt === undefined || prompt === "") throw new UsageError("--prompt is required (the text to continue)");
  const kv = flags.kv ?? "f32";
  if (kv !== "f32" && kv !== "f16") throw new UsageError(`--kv must be f32 or f16 (got ${String(kv)})`);
  const seed = (flags.seed as number | undefined) ?? Math.floor(Math.random() * 2 ** 32);
  const e = await openEngine(path, { ...clusterOptions(flags), kv: kv === "f16" ? GGMLType.F16 : GGMLType.F32, ctx: flags.ctx as number | undefined });
  const ctx = e.ctx;
  process.stderr.write(`loaded ${e.config.name} (${e.config.arch}, ${e.config.nLayers} layers, dim ${e.config.dim}) in ${e.loadSeconds.toFixed(2)} s; kernels ${e.kernels.name}, ${e.kernels.threads} threads; ctx ${ctx}; seed ${seed}${e.peers ? `; ${e.peers.conns.length} worker(s)${e.peers.meshed ? " linked to each other" : ""}` : ""}\n`);
  const stats = await generate(e, {
    prompt,
    maxTokens: (flags["n-predict"] as number | undefined) ?? 128,
    ctx,
    kv: kv === "f16" ? GGMLType.F16 : GGMLType.F32,
    sampler: {
      ...DEFAULT_SAMPLER,
      temperature: (flags.temp as number | undefined) ?? DEFAULT_SAMPLER.temperature,
      topK: (flags["top-k"] as number | undefined) ?? DEFAULT_SAMPLER.topK,
      topP: (flags["top-p"] as number | undefined) ?? DEFAULT_SAMPLER.topP,
      minP: (flags["min-p"] as number | undefined) ?? DEFAULT_SAMPLER.minP,
      repeatPenalty: (flags["repeat-penalty"] as number | undefined) ?? DEFAULT_SAMPLER.repeatPenalty,
      seed,
    },
    onText: (t) => {
      if (t) process.stdout.write(t);
    },
  });
  process.stdout.write("\n");
  const n = stats.generated.length;
  process.stderr.write(
    `prompt: ${stats.promptTokens} tokens in ${stats.promptSeconds.toFixed(3)} s (${(stats.promptTokens / stats.promptSeconds).toFixed(1)} tokens/s); ` +
      `decode: ${n} tokens in ${stats.decodeSeconds.toFixed(3)} s (${n ? (n / stats.decodeSeconds).toFixed(1) : "0"} tokens/s)\n`,
  );
  if (stats.wire) {
    const w = stats.wire, between = w.betweenWorkersPerToken ? ` (${(w.betweenWorkersPerToken / 1024).toFixed(1)} KiB of it between workers)` : "";
    process.stderr.write(`cluster: ${(w.bytesPerToken / 1024).toFixed(1)} KiB on the wire${between} and ${w.syncsPerToken.toFixed(0)} reductions per decoded token\n`);
  }
  if (stats.stop === "context") process.stderr.write(`stopped: the context limit of ${ctx} tokens is reached (raise --ctx)\n`);
  e.close();
  return 0;
}

function clusterOptions(flags: ParsedFlags) {
  const wire = String(flags.wire ?? "q8_0");
  const wires: Record<string, WireType> = { q8_0: GGMLType.Q8_0, f16: GGMLType.F16, f32: GGMLType.F32 };
  if (!(wire in wires)) throw new UsageError(`--wire must be q8_0, f16 or f32 (got ${wire})`);
  const workers = flags.workers === undefined ? [] : String(flags.workers).split(",").map((s) => s.trim()).filter(Boolean);
  if (flags.workers !== undefined && workers.length === 0) throw new UsageError("--workers needs at least one host:port");
  for (const w of workers) if (!/^(\[[^\]]+\]|[^:\s]+)(:\d{1,5})?$/.test(w)) throw new UsageError(`--workers: "${w}" is not host:port`);
  const verify = String(flags.verify ?? "fast");
  if (verify !== "fast" && verify !== "full") throw new UsageError(`--verify must be fast or full (got ${verify})`);
  const mesh = String(flags.mesh ?? "on");
  if (mesh !== "on" && mesh !== "off") throw new UsageError(`--mesh must be on or off (got ${mesh})`);
  return {
    mesh: mesh === "on",
    split: splitOption(flags.split as string | undefined, workers.length + 1),
    threads: (flags.threads as number | undefined) ?? navigator.hardwareConcurrency,
    maxMemory: maxMemory(flags),
    log: (line: string) => process.stderr.write(`${line}\n`),
    verifyFull: verify === "full",
    workers,
    wire: wires[wire]!,
    secret: (flags.secret as string | undefined) ?? process.env.DAIRLLM_SECRET,
  };
}

/** --split: undefined (even), "auto", or one relative weight per node (whole numbers, the root first). */
function splitOption(v: string | undefined, nodes: number): number[] | "auto" | undefined {
  if (v === undefined || v === "even") return undefined;
  if (v === "auto") return nodes > 1 ? "auto" : undefined;
  const parts = v.split(",").map((x) => x.trim());
  const weights = parts.map(Number);
  if (parts.some((x) => !/^\d+$/.test(x)) || weights.some((w) => w < 1 || w > MAX_SPLIT_WEIGHT)) {
    throw new UsageError(`--split must be even, auto or whole numbers from 1 to ${MAX_SPLIT_WEIGHT}, one per node, the root first (got ${v})`);
  }
  if (weights.length !== nodes) throw new UsageError(`--split has ${weights.length} weights for ${nodes} node(s) (the root and ${nodes - 1} worker(s)): give one per node, the root first`);
  return weights;
}

function maxMemory(flags: ParsedFlags): number | undefined {
  if (flags["max-memory"] === undefined) return undefined;
  try {
    return parseSize(String(flags["max-memory"]));
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

async function worker(flags: ParsedFlags): Promise<number> {
  const path = (flags.model as string | undefined) ?? defaultModel();
  if (!path) throw new UsageError("--model is required (the GGUF file this worker computes from: the same file as the root's)");
  const w = await startWorker({
    host: String(flags.host ?? "0.0.0.0"),
    port: (flags.port as number | undefined) ?? 9998,
    modelPath: path,
    secret: (flags.secret as string | undefined) ?? process.env.DAIRLLM_SECRET,
    threads: (flags.threads as number | undefined) ?? navigator.hardwareConcurrency,
    maxMemory: maxMemory(flags),
  });
  await new Promise<void>((resolve) => {
    const stop = () => {
      w.stop();
      resolve();
    };
    process.once("SIGINT", stop);
    process.once("SIGTERM", stop);
  });
  return 0;
}

function inspect(argv: string[]): number {
  const { flags, positional } = parseArgs(argv, [{ name: "help", short: "h", type: "bool", help: "" }]);
  if (flags.help || positional.length !== 1) {
    if (!flags.help) throw new UsageError("inspect takes one GGUF file: dairllm-worker inspect M.gguf");
    console.log("usage: dairllm-worker inspect M.gguf");
    return 0;
  }
  const g = GGUFFile.open(positional[0]!);
  const c = readConfig(g);
  const lines = [
    `file:          ${g.path} (GGUF v${g.version}, ${g.bytes.byteLength} bytes, ${g.tensors.size} tensors)`,
    `architecture:  ${c.arch} (${c.name})`,
    `dims:          dim ${c.dim}, ffn ${c.hiddenDim}, layers ${c.nLayers}, heads ${c.nHeads}, kv heads ${c.nKvHeads}, head dim ${c.headDim}, vocab ${c.vocabSize}, context ${c.contextLength}`,
    `rope:          ${c.ropeMode === 0 ? "adjacent pairs (llama)" : "neox"}, base ${c.ropeBase}, ${c.nRot} dims; rms eps ${Number(c.rmsEps.toPrecision(6))}`,
  ];
  const byType = new Map<string, { n: number; bytes: number }>();
  for (const t of g.tensors.values()) {
    const k = ggmlTypeName(t.type);
    const e = byType.get(k) ?? { n: 0, bytes: 0 };
    e.n++;
    e.bytes += Math.max(t.nBytes, 0);
    byType.set(k, e);
  }
  lines.push(`tensor types:  ${[...byType].map(([k, v]) => `${k} x${v.n} (${(v.bytes / 2 ** 20).toFixed(2)} MiB)`).join(", ")}`);
  lines.push("tensors:");
  for (const t of g.tensors.values()) lines.push(`  ${t.name.padEnd(28)} ${ggmlTypeName(t.type).padEnd(6)} [${t.dims.join(", ")}]  ${t.nBytes >= 0 ? `${t.nBytes} bytes` : "size unknown"}`);
  console.log(lines.join("\n"));
  return 0;
}

async function verify(argv: string[]): Promise<number> {
  const { flags, positional } = parseArgs(argv, [{ name: "full", type: "bool", help: "" }, { name: "help", short: "h", type: "bool", help: "" }]);
  if (flags.help || positional.length !== 1) {
    if (!flags.help) throw new UsageError("verify takes one file: dairllm-worker verify M.gguf [--full]");
    console.log("usage: dairllm-worker verify M.gguf [--full]\n  prints the size and the fast (sampled) MD5; --full also reads the whole file for its MD5");
    return 0;
  }
  const id = await fileIdentity(positional[0]!, { full: !!flags.full, onProgress: progressBar("full md5") });
  const lines = [`file:      ${id.path}`, `size:      ${id.size} bytes (${(id.size / 2 ** 20).toFixed(2)} MiB)`, `fast md5:  ${id.fastMd5}`];
  if (id.fullMd5) lines.push(`full md5:  ${id.fullMd5}`);
  console.log(lines.join("\n"));
  return 0;
}

/** `speed`: what --split auto measures on each node, for choosing --split weights by hand. */
async function speed(argv: string[]): Promise<number> {
  const { flags, positional } = parseArgs(argv, [MODEL, { name: "type", type: "string", help: "" }, THREADS, { name: "help", short: "h", type: "bool", help: "" }]);
  if (flags.help) {
    console.log("usage: dairllm-worker speed [--model M.gguf | --type f32|f16|bf16|q8_0|q4_0] [--threads N]\n  times this machine's matrix x vector kernel on the model's feed-forward weight type (default q4_0)\n  and prints MB/s of weights: run it on each machine and give the figures to --split, root first");
    return 0;
  }
  noPositional("speed", positional);
  if (flags.model !== undefined && flags.type !== undefined) throw new UsageError("speed: give --model or --type, not both");
  const types = [...TYPE_TRAITS].map(([type, t]) => ({ type, name: t.name.toLowerCase() }));
  const name = String(flags.type ?? "q4_0").toLowerCase();
  const named = types.find((t) => t.name === name);
  if (!named) throw new UsageError(`--type must be one of ${types.map((t) => t.name).join(", ")} (got ${flags.type})`);
  const type = flags.model !== undefined ? dominantType(GGUFFile.open(String(flags.model))) : named.type;
  const kernels = await loadKernels({ threads: (flags.threads as number | undefined) ?? navigator.hardwareConcurrency });
  const mbs = measureSpeed(kernels, type, { seconds: 0.5 });
  console.log(`${ggmlTypeName(type)} matrix x vector: ${mbs.toFixed(0)} MB/s with ${kernels.threads} thread(s) (${kernels.name})`);
  return 0;
}

function tokenize(argv: string[]): number {
  const { flags, positional } = parseArgs(argv, [MODEL, { name: "no-bos", type: "bool", help: "" }, { name: "file", short: "f", type: "string", help: "" }]);
  const path = need(flags, "model", "the GGUF file whose tokenizer to use");
  if (flags.file !== undefined && positional.length) throw new UsageError("tokenize: give either --file or TEXT, not both");
  if (flags.file === undefined && positional.length !== 1) throw new UsageError("tokenize: give the text as one argument (quote it) or --file F");
  const text = flags.file !== undefined ? readText(String(flags.file)) : positional[0]!;
  const tok = Tokenizer.fromGGUF(GGUFFile.open(path));
  console.log(JSON.stringify(tok.encode(text, { addSpecial: !flags["no-bos"], parseSpecial: true })));
  return 0;
}

async function logits(argv: string[]): Promise<number> {
  const { flags, positional } = parseArgs(argv, [MODEL, { name: "tokens", type: "string", help: "" }, { name: "out", short: "o", type: "string", help: "" }, THREADS, ...CLUSTER_FLAGS]);
  noPositional("logits", positional);
  const path = need(flags, "model", "the GGUF file");
  const list = need(flags, "tokens", "comma-separated token ids, e.g. 1,5,7");
  const out = need(flags, "out", "the file to write the float32 logits to");
  const tokens = list.split(",").map((s) => {
    const v = Number(s.trim());
    if (s.trim() === "" || !Number.isInteger(v) || v < 0) throw new UsageError(`--tokens: "${s}" is not a token id`);
    return v;
  });
  const e = await openEngine(path, { ...clusterOptions(flags), ctx: tokens.length });
  const l = await evaluateLogits(e, tokens);
  e.close();
  writeFileSync(out, new Uint8Array(l.buffer, l.byteOffset, l.byteLength));
  process.stderr.write(`wrote ${tokens.length} x ${e.config.vocabSize} float32 logits to ${out}\n`);
  return 0;
}

async function ppl(argv: string[]): Promise<number> {
  const { flags, positional } = parseArgs(argv, [MODEL, { name: "file", short: "f", type: "string", help: "" }, { name: "ctx", short: "c", type: "int", min: 8, help: "" }, THREADS, ...CLUSTER_FLAGS]);
  noPositional("perplexity", positional);
  const path = need(flags, "model", "the GGUF file");
  const text = readText(need(flags, "file", "the text to score"));
  const e = await openEngine(path, { ...clusterOptions(flags), ctx: (flags.ctx as number | undefined) ?? ((modelCtx) => Math.min(modelCtx, 512)) });
  const ctx = e.ctx;
  const r = await perplexity(e, text, ctx, (i, n, p) => process.stderr.write(`\rchunk ${i}/${n}: running PPL ${p.toFixed(4)}`));
  process.stderr.write("\n");
  e.close();
  console.log(`PPL = ${r.ppl.toFixed(4)} +/- ${r.err.toFixed(5)}`);
  process.stderr.write(`${r.chunks} chunks of ${ctx} tokens, ${r.scored} tokens scored\n`);
  return 0;
}

const PROFILE_FLAGS: FlagSpec[] = [
  { ...MODEL, help: "the GGUF model file (default: the built-in demo model)" },
  { name: "prompt", short: "p", type: "string", value: "TEXT", help: `the prompt (default ${JSON.stringify(DEMO_PROMPT)})` },
  { name: "n-predict", short: "n", type: "int", value: "N", min: 1, help: "tokens to decode and time (default 32)" },
  { name: "json", type: "bool", help: "print the report as JSON (schema dairllm.profile/1, see the README) on stdout; the tables go to stderr" },
  { name: "html", type: "string", value: "FILE", help: "also write a self-contained HTML report with a bar per node" },
  { name: "seed", type: "int", value: "S", min: 0, max: 2 ** 32 - 1, help: "sampling seed (default 1)" },
  THREADS,
  { name: "ctx", short: "c", type: "int", value: "N", min: 8, help: "context size (default: prompt + N, at least 64)" },
  ...CLUSTER_FLAGS,
  { name: "help", short: "h", type: "bool", help: "show this help" },
];

async function profile(argv: string[]): Promise<number> {
  const { flags, positional } = parseArgs(argv, PROFILE_FLAGS);
  if (flags.help) {
    console.log(`usage: dairllm-worker profile [options]\n  runs the prompt and N decoded tokens with every operation timed, on this node and every worker\n\n${formatHelp(PROFILE_FLAGS)}`);
    return 0;
  }
  noPositional("profile", positional);
  const path = (flags.model as string | undefined) ?? defaultModel();
  if (!path) throw new UsageError("--model is required (the GGUF file to profile)");
  const n = (flags["n-predict"] as number | undefined) ?? 32;
  const prompt = (flags.prompt as string | undefined) ?? DEMO_PROMPT;
  const html = flags.html as string | undefined;
  if (html === "") throw new UsageError("--html needs a file name");
  const e = await openEngine(path, { ...clusterOptions(flags), profile: true, ctx: (flags.ctx as number | undefined) ?? ((modelCtx) => Math.min(modelCtx, Math.max(64, n + 256))) });
  try {
    const report = await runProfile(e, {
      prompt,
      tokens: n,
      sampler: { ...DEFAULT_SAMPLER, seed: (flags.seed as number | undefined) ?? 1 },
      onProgress: process.stderr.isTTY ? (i, total) => process.stderr.write(`\rdecoding ${i}/${total}${i === total ? "\n" : ""}`) : undefined,
    });
    const text = formatProfile(report);
    if (flags.json) {
      process.stderr.write(`${text}\n`);
      console.log(JSON.stringify(report, null, 2));
    } else {
      console.log(text);
    }
    if (html !== undefined) {
      writeFileSync(html, renderHtml(report));
      process.stderr.write(`wrote ${html}\n`);
    }
  } finally {
    e.close();
  }
  return 0;
}

function readText(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (e) {
    throw new Error(`${path}: cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}

/** Runs the command line; returns the exit code (errors are printed, never thrown). */
export async function runCli(argv: string[]): Promise<number> {
  try {
    return await run(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`dairllm-worker: ${e.message}\n`);
      return 2;
    }
    process.stderr.write(`dairllm-worker: ${e instanceof GGUFError ? e.message : (e as Error).message}\n`);
    return 1;
  }
}

/** Ends the process with the CLI's code; after an error nothing (a stalled worker's socket, a timer) may keep it alive. */
export function exitWith(code: number): void {
  process.exitCode = code;
  if (code !== 0) process.exit(code);
}

if (import.meta.main) exitWith(await runCli(process.argv.slice(2)));
