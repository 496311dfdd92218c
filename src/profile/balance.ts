// How evenly a cluster's work is shared, from a profile: tensor parallelism waits at every reduction
// for the node that finishes last, and decode time is mostly the matmuls reading weights. From each
// node's measured speed in each phase (attention projections, feed-forward, logits) and the bytes a
// split gives each node in that phase, the time per token of any split is predicted as the sum over
// phases of the slowest node's time; the suggested --split is the one predicted fastest. Attention
// heads move in whole KV heads, so a split in proportion to the nodes' speeds is not always the best
// one: a node at half speed may need fewer heads than its share of the feed-forward rows suggests.
import type { ModelConfig } from "../model/config";
import type { Weights } from "../model/llama";
import { typeBytes } from "../native/types";
import { MAX_SPLIT_WEIGHT, partition, type Slice, splitVocab } from "../cluster/partition";
import { weightsFromSpeeds } from "../cluster/speed";
import type { BalanceReport, NodeProfile } from "./report";

const PHASES = {
  attention: ["attn_q", "attn_k", "attn_v", "attn_o"],
  feedForward: ["ffn_gate", "ffn_up", "ffn_down"],
  logits: ["logits"],
} as const;
type Phase = keyof typeof PHASES;

/** MB and ms per token of a node's matmuls among `ops` (all weight-reading ops when null). */
function measured(n: NodeProfile, ops: readonly string[] | null): { mb: number; ms: number } {
  let mb = 0, ms = 0;
  for (const r of n.ops) {
    if (r.gbPerSecond === null || r.msPerToken <= 0 || (ops && !ops.includes(r.op))) continue;
    mb += r.gbPerSecond * r.msPerToken; // GB/s x ms = MB
    ms += r.msPerToken;
  }
  return { mb, ms };
}

/** The model facts a prediction needs: the shape and the matrices' types. */
export interface ModelShape {
  config: ModelConfig;
  weights: Pick<Weights, "layers" | "output">;
  /** column granularity (partition.ts) */
  align: number;
}

/** MB per token each node reads in each phase under `weights` (the --split weights). */
function phaseMB(m: ModelShape, weights: readonly number[]): Record<Phase, number>[] {
  const c = m.config, L = m.weights.layers[0]!, out = m.weights.output;
  const slices: Slice[] = partition(c, weights.length, m.align, weights);
  const vocab = splitVocab(c.vocabSize, weights.length, weights);
  const row = (t: number) => typeBytes(t, c.dim);
  return slices.map((s, i) => {
    const q = (s.heads.end - s.heads.start) * c.headDim, kv = (s.kvHeads.end - s.kvHeads.start) * c.headDim, f = s.ffn.end - s.ffn.start;
    const attention = q * row(L.wq.type) + kv * (row(L.wk.type) + row(L.wv.type)) + c.dim * typeBytes(L.wo.type, q);
    const feedForward = f * (row(L.wGate.type) + row(L.wUp.type)) + c.dim * typeBytes(L.wDown.type, f);
    const logits = (vocab[i]!.end - vocab[i]!.start) * row(out.type);
    return { attention: (attention * c.nLayers) / 1e6, feedForward: (feedForward * c.nLayers) / 1e6, logits: logits / 1e6 };
  });
}

/** Predicted matmul ms per token of a split: per phase, the slowest node's bytes over its speed. */
function predict(m: ModelShape, speeds: readonly Record<Phase, number>[], weights: readonly number[]): number {
  const mb = phaseMB(m, weights);
  let ms = 0;
  for (const p of Object.keys(PHASES) as Phase[]) ms += Math.max(...mb.map((b, i) => b[p] / speeds[i]![p]));
  return ms;
}

function gcd(a: number, b: number): number {
  return b ? gcd(b, a % b) : a;
}

/**
 * The balance of a profiled cluster: per node the MB its matmuls read per token, in how many ms; and,
 * given the model (`shape`) and the split it ran with (`current`), the --split predicted fastest.
 */
export function balanceOf(perNode: readonly NodeProfile[], shape?: ModelShape, current?: readonly number[]): BalanceReport {
  const nodes = perNode.map((n) => {
    const { mb, ms } = measured(n, null);
    return { name: n.name, weightMB: mb, weightMs: ms, mbPerSecond: ms > 0 ? (mb / ms) * 1000 : 0 };
  });
  const times = nodes.map((n) => n.weightMs).filter((t) => t > 0);
  const spread = times.length ? Math.max(...times) / Math.min(...times) : 1;
  const overall = nodes.map((n) => Math.max(1, n.mbPerSecond));
  const report: BalanceReport = { nodes, spread, suggestedSplit: weightsFromSpeeds(overall, MAX_SPLIT_WEIGHT), predictedMs: null };
  if (!shape || !current || current.length !== perNode.length) return report;

  // each node's speed per phase in MB/ms (= GB/s); a phase it did not run takes its overall speed
  const speeds = perNode.map((n, i) => {
    const s = {} as Record<Phase, number>;
    for (const p of Object.keys(PHASES) as Phase[]) {
      const x = measured(n, PHASES[p]);
      s[p] = x.ms > 0 && x.mb > 0 ? x.mb / x.ms : overall[i]! / 1000;
    }
    return s;
  });
  const cost = (w: readonly number[]) => {
    try {
      return predict(shape, speeds, w);
    } catch {
      return Infinity; // a split this model cannot take
    }
  };
  // the split that ran is a candidate too: the suggestion is never predicted slower than it
  const currentMs = cost(current);
  let best = [...current], bestMs = currentMs;
  const consider = (w: number[]) => {
    const ms = cost(w);
    if (ms < bestMs - 1e-9) [best, bestMs] = [w, ms];
  };
  consider(weightsFromSpeeds(overall, 100));
  if (perNode.length === 2) {
    for (let r = 1; r < 100; r++) consider([r, 100 - r]);
  } else {
    // coordinate search from the best so far, on weights of at most 100
    best = best.some((w) => w > 100) ? weightsFromSpeeds(best, 100) : best;
    bestMs = cost(best);
    for (let round = 0; round < 4; round++) {
      for (let i = 0; i < best.length; i++) {
        for (const f of [0.5, 0.67, 0.8, 0.9, 0.95, 1.05, 1.1, 1.25, 1.5, 2]) {
          const w = [...best];
          w[i] = Math.max(1, Math.min(MAX_SPLIT_WEIGHT, Math.round(w[i]! * f)));
          consider(w);
        }
      }
    }
  }
  if (!(bestMs <= currentMs)) [best, bestMs] = [[...current], currentMs];
  const g = best.reduce(gcd);
  report.suggestedSplit = best.map((w) => w / g);
  report.predictedMs = { current: currentMs, suggested: bestMs };
  return report;
}

/** The balance as text lines (the profile's tables and its HTML page both show them). */
export function balanceLines(b: BalanceReport): string[] {
  const lines = ["balance: every reduction waits for the node that finishes last; the matmuls per token:"];
  for (const n of b.nodes) lines.push(`  ${n.name.padEnd(28)} ${n.weightMB.toFixed(1).padStart(8)} MB of weights in ${n.weightMs.toFixed(2).padStart(7)} ms = ${n.mbPerSecond.toFixed(0).padStart(6)} MB/s`);
  const p = b.predictedMs;
  if (p) {
    lines.push(
      p.suggested < p.current * 0.97
        ? `  --split ${b.suggestedSplit.join(",")} is predicted to take ${p.suggested.toFixed(1)} ms of matmuls per token instead of ${p.current.toFixed(1)} (${((1 - p.suggested / p.current) * 100).toFixed(0)} % less; per phase, the slowest node's share over its measured speed)`
        : `  the split fits these machines: none is predicted more than 3 % faster (${p.current.toFixed(1)} ms of matmuls per token)`,
    );
  } else {
    lines.push(
      b.spread < 1.05
        ? `  the nodes' shares take the same time within 5 % (${b.spread.toFixed(2)}x): the split fits these machines`
        : `  the slowest node's matmuls take ${b.spread.toFixed(2)}x the fastest's: --split ${b.suggestedSplit.join(",")} (shares in proportion to these speeds) would even them out`,
    );
  }
  return lines;
}
