// The llama family (llama, qwen2, qwen3): weights as zero-copy views into the mapped GGUF (a cluster
// node's column slices of attn_output and ffn_down excepted: copied, see contiguous()), and a
// forward pass over a batch of tokens that computes what llama.cpp computes.
import { GGMLType, type Kernels, TYPE_TRAITS, typeBytes } from "../native/types";
import type { ModelConfig } from "./config";
import { GGUFError, type GGUFFile, ggmlTypeName } from "./gguf";
import { Op, type Profiler } from "../profile/profiler";
import type { StreamedWeights } from "./streamed";
import type { Range } from "../cluster/partition";

/** A weight matrix: nOut rows of nIn values, in one of the matmul types; `data` is a view of the file. */
export interface Matrix {
  readonly name: string;
  readonly type: GGMLType;
  readonly nIn: number;
  readonly nOut: number;
  readonly data: Uint8Array;
}

export interface LayerWeights {
  attnNorm: Float32Array; //   (dim)
  wq: Matrix; //               (dim -> n_heads * head_dim)
  wk: Matrix; //               (dim -> n_kv_heads * head_dim)
  wv: Matrix; //               (dim -> n_kv_heads * head_dim)
  bq: Float32Array | null; //  (n_heads * head_dim)      qwen2
  bk: Float32Array | null; //  (n_kv_heads * head_dim)   qwen2
  bv: Float32Array | null; //  (n_kv_heads * head_dim)   qwen2
  qNorm: Float32Array | null; // (head_dim)              qwen3
  kNorm: Float32Array | null; // (head_dim)              qwen3
  wo: Matrix; //               (n_heads * head_dim -> dim)
  ffnNorm: Float32Array; //    (dim)
  wGate: Matrix; //            (dim -> hidden)
  wUp: Matrix; //              (dim -> hidden)
  wDown: Matrix; //            (hidden -> dim)
}

export interface Weights {
  tokenEmbd: Matrix; //        (dim, vocab): row t is token t's embedding
  layers: LayerWeights[];
  outputNorm: Float32Array; // (dim)
  output: Matrix; //           (dim -> vocab); token_embd when the model ties them
  ropeFreqs: Float32Array; //  (n_rot / 2): angle per position, rope scaling folded in
  /** the views are of a read-only file mapping (their pages may be dropped and read again) */
  mapped: boolean;
}

const MATMUL_TYPES = new Set<number>([GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0]);

function matrix(g: GGUFFile, name: string, nIn: number, nOut: number): Matrix {
  const t = g.tensor(name);
  if (!MATMUL_TYPES.has(t.type)) {
    throw new GGUFError(g.path, `${name}: type ${ggmlTypeName(t.type)} not supported (supported: ${[...MATMUL_TYPES].map(ggmlTypeName).join(", ")})`);
  }
  if (t.dims.length !== 2 || t.dims[0] !== nIn || t.dims[1] !== nOut) {
    throw new GGUFError(g.path, `${name}: shape [${t.dims.join(", ")}], expected [${nIn}, ${nOut}]`);
  }
  return { name, type: t.type as GGMLType, nIn, nOut, data: g.view(name) };
}

function vector(g: GGUFFile, name: string, n: number): Float32Array {
  const t = g.tensor(name);
  if (t.type !== GGMLType.F32 || t.nElements !== n) {
    throw new GGUFError(g.path, `${name}: ${ggmlTypeName(t.type)} [${t.dims.join(", ")}], expected F32 [${n}]`);
  }
  const v = g.view(name);
  // norm weights are small: an aligned copy when the file offset is not 4-byte aligned
  return v.byteOffset % 4 === 0 ? new Float32Array(v.buffer, v.byteOffset, n) : new Float32Array(v.slice().buffer);
}

function optionalVector(g: GGUFFile, name: string, n: number): Float32Array | null {
  return g.tensors.has(name) ? vector(g, name, n) : null;
}

/** llama.cpp's rope angles: theta_j = base^(-2j/n_rot), divided by rope_freqs when the model has it. */
function ropeFrequencies(g: GGUFFile, c: ModelConfig): Float32Array {
  const half = c.nRot / 2;
  const factors = optionalVector(g, "rope_freqs.weight", half);
  const scale = Math.fround(c.ropeBase ** (-2 / c.nRot));
  const out = new Float32Array(half);
  let theta = 1;
  for (let j = 0; j < half; j++) {
    out[j] = factors ? Math.fround(theta / factors[j]!) : theta;
    theta = Math.fround(theta * scale);
  }
  return out;
}

export function loadWeights(g: GGUFFile, c: ModelConfig): Weights {
  const q = c.nHeads * c.headDim;
  const kv = c.nKvHeads * c.headDim;
  const layers: LayerWeights[] = [];
  for (let l = 0; l < c.nLayers; l++) {
    const p = `blk.${l}.`;
    layers.push({
      attnNorm: vector(g, `${p}attn_norm.weight`, c.dim),
      wq: matrix(g, `${p}attn_q.weight`, c.dim, q),
      wk: matrix(g, `${p}attn_k.weight`, c.dim, kv),
      wv: matrix(g, `${p}attn_v.weight`, c.dim, kv),
      bq: optionalVector(g, `${p}attn_q.bias`, q),
      bk: optionalVector(g, `${p}attn_k.bias`, kv),
      bv: optionalVector(g, `${p}attn_v.bias`, kv),
      qNorm: optionalVector(g, `${p}attn_q_norm.weight`, c.headDim),
      kNorm: optionalVector(g, `${p}attn_k_norm.weight`, c.headDim),
      wo: matrix(g, `${p}attn_output.weight`, q, c.dim),
      ffnNorm: vector(g, `${p}ffn_norm.weight`, c.dim),
      wGate: matrix(g, `${p}ffn_gate.weight`, c.dim, c.hiddenDim),
      wUp: matrix(g, `${p}ffn_up.weight`, c.dim, c.hiddenDim),
      wDown: matrix(g, `${p}ffn_down.weight`, c.hiddenDim, c.dim),
    });
  }
  const tokenEmbd = matrix(g, "token_embd.weight", c.dim, c.vocabSize);
  return {
    tokenEmbd,
    layers,
    outputNorm: vector(g, "output_norm.weight", c.dim),
    output: g.tensors.has("output.weight") ? matrix(g, "output.weight", c.dim, c.vocabSize) : tokenEmbd,
    ropeFreqs: ropeFrequencies(g, c),
    mapped: g.mapped,
  };
}

/**
 * An activation (nTok rows of n floats) in the type each weight type's matmul wants, converted once
 * per type and reused by every matrix that reads it (Wq, Wk, Wv share one Q8_0 copy).
 */
class Activation {
  private readonly converted = new Map<GGMLType, Uint8Array | Uint16Array | Float32Array>();
  private readonly buffers = new Map<GGMLType, Uint8Array | Uint16Array>();
  private src: Float32Array = new Float32Array(0);
  private count = 0;
  constructor(private readonly k: Kernels) {}

  set(x: Float32Array, count: number): this {
    this.src = x;
    this.count = count;
    this.converted.clear();
    return this;
  }

  as(weightType: GGMLType): Uint8Array | Uint16Array | Float32Array {
    const type = TYPE_TRAITS.get(weightType)!.activation;
    let out = this.converted.get(type);
    if (out) return out;
    if (type === GGMLType.F32) {
      out = this.src;
    } else {
      const bytes = typeBytes(type, this.count);
      let buf = this.buffers.get(type);
      if (!buf || buf.byteLength < bytes) {
        buf = type === GGMLType.Q8_0 ? new Uint8Array(bytes) : new Uint16Array(this.count);
        this.buffers.set(type, buf);
      }
      if (type === GGMLType.Q8_0) this.k.quantizeQ8_0(buf as Uint8Array, this.src, this.count);
      else if (type === GGMLType.F16) this.k.f32ToF16(buf as Uint16Array, this.src, this.count);
      else this.k.f32ToBf16(buf as Uint16Array, this.src, this.count);
      out = buf;
    }
    this.converted.set(type, out);
    return out;
  }
}

/** A row range of a matrix, or a column range computed in place with a row stride (ldw). */
function rows(m: Matrix, start: number, end: number): Matrix {
  const rowBytes = typeBytes(m.type, m.nIn);
  return { name: m.name, type: m.type, nIn: m.nIn, nOut: end - start, data: m.data.subarray(start * rowBytes, end * rowBytes) };
}

interface ColumnSlice extends Matrix {
  readonly ldw: number; // bytes between rows of the full matrix
}

function columns(m: Matrix, start: number, end: number): ColumnSlice {
  const rowBytes = typeBytes(m.type, m.nIn);
  const at = typeBytes(m.type, start);
  return { name: m.name, type: m.type, nIn: end - start, nOut: m.nOut, data: m.data.subarray(at, (m.nOut - 1) * rowBytes + at + typeBytes(m.type, end - start)), ldw: rowBytes };
}

/**
 * A column slice copied into rows of its own (ldw = its row bytes); a whole matrix as it is. Read in
 * place, a slice is a short run of each row with the other nodes' columns between the runs, and the
 * hardware prefetchers do not follow such runs: half of ffn_down read at 3.8 GB/s where the whole
 * matrix read at 8.7 (Zen 3, one thread); on Zen 5 a plain read of 144-1584-byte runs every 1152-3168
 * bytes took 6-8 GB/s against 22-28 for whole rows. The copy is this node's share only; the caller
 * drops the mapped pages of the full matrix afterwards. It is native (Kernels.copyRows: both ranges
 * faulted in with one call each, the rows split over the threads): 71 MB of TinyLlama's ffn_down
 * slices in 36-61 ms against 44-88 row by row in TypeScript, and a root's "loaded in" with one worker
 * 0.31-0.34 s against 0.34-0.53 (five alternations).
 */
function contiguous(m: ColumnSlice, k: Kernels, kept: SliceCopies | null): ColumnSlice {
  const seg = typeBytes(m.type, m.nIn);
  if (m.ldw === seg) return m;
  const copy = () => {
    const data = new Uint8Array(seg * m.nOut);
    k.copyRows(data, m.data, m.nOut, seg, m.ldw);
    return data;
  };
  const data = kept ? kept.get(`${m.name} ${m.data.byteOffset} ${seg}x${m.nOut}/${m.ldw}`, copy) : copy();
  return { ...m, data, ldw: seg };
}

/**
 * A worker's column-slice copies, kept from one session to the next: a root that asks for the same
 * slices of the same file (the same split) finds them made, instead of another pass over Wo and Wdown
 * (TinyLlama's shape, a pinned worker serving three roots in a row: the second and third roots loaded
 * in 0.15-0.19 s against 0.25-0.68 when the worker copied again). Only the copies the
 * latest session used are kept (a new split replaces them), so between sessions a worker holds what
 * its last session held. A key is the tensor, its slice's byte offset in the file and its shape: the
 * worker serves one file, whose identity it checks at every handshake.
 */
export class SliceCopies {
  private kept = new Map<string, Uint8Array>();
  private used = new Map<string, Uint8Array>();
  /** of the latest model built: copies found made, and bytes in them; copies made */
  reused = 0;
  reusedBytes = 0;
  made = 0;

  /** Before a model is built with these copies: counts restart. */
  begin(): void {
    this.used = new Map();
    this.reused = this.reusedBytes = this.made = 0;
  }

  /** The copy kept under `key`, else a new one from `make`; either way kept for the next model. */
  get(key: string, make: () => Uint8Array): Uint8Array {
    let d = this.kept.get(key);
    if (d) {
      this.reused++;
      this.reusedBytes += d.byteLength;
    } else {
      d = make();
      this.made++;
    }
    this.used.set(key, d);
    return d;
  }

  /** After the model is built: only what it uses is kept for the next one. */
  end(): void {
    this.kept = this.used;
    this.used = new Map();
  }

  /** The file changed: nothing kept matches it. */
  clear(): void {
    this.kept = new Map();
  }
}

/** One layer's weights as one node sees them: only its slices (zero-copy views). */
export interface LayerSlice {
  attnNorm: Float32Array; //   (dim)
  wq: Matrix; //               rows of this node's query heads      (dim -> heads * head_dim)
  wk: Matrix; //               rows of its KV heads                 (dim -> kv_heads * head_dim)
  wv: Matrix;
  bq: Float32Array | null;
  bk: Float32Array | null;
  bv: Float32Array | null;
  qNorm: Float32Array | null;
  kNorm: Float32Array | null;
  wo: ColumnSlice; //          columns of its query heads           (heads * head_dim -> dim), partial sums
  ffnNorm: Float32Array;
  wGate: Matrix; //            rows of its feed-forward units       (dim -> ffn)
  wUp: Matrix;
  wDown: ColumnSlice; //       columns of its feed-forward units    (ffn -> dim), partial sums
}

export function sliceLayer(L: LayerWeights, c: ModelConfig, s: Slice): LayerSlice {
  const hd = c.headDim;
  const [q0, q1] = [s.heads.start * hd, s.heads.end * hd];
  const [k0, k1] = [s.kvHeads.start * hd, s.kvHeads.end * hd];
  return {
    attnNorm: L.attnNorm,
    wq: rows(L.wq, q0, q1),
    wk: rows(L.wk, k0, k1),
    wv: rows(L.wv, k0, k1),
    bq: L.bq && L.bq.subarray(q0, q1),
    bk: L.bk && L.bk.subarray(k0, k1),
    bv: L.bv && L.bv.subarray(k0, k1),
    qNorm: L.qNorm,
    kNorm: L.kNorm,
    wo: columns(L.wo, q0, q1),
    ffnNorm: L.ffnNorm,
    wGate: rows(L.wGate, s.ffn.start, s.ffn.end),
    wUp: rows(L.wUp, s.ffn.start, s.ffn.end),
    wDown: columns(L.wDown, s.ffn.start, s.ffn.end),
  };
}

/** The part of a model one node computes: nodes of a cluster sum each other's partial outputs. */
export interface Slice {
  readonly kvHeads: { readonly start: number; readonly end: number };
  readonly heads: { readonly start: number; readonly end: number };
  readonly ffn: { readonly start: number; readonly end: number };
}

/** Scratch for a batch of up to `cap` tokens of one slice. */
class Scratch {
  q: Float32Array; //     (cap, slice heads * head_dim)
  k: Float32Array; //     (cap, slice kv heads * head_dim)
  v: Float32Array; //     (cap, slice kv heads * head_dim)
  att: Float32Array; //   (cap, slice heads * head_dim)
  gate: Float32Array; //  (cap, slice ffn)
  up: Float32Array; //    (cap, slice ffn)
  pos: Int32Array; //     (cap)
  constructor(
    readonly cap: number,
    qDim: number,
    kvDim: number,
    ffn: number,
  ) {
    this.q = new Float32Array(cap * qDim);
    this.k = new Float32Array(cap * kvDim);
    this.v = new Float32Array(cap * kvDim);
    this.att = new Float32Array(cap * qDim);
    this.gate = new Float32Array(cap * ffn);
    this.up = new Float32Array(cap * ffn);
    this.pos = new Int32Array(cap);
  }
}

/** The KV cache of a slice's KV heads: per layer, one row per position, F32 or F16. */
export class KVCache {
  readonly k: (Float32Array | Uint16Array)[];
  readonly v: (Float32Array | Uint16Array)[];
  readonly rowSize: number;
  constructor(
    readonly nCtx: number,
    c: ModelConfig,
    readonly type: GGMLType.F32 | GGMLType.F16 = GGMLType.F32,
    kvHeads = c.nKvHeads,
  ) {
    this.rowSize = kvHeads * c.headDim;
    const make = () => (type === GGMLType.F16 ? new Uint16Array(nCtx * this.rowSize) : new Float32Array(nCtx * this.rowSize));
    this.k = Array.from({ length: c.nLayers }, make);
    this.v = Array.from({ length: c.nLayers }, make);
  }

  /** Stores `count` values of keys and values at positions pos0.. of layer l. */
  store(k: Kernels, l: number, pos0: number, keys: Float32Array, values: Float32Array, count: number): void {
    const [kc, vc] = [this.k[l]!, this.v[l]!];
    const at = pos0 * this.rowSize;
    if (kc instanceof Float32Array) {
      kc.set(keys.subarray(0, count), at);
      (vc as Float32Array).set(values.subarray(0, count), at);
    } else {
      k.f32ToF16(kc.subarray(at), keys, count);
      k.f32ToF16((vc as Uint16Array).subarray(at), values, count);
    }
  }
}

/**
 * What one node computes of each layer: given the normalised input of a block, the block's output
 * restricted to its slice (partial sums over its heads or feed-forward units). On one node holding the
 * whole model, these are the layer's full attention and feed-forward outputs.
 */
export class SliceCompute {
  readonly layers: LayerSlice[];
  readonly qDim: number;
  readonly kvDim: number;
  readonly ffnDim: number;
  private scratch: Scratch;
  private readonly act: Activation;
  private readonly act2: Activation;
  private readonly after: [readonly Uint8Array[], readonly Uint8Array[]][];

  constructor(
    readonly config: ModelConfig,
    weights: Weights,
    readonly k: Kernels,
    readonly slice: Slice,
    /** times the matmuls (with `k` from profiledKernels, which times the other kernels) */
    readonly prof: Profiler | null = null,
    /** the slices read from disk through a memory budget (--max-memory) instead of mapped */
    readonly streamed: StreamedWeights | null = null,
    /** column-slice copies kept from an earlier model over the same file (a worker's sessions) */
    copies: SliceCopies | null = null,
  ) {
    copies?.begin();
    this.layers = weights.layers.map((L) => {
      const S = sliceLayer(L, config, slice);
      // mapped weights: the column slices are read from copies (streamed ones come in whole row spans)
      if (streamed) return S;
      const wo = contiguous(S.wo, k, copies), wDown = contiguous(S.wDown, k, copies);
      if (weights.mapped) {
        // the full matrices are not read again: their pages leave this process (the page cache keeps them)
        if (wo !== S.wo) k.releaseFilePages(L.wo.data);
        if (wDown !== S.wDown) k.releaseFilePages(L.wDown.data);
      }
      return { ...S, wo, wDown };
    });
    copies?.end();
    // what is read right after each reduction (streamed weights may not be in memory yet: none)
    this.after = this.layers.map((S, l) => {
      const next = this.layers[l + 1];
      if (streamed) return [[], []];
      return [[S.wGate.data, S.wUp.data, S.wDown.data], next ? [next.wq.data, next.wk.data, next.wv.data, next.wo.data] : []];
    });
    this.qDim = (slice.heads.end - slice.heads.start) * config.headDim;
    this.kvDim = (slice.kvHeads.end - slice.kvHeads.start) * config.headDim;
    this.ffnDim = slice.ffn.end - slice.ffn.start;
    this.scratch = new Scratch(1, this.qDim, this.kvDim, this.ffnDim);
    this.act = new Activation(k);
    this.act2 = new Activation(k);
    this.ropeFreqs = weights.ropeFreqs;
  }
  private readonly ropeFreqs: Float32Array;

  newCache(nCtx: number, type: GGMLType.F32 | GGMLType.F16 = GGMLType.F32): KVCache {
    return new KVCache(nCtx, this.config, type, this.slice.kvHeads.end - this.slice.kvHeads.start);
  }

  /** The weights this slice reads right after layer l's reduction of `phase`, in the order it reads
   *  them (the next block's matrices; none after the last layer, none when streamed). */
  readAfter(l: number, phase: Phase): readonly Uint8Array[] {
    return this.after[l]![phase]!;
  }

  private ensure(n: number): Scratch {
    if (this.scratch.cap < n) this.scratch = new Scratch(n, this.qDim, this.kvDim, this.ffnDim);
    return this.scratch;
  }

  private matmul(op: Op, out: Float32Array, w: Matrix | ColumnSlice, act: Activation, nTok: number): void {
    const x = act.as(w.type), p = this.prof;
    const t = p ? p.start() : 0;
    this.k.matmul(out, w.nOut, w.data, w.type, x, w.nIn, 0, w.nOut, nTok, "ldw" in w ? w.ldw : 0);
    if (p) p.stop(op, t, w.nOut * typeBytes(w.type, w.nIn));
  }

  /** Layer l's slice, with the phase's weights loaded when they are streamed. */
  private async load(l: number, phase: Phase): Promise<LayerSlice> {
    if (!this.streamed) return this.layers[l]!;
    const got = this.streamed.layer(l, phase), p = this.prof;
    if (!(got instanceof Promise)) return got;
    const t = p ? p.start() : 0;
    const L = await got;
    if (p) p.stop(Op.StreamWait, t);
    return L;
  }

  /** out (n, dim) = this slice's part of layer l's attention output for the normalised input h (n, dim). */
  async attention(l: number, h: Float32Array, n: number, pos0: number, cache: KVCache, out: Float32Array): Promise<void> {
    const c = this.config, k = this.k, L = await this.load(l, Phase.Attention), s = this.ensure(n);
    const heads = this.slice.heads.end - this.slice.heads.start, kvHeads = this.slice.kvHeads.end - this.slice.kvHeads.start;
    if (pos0 < 0 || pos0 + n > cache.nCtx) throw new Error(`positions ${pos0}..${pos0 + n - 1} exceed the context of ${cache.nCtx}`);
    for (let i = 0; i < n; i++) s.pos[i] = pos0 + i;
    const pos = s.pos.subarray(0, n);
    const { qDim, kvDim } = this;
    this.act.set(h, n * c.dim);
    this.matmul(Op.AttnQ, s.q, L.wq, this.act, n);
    this.matmul(Op.AttnK, s.k, L.wk, this.act, n);
    this.matmul(Op.AttnV, s.v, L.wv, this.act, n);
    if (L.bq) for (let i = 0; i < n; i++) k.add(s.q.subarray(i * qDim), s.q.subarray(i * qDim), L.bq, qDim);
    if (L.bk) for (let i = 0; i < n; i++) k.add(s.k.subarray(i * kvDim), s.k.subarray(i * kvDim), L.bk, kvDim);
    if (L.bv) for (let i = 0; i < n; i++) k.add(s.v.subarray(i * kvDim), s.v.subarray(i * kvDim), L.bv, kvDim);
    if (L.qNorm) k.rmsnorm(s.q, s.q, L.qNorm, c.headDim, n * heads, c.rmsEps);
    if (L.kNorm) k.rmsnorm(s.k, s.k, L.kNorm, c.headDim, n * kvHeads, c.rmsEps);
    k.rope(s.q, s.q, pos, this.ropeFreqs, n, heads, c.headDim, c.nRot, c.ropeMode);
    k.rope(s.k, s.k, pos, this.ropeFreqs, n, kvHeads, c.headDim, c.nRot, c.ropeMode);
    cache.store(k, l, pos0, s.k, s.v, n * kvDim);
    k.attention(s.att, s.q, cache.k[l]!, cache.v[l]!, cache.type, pos, n, heads, kvHeads, c.headDim, kvDim, 1 / Math.sqrt(c.headDim));
    this.matmul(Op.AttnOut, out, L.wo, this.act2.set(s.att, n * qDim), n);
    this.streamed?.release(l, Phase.Attention);
  }

  /** out (n, dim) = this slice's part of layer l's feed-forward output for the normalised input h. */
  async feedForward(l: number, h: Float32Array, n: number, out: Float32Array): Promise<void> {
    const L = await this.load(l, Phase.FeedForward), s = this.ensure(n);
    this.act.set(h, n * this.config.dim);
    this.matmul(Op.FfnGate, s.gate, L.wGate, this.act, n);
    this.matmul(Op.FfnUp, s.up, L.wUp, this.act, n);
    this.k.swiglu(s.gate, s.gate, s.up, n * this.ffnDim);
    this.matmul(Op.FfnDown, out, L.wDown, this.act2.set(s.gate, n * this.ffnDim), n);
    this.streamed?.release(l, Phase.FeedForward);
  }
}

export const enum Phase {
  Attention = 0,
  FeedForward = 1,
}

/**
 * The other nodes of a cluster, from one node's side (the root's, src/cluster/root.ts, or a
 * worker's, src/cluster/worker.ts). Every node runs forward() over its own copy of the residual
 * stream; the copies stay identical because every reduction hands every node the same sum.
 * Absent on a single node.
 */
export interface Peers {
  /** A forward step over `tokens` at positions pos0..: the root tells the workers (token ids
   *  included: each node embeds them itself). `logits` is how many last tokens' logits the step
   *  wants, 0 when this node computes all of them itself (a streamed root). */
  begin(pos0: number, tokens: ArrayLike<number>, logits: number): void;
  /** `part` (n rows of dim) holds this node's partial output of a block; afterwards, the sum over all
   *  nodes, the same to the bit on every node. `next`: the weights this node reads right after, which
   *  it may read into the cache while it waits (warm.ts). */
  reduce(layer: number, phase: Phase, part: Float32Array, n: number, next?: readonly Uint8Array[]): Promise<void>;
  /** The rows of the logits this node computes in this step, or null when it computes all of them. */
  logitRows(): readonly Range[] | null;
  /** After this node computed its rows into `logits` (n rows of the vocabulary): the root copies in
   *  the other nodes' rows, a worker sends its own. */
  finishLogits(logits: Float32Array, n: number): Promise<void>;
}

/** A node's view of the model: embeddings, its own copy of the residual stream, norms and logits,
 *  and its slice of every layer (on one node, the whole model). */
export class LlamaModel {
  readonly local: SliceCompute;
  private x = new Float32Array(0); //     (cap, dim)   the residual stream
  private h = new Float32Array(0); //     (cap, dim)   normalised input of a block
  private part = new Float32Array(0); //  (cap, dim)   a block's output (summed over nodes)
  private readonly act: Activation;

  constructor(
    readonly config: ModelConfig,
    readonly weights: Weights,
    readonly k: Kernels,
    slice: Slice = { kvHeads: { start: 0, end: config.nKvHeads }, heads: { start: 0, end: config.nHeads }, ffn: { start: 0, end: config.hiddenDim } },
    readonly peers: Peers | null = null,
    readonly prof: Profiler | null = null,
    readonly streamed: StreamedWeights | null = null,
    copies: SliceCopies | null = null,
  ) {
    this.local = new SliceCompute(config, weights, k, slice, prof, streamed, copies);
    this.act = new Activation(k);
  }

  newCache(nCtx: number, type: GGMLType.F32 | GGMLType.F16 = GGMLType.F32): KVCache {
    return this.local.newCache(nCtx, type);
  }

  /**
   * Runs `tokens` at positions pos0, pos0 + 1, ... through the model, filling the cache at those
   * positions. Returns the logits (vocab floats per row) of the last token, or of every token when
   * `allLogits` is set.
   */
  async forward(tokens: ArrayLike<number>, pos0: number, cache: KVCache, allLogits = false): Promise<Float32Array> {
    const c = this.config, w = this.weights, k = this.k, peers = this.peers;
    const n = tokens.length;
    if (n < 1) throw new Error("forward: no tokens");
    if (pos0 < 0 || pos0 + n > cache.nCtx) throw new Error(`forward: positions ${pos0}..${pos0 + n - 1} exceed the context of ${cache.nCtx}`);
    if (this.x.length < n * c.dim) [this.x, this.h, this.part] = [0, 0, 0].map(() => new Float32Array(n * c.dim)) as [Float32Array<ArrayBuffer>, Float32Array<ArrayBuffer>, Float32Array<ArrayBuffer>];
    const { x, h, part } = this;

    // logits of the last token, or of all of them
    const first = allLogits ? 0 : n - 1;
    const count = n - first;
    for (let i = 0; i < n; i++) {
      const t = tokens[i]!;
      if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize) throw new Error(`forward: token id ${t} is outside the vocabulary (0..${c.vocabSize - 1})`);
    }
    peers?.begin(pos0, tokens, this.streamed ? 0 : count);

    // token embeddings: rows of token_embd, dequantised
    const embRow = typeBytes(w.tokenEmbd.type, c.dim);
    for (let i = 0; i < n; i++) {
      const t = tokens[i]!;
      k.dequantize(x.subarray(i * c.dim, (i + 1) * c.dim), w.tokenEmbd.data.subarray(t * embRow, (t + 1) * embRow), w.tokenEmbd.type, c.dim);
    }

    for (let l = 0; l < c.nLayers; l++) {
      const L = w.layers[l]!;
      // attention: x += sum over nodes of Wo[:, slice] . attention(slice heads)
      k.rmsnorm(h, x, L.attnNorm, c.dim, n, c.rmsEps);
      await this.local.attention(l, h, n, pos0, cache, part);
      if (peers) await peers.reduce(l, Phase.Attention, part, n, this.local.readAfter(l, Phase.Attention));
      k.add(x, x, part, n * c.dim);

      // feed-forward: x += sum over nodes of Wdown[:, slice] . (silu(Wgate[slice] h) * Wup[slice] h)
      k.rmsnorm(h, x, L.ffnNorm, c.dim, n, c.rmsEps);
      await this.local.feedForward(l, h, n, part);
      if (peers) await peers.reduce(l, Phase.FeedForward, part, n, this.local.readAfter(l, Phase.FeedForward));
      k.add(x, x, part, n * c.dim);
    }

    const out = w.output, p = this.prof;
    // in a cluster, the rows of the logits this node computes (null: all of them); a worker without
    // rows computes nothing
    const shared = peers ? peers.logitRows() : null;
    if (shared?.length === 0) {
      await peers!.finishLogits(new Float32Array(0), count);
      return new Float32Array(0);
    }
    k.rmsnorm(h, x.subarray(first * c.dim), w.outputNorm, c.dim, count, c.rmsEps);
    const logits = new Float32Array(count * c.vocabSize);
    const input = this.act.set(h, count * c.dim).as(out.type);
    if (shared || !this.streamed) {
      const t = p ? p.start() : 0;
      let bytes = 0;
      for (const r of shared ?? [{ start: 0, end: out.nOut }]) {
        k.matmul(logits.subarray(r.start), c.vocabSize, out.data, out.type, input, out.nIn, r.start, r.end, count);
        bytes += (r.end - r.start) * typeBytes(out.type, out.nIn);
      }
      if (p) p.stop(Op.Logits, t, bytes);
      // the other nodes' rows come in (root), or this node's go out (worker)
      if (shared) await peers!.finishLogits(logits, count);
      return logits;
    }
    // streamed: the output matrix in row chunks, as they arrive from disk
    for (let i = 0; i < this.streamed.outputChunks; i++) {
      let t = p ? p.start() : 0;
      let chunk = this.streamed.outputChunk(i);
      if (chunk instanceof Promise) {
        chunk = await chunk;
        if (p) t = p.lap(Op.StreamWait, t);
      }
      k.matmul(logits.subarray(chunk.r0), c.vocabSize, chunk.data, out.type, input, out.nIn, 0, chunk.r1 - chunk.r0, count);
      if (p) p.stop(Op.Logits, t, chunk.data.byteLength);
      this.streamed.releaseOutput(i);
    }
    return logits;
  }
}
