// One node running a whole model: open a GGUF, generate text, evaluate logits and perplexity.
import { readConfig, type ModelConfig } from "./model/config";
import { GGUFFile } from "./model/gguf";
import { LlamaModel, loadWeights } from "./model/llama";
import { Sampler, type SamplerOptions } from "./model/sampler";
import { Tokenizer } from "./model/tokenizer";
import { loadKernels } from "./native/index";
import { GGMLType, type Kernels } from "./native/types";
import { partition, type Slice, wholeModel } from "./cluster/partition";
import { ClusterPeers } from "./cluster/root";
import { fileIdentity, progressBar } from "./cluster/storage";
import { alignmentOf, memoryBesidesWeights } from "./cluster/worker";
import { StreamedWeights } from "./model/streamed";
import type { WireType } from "./cluster/protocol";
import { Profiler, profiledKernels } from "./profile/profiler";

export interface Engine {
  readonly path: string;
  readonly gguf: GGUFFile;
  readonly config: ModelConfig;
  readonly model: LlamaModel;
  readonly tokenizer: Tokenizer;
  readonly kernels: Kernels;
  readonly loadSeconds: number;
  /** the workers, when the model runs on a cluster */
  readonly peers: ClusterPeers | null;
  /** the context size the caches (and the workers') are made for */
  readonly ctx: number;
  /** set when opened with `profile`: the root's counters (the workers keep their own) */
  readonly prof: Profiler | null;
  /** set with maxMemory: the stream of this node's weights */
  readonly streamed: StreamedWeights | null;
  close(): void;
}

export interface EngineOptions {
  threads: number;
  /** host:port of each worker; none = this node computes everything */
  workers?: string[];
  wire?: WireType;
  secret?: string;
  /** compare the full-file MD5 with every worker (reads the whole file on every node) */
  verifyFull?: boolean;
  /** context size (or a rule from the model's trained context; default: at most 4096) and KV cache
   *  type: the workers allocate their caches at connection time */
  ctx?: number | ((modelContext: number) => number);
  kv?: GGMLType.F32 | GGMLType.F16;
  /** time every operation, on this node and on the workers (see src/profile/profiler.ts) */
  profile?: boolean;
  /** --max-memory: stream this node's weight slices from disk through a budget of this many bytes */
  maxMemory?: number;
  /** O_DIRECT reads when streaming (default true) */
  directIO?: boolean;
  /** --split: relative weights of the nodes' shares (root first), or "auto" (measured); default equal */
  split?: number[] | "auto";
  /** --mesh: links between the workers for three nodes or more (default true) */
  mesh?: boolean;
  log?: (line: string) => void;
}

export async function openEngine(path: string, o: EngineOptions): Promise<Engine> {
  const t0 = performance.now();
  const gguf = GGUFFile.open(path);
  const config = readConfig(gguf);
  const kernels = await loadKernels({ threads: o.threads });
  const weights = loadWeights(gguf, config);
  const tokenizer = Tokenizer.fromGGUF(gguf);
  if (tokenizer.vocabSize !== config.vocabSize) {
    throw new Error(`${path}: the tokenizer has ${tokenizer.vocabSize} tokens but the model ${config.vocabSize}`);
  }
  const ctx = typeof o.ctx === "function" ? o.ctx(config.contextLength) : (o.ctx ?? Math.min(config.contextLength, 4096));
  const prof = o.profile ? new Profiler() : null;
  const modelKernels = prof ? profiledKernels(kernels, prof) : kernels;
  const kvType = o.kv ?? GGMLType.F32;
  const align = alignmentOf(weights);
  const nodes = (o.workers?.length ?? 0) + 1;
  // the root's slice; with --split auto it is known only once every node has measured its speed
  let slice = o.split === "auto" ? null : partition(config, nodes, align, o.split)[0]!;
  const openStream = (s: Slice) =>
    o.maxMemory === undefined
      ? null
      : StreamedWeights.open(path, gguf, config, weights, s, true, { budget: o.maxMemory, otherBytes: memoryBesidesWeights(config, s, ctx, kvType), direct: o.directIO, log: o.log });
  // streaming: the budget is checked before any worker is contacted (when the split is known)
  let streamed = slice ? openStream(slice) : null;
  let peers: ClusterPeers | null = null;
  try {
    if (o.workers?.length) {
      const identity = await fileIdentity(path, o.verifyFull ? { full: true, onProgress: progressBar("full md5") } : {});
      peers = await ClusterPeers.connect(gguf, config, identity, kernels, {
        workers: o.workers,
        secret: o.secret,
        wire: o.wire ?? GGMLType.Q8_0,
        nCtx: ctx,
        kvType,
        verifyFull: o.verifyFull,
        profiler: prof,
        align,
        split: o.split,
        mesh: o.mesh,
        log: o.log,
      });
      slice = peers.slices[0]!;
    }
    slice ??= wholeModel(config);
    streamed ??= openStream(slice);
  } catch (e) {
    peers?.close();
    await streamed?.close();
    throw e;
  }
  const model = new LlamaModel(config, weights, modelKernels, slice, peers, prof, streamed);
  return {
    path, gguf, config, model, tokenizer, kernels, peers, ctx, prof, streamed,
    loadSeconds: (performance.now() - t0) / 1000,
    close: () => {
      peers?.close();
      void streamed?.close();
    },
  };
}

export interface GenerateOptions {
  prompt: string;
  maxTokens: number;
  ctx: number;
  /** KV cache type (default F32) */
  kv?: GGMLType.F32 | GGMLType.F16;
  sampler: SamplerOptions;
  /** called with each piece of text as soon as it is complete UTF-8 */
  onText: (text: string) => void;
}

export interface GenerateStats {
  promptTokens: number;
  generated: number[];
  promptSeconds: number;
  decodeSeconds: number;
  stop: "eog" | "length" | "context";
  /** on a cluster: bytes on the wire (both ways) and reductions per decoded token */
  wire?: { bytesPerToken: number; betweenWorkersPerToken: number; syncsPerToken: number };
}

export async function generate(e: Engine, o: GenerateOptions): Promise<GenerateStats> {
  const prompt = e.tokenizer.encode(o.prompt, { addSpecial: true, parseSpecial: true });
  if (prompt.length === 0) throw new Error("the prompt is empty and the model adds no BOS token: nothing to continue from");
  if (prompt.length >= o.ctx) throw new Error(`the prompt has ${prompt.length} tokens, which leaves no room in a context of ${o.ctx} (raise --ctx)`);
  const cache = e.model.newCache(o.ctx, o.kv ?? GGMLType.F32);
  const sampler = new Sampler(o.sampler);
  sampler.accept(prompt);
  const decoder = e.tokenizer.createDecoder();
  const generated: number[] = [];

  let t0 = performance.now();
  let logits = await e.model.forward(prompt, 0, cache);
  const promptSeconds = (performance.now() - t0) / 1000;
  t0 = performance.now();
  const before = e.peers ? { ...e.peers.stats } : null;
  let stop: GenerateStats["stop"] = "length";
  for (let pos = prompt.length; generated.length < o.maxTokens; pos++) {
    const next = sampler.sample(logits);
    if (e.tokenizer.isEog(next)) {
      stop = "eog";
      break;
    }
    generated.push(next);
    o.onText(decoder.push(next));
    if (pos >= o.ctx) {
      stop = "context";
      break;
    }
    if (generated.length < o.maxTokens) logits = await e.model.forward([next], pos, cache);
  }
  o.onText(decoder.flush());
  const decodeSeconds = (performance.now() - t0) / 1000;
  let wire: GenerateStats["wire"];
  const steps = Math.max(1, generated.length - 1); // forward passes after the prompt
  if (e.peers && before) {
    const st = e.peers.stats;
    const between = (st.bytesBetweenWorkers - before.bytesBetweenWorkers) / steps;
    wire = { bytesPerToken: (st.bytesOut + st.bytesIn - before.bytesOut - before.bytesIn) / steps + between, betweenWorkersPerToken: between, syncsPerToken: (st.syncs - before.syncs) / steps };
  }
  return { promptTokens: prompt.length, generated, promptSeconds, decodeSeconds, stop, wire };
}

/** Logits of every position of `tokens`, evaluated as one batch: [n_tokens x n_vocab]. */
export async function evaluateLogits(e: Engine, tokens: number[]): Promise<Float32Array> {
  if (tokens.length === 0) throw new Error("no tokens to evaluate");
  return e.model.forward(tokens, 0, e.model.newCache(tokens.length), true);
}

export interface PerplexityResult {
  ppl: number;
  err: number;
  chunks: number;
  scored: number;
}

/**
 * llama.cpp's llama-perplexity method: the text tokenized with BOS, cut into chunks of `ctx` tokens,
 * each chunk's first token replaced by BOS, and only the second half of each chunk scored.
 */
export async function perplexity(e: Engine, text: string, ctx: number, onChunk?: (i: number, n: number, ppl: number) => void): Promise<PerplexityResult> {
  const tokens = e.tokenizer.encode(text, { addSpecial: true, parseSpecial: false });
  const chunks = Math.floor(tokens.length / ctx);
  if (chunks < 1) throw new Error(`the text has ${tokens.length} tokens, fewer than one chunk of ${ctx} (use a longer text or a smaller --ctx)`);
  const cache = e.model.newCache(ctx);
  const first = Math.floor(ctx / 2);
  const V = e.config.vocabSize;
  let nll = 0, nll2 = 0, count = 0;
  for (let c = 0; c < chunks; c++) {
    const chunk = tokens.slice(c * ctx, (c + 1) * ctx);
    if (e.tokenizer.addBos && e.tokenizer.bos >= 0) chunk[0] = e.tokenizer.bos;
    const logits = await e.model.forward(chunk, 0, cache, true);
    for (let j = first; j < ctx - 1; j++) {
      const row = logits.subarray(j * V, (j + 1) * V);
      let max = -Infinity;
      for (let i = 0; i < V; i++) max = Math.max(max, row[i]!);
      let sum = 0;
      for (let i = 0; i < V; i++) sum += Math.exp(row[i]! - max);
      const v = Math.log(sum) - (row[chunk[j + 1]!]! - max);
      nll += v;
      nll2 += v * v;
      count++;
    }
    onChunk?.(c + 1, chunks, Math.exp(nll / count));
  }
  const mean = nll / count;
  let variance = nll2 / count - mean * mean;
  variance = variance > 0 && count > 1 ? Math.sqrt(variance / (count - 1)) : 0;
  const ppl = Math.exp(mean);
  return { ppl, err: variance * ppl, chunks, scored: count };
}
