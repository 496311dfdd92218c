// Who computes which slice: the one place that decides how a model is cut across nodes.
//
// Tensor parallelism in the Megatron style: node i owns a contiguous range of KV heads (with their
// query heads, their KV cache and their columns of the attention output projection) and a contiguous
// range of feed-forward rows (with the matching columns of the down projection). Each node's outputs
// of Wo and Wdown are partial sums of the full result: two reductions per layer. Any node count up to
// the number of KV heads works, with uneven shares (they differ by at most one head / one block).
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

/** The slices of all `nodes` nodes. `align` is the column granularity the weights need (32 for Q8_0/Q4_0). */
export function partition(c: ModelConfig, nodes: number, align = 32): Slice[] {
  if (!Number.isInteger(nodes) || nodes < 1) throw new Error(`node count ${nodes} must be a whole number >= 1`);
  if (nodes > c.nKvHeads) {
    throw new Error(`${nodes} nodes are more than the model's ${c.nKvHeads} KV heads: at most ${c.nKvHeads} nodes can share it`);
  }
  const group = c.nHeads / c.nKvHeads;
  // attention output columns of a node are whole heads; they must not cut a quant block
  if (nodes > 1 && (c.headDim * group) % align !== 0) {
    throw new Error(`a KV head group spans ${c.headDim * group} columns of attn_output, not a multiple of the ${align}-value block: this model cannot be split`);
  }
  if (nodes > 1 && c.hiddenDim % align !== 0) {
    throw new Error(`the feed-forward size ${c.hiddenDim} is not a multiple of the ${align}-value block: this model cannot be split`);
  }
  const ffnBlocks = c.hiddenDim / (nodes > 1 ? align : 1);
  const unit = nodes > 1 ? align : 1;
  const out: Slice[] = [];
  for (let i = 0; i < nodes; i++) {
    const kv = splitRange(c.nKvHeads, nodes, i);
    const f = splitRange(ffnBlocks, nodes, i);
    out.push({
      node: i,
      nodes,
      kvHeads: kv,
      heads: { start: kv.start * group, end: kv.end * group },
      ffn: { start: f.start * unit, end: f.end * unit },
    });
  }
  return out;
}

/** The whole model on one node. */
export function wholeModel(c: ModelConfig): Slice {
  return partition(c, 1)[0]!;
}
