// Who computes which slice: the one place that decides how a model is cut across nodes.
//
// Tensor parallelism in the Megatron style: node i owns a contiguous range of KV heads (with their
// query heads, their KV cache and their columns of the attention output projection) and a contiguous
// range of feed-forward rows (with the matching columns of the down projection). Each node's outputs
// of Wo and Wdown are partial sums of the full result: two reductions per layer. Any node count up to
// the number of KV heads works, with uneven shares (they differ by at most one head / one block);
// beyond that, query heads are split and KV heads shared by two nodes are computed by both.
//
// Nodes of unequal speed (a Raspberry Pi 4 beside a Pi 5 or an x86 box) take shares in proportion to
// their weights (`--split`): the KV heads (when there are at least as many as nodes), the feed-forward
// blocks and the rows of the logits. Tensor parallelism waits for the slowest node at every
// reduction, so equal shares would run the whole cluster at the pace of its slowest member.
import type { ModelConfig } from "../model/config";

export interface Range {
  readonly start: number;
  readonly end: number; // exclusive
}

export interface Slice {
  readonly node: number;
  readonly nodes: number;
  /** KV heads [start, end); the query heads are the same range times the group size */
  readonly kvHeads: Range;
  readonly heads: Range;
  /** feed-forward rows (hidden units) */
  readonly ffn: Range;
}

/** Share `ith` of `n` items cut into `nth` contiguous shares differing by at most one (larger first). */
export function splitRange(n: number, nth: number, ith: number): Range {
  const base = Math.floor(n / nth), extra = n % nth;
  const start = ith * base + Math.min(ith, extra);
  return { start, end: start + base + (ith < extra ? 1 : 0) };
}

/** Largest relative weight of a node (--split); weights travel as u32 in the Session message. */
export const MAX_SPLIT_WEIGHT = 1_000_000;

/** Equal weights for `nodes` nodes: the even split. */
export function equalWeights(nodes: number): number[] {
  return new Array<number>(nodes).fill(1);
}

/** Checks relative node weights: one per node, whole numbers in 1..MAX_SPLIT_WEIGHT. */
export function checkWeights(weights: readonly number[], nodes: number): void {
  if (weights.length !== nodes) throw new Error(`${weights.length} split weights for ${nodes} nodes: give one per node, the root first`);
  for (const w of weights) {
    if (!Number.isInteger(w) || w < 1 || w > MAX_SPLIT_WEIGHT) throw new Error(`split weight ${w} must be a whole number from 1 to ${MAX_SPLIT_WEIGHT}`);
  }
}

/**
 * `n` items cut into contiguous shares in proportion to `weights` (largest remainder; every share gets
 * at least one item when n >= the node count). Equal weights give exactly splitRange's shares.
 */
export function splitWeighted(n: number, weights: readonly number[]): Range[] {
  const k = weights.length;
  if (weights.every((w) => w === weights[0])) return weights.map((_, i) => splitRange(n, k, i));
  const total = weights.reduce((a, b) => a + b, 0);
  const exact = weights.map((w) => (w * n) / total);
  const size = exact.map((e) => (n >= k ? Math.max(1, Math.floor(e)) : Math.floor(e)));
  let left = n - size.reduce((a, b) => a + b, 0);
  // the minimum of one may have handed out too many: take them back from the largest shares
  while (left < 0) {
    let j = -1;
    for (let i = 0; i < k; i++) if (size[i]! > 1 && (j < 0 || size[i]! - exact[i]! > size[j]! - exact[j]!)) j = i;
    size[j]!--;
    left++;
  }
  // the rest by largest remainder, the earlier node first on ties
  const order = Array.from({ length: k }, (_, i) => i).sort((a, b) => exact[b]! - size[b]! - (exact[a]! - size[a]!) || a - b);
  for (let i = 0; left > 0; i = (i + 1) % k, left--) size[order[i]!]!++;
  const out: Range[] = [];
  let start = 0;
  for (const sz of size) {
    out.push({ start, end: start + sz });
    start += sz;
  }
  return out;
}

/**
 * The slices of all `nodes` nodes. `align` is the column granularity the weights need (32 for
 * Q8_0/Q4_0); `weights` (one per node, root first; default equal) sizes the shares.
 */
export function partition(c: ModelConfig, nodes: number, align = 32, weights?: readonly number[]): Slice[] {
  if (!Number.isInteger(nodes) || nodes < 1) throw new Error(`node count ${nodes} must be a whole number >= 1`);
  if (nodes > c.nHeads) throw new Error(`${nodes} nodes are more than the model's ${c.nHeads} attention heads: at most ${c.nHeads} nodes can share it`);
  const group = c.nHeads / c.nKvHeads;
  // attention output columns of a node are whole heads; they must not cut a quant block
  if (nodes > 1 && (c.headDim * group) % align !== 0) {
    throw new Error(`a KV head group spans ${c.headDim * group} columns of attn_output, not a multiple of the ${align}-value block: this model cannot be split`);
  }
  if (nodes > 1 && c.hiddenDim % align !== 0) {
    throw new Error(`the feed-forward size ${c.hiddenDim} is not a multiple of the ${align}-value block: this model cannot be split`);
  }
  const w = weights ?? equalWeights(nodes);
  checkWeights(w, nodes);
  const ffnBlocks = c.hiddenDim / (nodes > 1 ? align : 1);
  const unit = nodes > 1 ? align : 1;
  const ffn = splitWeighted(ffnBlocks, w), kv = splitWeighted(c.nKvHeads, w);
  const out: Slice[] = [];
  for (let i = 0; i < nodes; i++) {
    const f = ffn[i]!;
    let kvHeads: Range, heads: Range;
    if (nodes <= c.nKvHeads) {
      // whole KV groups: no KV head is computed twice
      kvHeads = kv[i]!;
      heads = { start: kvHeads.start * group, end: kvHeads.end * group };
    } else {
      // more nodes than KV heads: split the query heads evenly (the weights size only the
      // feed-forward and logits shares); a KV head shared by two nodes is computed (and cached) by both
      heads = splitRange(c.nHeads, nodes, i);
      kvHeads = { start: Math.floor(heads.start / group), end: Math.floor((heads.end - 1) / group) + 1 };
      const nh = heads.end - heads.start, nkv = kvHeads.end - kvHeads.start;
      const uniform = nh % nkv === 0 && Array.from({ length: nh }, (_, j) => j).every((j) => Math.floor((heads.start + j) / group) === kvHeads.start + Math.floor(j / (nh / nkv)));
      if (!uniform || (nodes > 1 && (heads.start * c.headDim) % align !== 0)) {
        throw new Error(`${nodes} nodes cannot share this model's ${c.nHeads} heads / ${c.nKvHeads} KV heads (node ${i} would get heads ${heads.start}..${heads.end - 1} across KV groups unevenly); use at most ${c.nKvHeads} nodes or a count that divides the heads evenly`);
      }
    }
    out.push({ node: i, nodes, kvHeads, heads, ffn: { start: f.start * unit, end: f.end * unit } });
  }
  return out;
}

/**
 * Rows of the output projection (the logits) of each of `nodes` nodes: contiguous shares of the
 * vocabulary differing by at most one row (or in proportion to `weights`). A worker computes its share when it and the root agreed
 * to (Capability.Logits, SESSION_LOGITS); the root computes its own and those of the other workers.
 */
export function splitVocab(vocabSize: number, nodes: number, weights?: readonly number[]): Range[] {
  if (!Number.isInteger(nodes) || nodes < 1) throw new Error(`node count ${nodes} must be a whole number >= 1`);
  const w = weights ?? equalWeights(nodes);
  checkWeights(w, nodes);
  return splitWeighted(vocabSize, w);
}

/** The whole model on one node. */
export function wholeModel(c: ModelConfig): Slice {
  return partition(c, 1)[0]!;
}

/**
 * How a cluster's reductions travel (protocol.ts SESSION_EXCHANGE). Every node keeps its own copy of
 * the residual stream. Two nodes swap their partial outputs, each sending its own as soon as it is
 * computed: a reduction then costs one crossing of the network. With more nodes the workers send
 * theirs to the root, which sends back the sum: two crossings, as the workers hold no connections to
 * each other.
 */
export function exchangesPartials(nodes: number): boolean {
  return nodes === 2;
}
