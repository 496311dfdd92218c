// `dairllm-worker profile`: a prompt and N decoded tokens with every operation timed, on the root and
// on each worker, turned into one table per node (and the --json / --html reports).
import { basename } from "node:path";
import type { Engine } from "../engine";
import { ggmlTypeName } from "../model/gguf";
import { Sampler, type SamplerOptions } from "../model/sampler";
import { GGMLType } from "../native/types";
import { type Counters, countersOf, nodeProfile, Op, Profiler } from "./profiler";
import type { NodeProfile, ProfileReport } from "./report";
import { balanceLines, balanceOf } from "./balance";
import { alignmentOf } from "../cluster/worker";

export interface ProfileOptions {
  prompt: string;
  /** tokens to decode after the prompt (the profiled window) */
  tokens: number;
  sampler: SamplerOptions;
  onProgress?: (done: number, total: number) => void;
}

/** Cost of one profiled call (a start and a stop), measured on a scratch profiler. */
function callCostNs(): number {
  const p = new Profiler();
  const n = 100_000;
  const t0 = Bun.nanoseconds();
  for (let i = 0; i < n; i++) p.stop(Op.Other, p.start());
  return (Bun.nanoseconds() - t0) / n;
}

/** One table per node for the window just measured (the root's counters `root` and wall time
 *  `rootWallNs`, each worker's its own), per token over `tokens`; `reset` clears the workers' counters
 *  for the next window. */
async function nodeTables(e: Engine, root: Counters, rootWallNs: number, tokens: number, reset: boolean): Promise<NodeProfile[]> {
  const nodes = [nodeProfile("root", "root", root, rootWallNs, tokens)];
  const workers: Counters[] = (await e.peers?.workerCounters(reset)) ?? [];
  workers.forEach((c, i) => nodes.push(nodeProfile(e.peers!.conns[i]!.peer, "worker", c, c.elapsedNs, tokens)));
  return nodes;
}

export async function runProfile(e: Engine, o: ProfileOptions): Promise<ProfileReport> {
  const prof = e.prof;
  if (!prof) throw new Error("runProfile: open the engine with { profile: true }");
  if (!(o.tokens >= 1)) throw new Error("profile: decode at least one token (-n 1 or more)");
  const prompt = e.tokenizer.encode(o.prompt, { addSpecial: true, parseSpecial: true });
  if (prompt.length === 0) throw new Error("the prompt is empty and the model adds no BOS token: nothing to profile");
  if (prompt.length + o.tokens > e.ctx) throw new Error(`the prompt (${prompt.length} tokens) and ${o.tokens} decoded tokens do not fit the context of ${e.ctx} (lower -n or raise --ctx)`);
  const cache = e.model.newCache(e.ctx);
  const sampler = new Sampler(o.sampler);
  sampler.accept(prompt);

  // the prompt as one batch, its operations counted apart from the decoded tokens'
  await e.peers?.workerCounters(true);
  prof.reset();
  let t0 = performance.now();
  let logits = await e.model.forward(prompt, 0, cache);
  const promptSeconds = (performance.now() - t0) / 1000;
  const promptNodes = await nodeTables(e, countersOf(prof), promptSeconds * 1e9, prompt.length, true);

  // the profiled window: N x (sample, forward one token), on every node
  prof.reset();
  t0 = performance.now();
  for (let i = 0; i < o.tokens; i++) {
    const t = prof.start();
    const next = sampler.sample(logits);
    prof.stop(Op.Sampling, t);
    logits = await e.model.forward([next], prompt.length + i, cache);
    o.onProgress?.(i + 1, o.tokens);
  }
  const wallNs = (performance.now() - t0) * 1e6;
  const root = countersOf(prof);
  const perNode = await nodeTables(e, root, wallNs, o.tokens, false);

  const timed = root.calls.reduce((a, b) => a + b, 0) / o.tokens;
  const nsPerCall = callCostNs();
  const msPerToken = wallNs / 1e6 / o.tokens;
  let params = 0;
  for (const t of e.gguf.tensors.values()) params += t.nElements;
  const wq = e.model.weights.layers[0]?.wq.type ?? GGMLType.F32;
  return {
    schema: "dairllm.profile/1",
    model: { path: e.path, arch: e.config.arch, type: ggmlTypeName(wq), layers: e.config.nLayers, dim: e.config.dim, params, bytes: e.gguf.bytes.byteLength },
    kernels: e.kernels.name,
    threads: e.kernels.threads,
    nodes: 1 + (e.peers?.conns.length ?? 0),
    wire: e.peers ? e.peers.wireName : null,
    prompt: { tokens: prompt.length, seconds: promptSeconds, tokensPerSecond: prompt.length / promptSeconds },
    decode: { tokens: o.tokens, seconds: wallNs / 1e9, tokensPerSecond: o.tokens / (wallNs / 1e9), msPerToken },
    overhead: { nsPerTimer: nsPerCall, timersPerToken: timed, share: (nsPerCall * timed) / 1e6 / msPerToken },
    perNode,
    promptNodes,
    balance: perNode.length > 1 ? balanceOf(perNode, { config: e.config, weights: e.model.weights, align: alignmentOf(e.model.weights) }, e.peers!.weights) : null,
  };
}

const pct = (v: number) => `${(v * 100).toFixed(1)}%`;

/** One node's rows (the operations that ran) and its groups, per `unit` ("token", "prompt token"). */
function nodeTable(n: NodeProfile, unit: string): string[] {
  const lines = [`  ${"operation".padEnd(38)} ${"share".padStart(6)} ${"ms/token".padStart(9)} ${"calls/token".padStart(11)} ${"GB/s".padStart(6)}`];
  for (const row of n.ops) {
    if (row.op !== "unaccounted" && row.callsPerToken === 0 && row.msPerToken === 0) continue;
    lines.push(
      `  ${row.label.padEnd(38)} ${pct(row.share).padStart(6)} ${row.msPerToken.toFixed(3).padStart(9)} ${(row.callsPerToken ? row.callsPerToken.toFixed(1) : "").padStart(11)} ${(row.gbPerSecond === null ? "" : row.gbPerSecond.toFixed(1)).padStart(6)}`,
    );
  }
  const g = n.groups;
  lines.push(
    `  per ${unit}: compute ${g.compute.toFixed(2)} ms, compression ${g.compression.toFixed(2)} ms, network ${g.network.toFixed(2)} ms` +
      `${g.io ? `, disk ${g.io.toFixed(2)} ms` : ""}, TypeScript ${g.typescript.toFixed(2)} ms, unaccounted ${g.unaccounted.toFixed(2)} ms`,
  );
  return lines;
}

/** The report as text: a header, per node a table of the operations that ran for a decoded token, the
 *  cluster's balance, then per node the same table for the prompt's batch. */
export function formatProfile(r: ProfileReport): string {
  const m = r.model;
  const lines = [
    `profile of ${basename(m.path)}: ${m.arch}, ${m.type}, ${m.layers} layers, dim ${m.dim}, ${(m.params / 1e6).toFixed(1)} M parameters, ${(m.bytes / 2 ** 20).toFixed(1)} MiB`,
    `kernels ${r.kernels}, ${r.threads} threads, ${r.nodes} node${r.nodes > 1 ? "s" : ""}${r.wire ? `, wire ${r.wire}` : ""}`,
    `prompt: ${r.prompt.tokens} tokens in ${r.prompt.seconds.toFixed(3)} s (${r.prompt.tokensPerSecond.toFixed(1)} tokens/s); ` +
      `decode: ${r.decode.tokens} tokens, ${r.decode.msPerToken.toFixed(2)} ms/token (${r.decode.tokensPerSecond.toFixed(1)} tokens/s)`,
    `profiler cost: ${r.overhead.timersPerToken.toFixed(0)} timed calls/token x ${r.overhead.nsPerTimer.toFixed(0)} ns = ${pct(r.overhead.share)} of a token on the root`,
  ];
  for (const n of r.perNode) lines.push("", `${n.name}: ${n.wallMsPerToken.toFixed(2)} ms per token`, ...nodeTable(n, "token"));
  if (r.nodes > 1) {
    lines.push("", "network vs compute per token:");
    for (const n of r.perNode) lines.push(`  ${n.name.padEnd(28)} network ${n.groups.network.toFixed(2).padStart(7)} ms (${pct(n.groups.network / n.wallMsPerToken)})   compute ${n.groups.compute.toFixed(2).padStart(7)} ms (${pct(n.groups.compute / n.wallMsPerToken)})`);
  }
  if (r.balance) lines.push("", ...balanceLines(r.balance));
  lines.push("", `the prompt (${r.prompt.tokens} tokens as one batch), per prompt token:`);
  for (const n of r.promptNodes) lines.push("", `${n.name}: ${n.wallMsPerToken.toFixed(3)} ms per prompt token`, ...nodeTable(n, "prompt token"));
  return lines.join("\n");
}
