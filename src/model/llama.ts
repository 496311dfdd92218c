// The llama family (llama, qwen2, qwen3): weights as zero-copy views into the mapped GGUF, and a
// forward pass over a batch of tokens that computes what llama.cpp computes.
import { GGMLType, type Kernels, TYPE_TRAITS, typeBytes } from "../native/types";
import type { ModelConfig } from "./config";
import { GGUFError, type GGUFFile, ggmlTypeName } from "./gguf";

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

/** Scratch for a batch of up to `cap` tokens. */
class Scratch {
  x: Float32Array; //     (cap, dim)        the residual stream
  h: Float32Array; //     (cap, dim)        normalised input of a block
  q: Float32Array; //     (cap, n_heads * head_dim)
  k: Float32Array; //     (cap, n_kv_heads * head_dim)
  v: Float32Array; //     (cap, n_kv_heads * head_dim)
  att: Float32Array; //   (cap, n_heads * head_dim)
  proj: Float32Array; //  (cap, dim)
  gate: Float32Array; //  (cap, hidden)
  up: Float32Array; //    (cap, hidden)
  pos: Int32Array; //     (cap)
  constructor(
    readonly cap: number,
    c: ModelConfig,
  ) {
    const q = c.nHeads * c.headDim, kv = c.nKvHeads * c.headDim;
    this.x = new Float32Array(cap * c.dim);
    this.h = new Float32Array(cap * c.dim);
    this.q = new Float32Array(cap * q);
    this.k = new Float32Array(cap * kv);
    this.v = new Float32Array(cap * kv);
    this.att = new Float32Array(cap * q);
    this.proj = new Float32Array(cap * c.dim);
    this.gate = new Float32Array(cap * c.hiddenDim);
    this.up = new Float32Array(cap * c.hiddenDim);
    this.pos = new Int32Array(cap);
  }
}

/** The KV cache: per layer, one row of n_kv_heads * head_dim per position, F32 or F16. */
export class KVCache {
  readonly k: (Float32Array | Uint16Array)[];
  readonly v: (Float32Array | Uint16Array)[];
  constructor(
    readonly nCtx: number,
    c: ModelConfig,
    readonly type: GGMLType.F32 | GGMLType.F16 = GGMLType.F32,
  ) {
    const row = c.nKvHeads * c.headDim;
    const make = () => (type === GGMLType.F16 ? new Uint16Array(nCtx * row) : new Float32Array(nCtx * row));
    this.k = Array.from({ length: c.nLayers }, make);
    this.v = Array.from({ length: c.nLayers }, make);
  }

  /** Stores n rows of keys and values at positions pos0.. of layer l. */
  store(k: Kernels, l: number, pos0: number, keys: Float32Array, values: Float32Array, count: number): void {
    const [kc, vc] = [this.k[l]!, this.v[l]!];
    const at = pos0 * (kc.length / this.nCtx);
    if (kc instanceof Float32Array) {
      kc.set(keys.subarray(0, count), at);
      (vc as Float32Array).set(values.subarray(0, count), at);
    } else {
      k.f32ToF16(kc.subarray(at), keys, count);
      k.f32ToF16((vc as Uint16Array).subarray(at), values, count);
    }
  }
}

export class LlamaModel {
  private scratch: Scratch;
  private readonly act: Activation;
  private readonly act2: Activation;

  constructor(
    readonly config: ModelConfig,
    readonly weights: Weights,
    readonly k: Kernels,
  ) {
    this.scratch = new Scratch(1, config);
    this.act = new Activation(k);
    this.act2 = new Activation(k);
  }

  private matmul(out: Float32Array, w: Matrix, act: Activation, nTok: number): void {
    this.k.matmul(out, w.nOut, w.data, w.type, act.as(w.type), w.nIn, 0, w.nOut, nTok);
  }

  /**
   * Runs `tokens` at positions pos0, pos0 + 1, ... through the model, filling the cache at those
   * positions. Returns the logits (vocab floats per row) of the last token, or of every token when
   * `allLogits` is set.
   */
  forward(tokens: ArrayLike<number>, pos0: number, cache: KVCache, allLogits = false): Float32Array {
    const c = this.config, w = this.weights, k = this.k;
    const n = tokens.length;
    if (n < 1) throw new Error("forward: no tokens");
    if (pos0 < 0 || pos0 + n > cache.nCtx) throw new Error(`forward: positions ${pos0}..${pos0 + n - 1} exceed the context of ${cache.nCtx}`);
    if (this.scratch.cap < n) this.scratch = new Scratch(n, c);
    const s = this.scratch;
    const qDim = c.nHeads * c.headDim, kvDim = c.nKvHeads * c.headDim;
    for (let i = 0; i < n; i++) s.pos[i] = pos0 + i;
    const pos = s.pos.subarray(0, n);

    // token embeddings: rows of token_embd, dequantised
    const embRow = typeBytes(w.tokenEmbd.type, c.dim);
    for (let i = 0; i < n; i++) {
      const t = tokens[i]!;
      if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize) throw new Error(`forward: token id ${t} is outside the vocabulary (0..${c.vocabSize - 1})`);
      k.dequantize(s.x.subarray(i * c.dim, (i + 1) * c.dim), w.tokenEmbd.data.subarray(t * embRow, (t + 1) * embRow), w.tokenEmbd.type, c.dim);
    }

    for (let l = 0; l < c.nLayers; l++) {
      const L = w.layers[l]!;
      // attention
      k.rmsnorm(s.h, s.x, L.attnNorm, c.dim, n, c.rmsEps);
      this.act.set(s.h, n * c.dim);
      this.matmul(s.q, L.wq, this.act, n);
      this.matmul(s.k, L.wk, this.act, n);
      this.matmul(s.v, L.wv, this.act, n);
      if (L.bq) for (let i = 0; i < n; i++) k.add(s.q.subarray(i * qDim), s.q.subarray(i * qDim), L.bq, qDim);
      if (L.bk) for (let i = 0; i < n; i++) k.add(s.k.subarray(i * kvDim), s.k.subarray(i * kvDim), L.bk, kvDim);
      if (L.bv) for (let i = 0; i < n; i++) k.add(s.v.subarray(i * kvDim), s.v.subarray(i * kvDim), L.bv, kvDim);
      if (L.qNorm) k.rmsnorm(s.q, s.q, L.qNorm, c.headDim, n * c.nHeads, c.rmsEps);
      if (L.kNorm) k.rmsnorm(s.k, s.k, L.kNorm, c.headDim, n * c.nKvHeads, c.rmsEps);
      k.rope(s.q, s.q, pos, w.ropeFreqs, n, c.nHeads, c.headDim, c.nRot, c.ropeMode);
      k.rope(s.k, s.k, pos, w.ropeFreqs, n, c.nKvHeads, c.headDim, c.nRot, c.ropeMode);
      cache.store(k, l, pos0, s.k, s.v, n * kvDim);
      k.attention(s.att, s.q, cache.k[l]!, cache.v[l]!, cache.type, pos, n, c.nHeads, c.nKvHeads, c.headDim, kvDim, 1 / Math.sqrt(c.headDim));
      this.matmul(s.proj, L.wo, this.act2.set(s.att, n * qDim), n);
      k.add(s.x, s.x, s.proj, n * c.dim);

      // feed-forward
      k.rmsnorm(s.h, s.x, L.ffnNorm, c.dim, n, c.rmsEps);
      this.act.set(s.h, n * c.dim);
      this.matmul(s.gate, L.wGate, this.act, n);
      this.matmul(s.up, L.wUp, this.act, n);
      k.swiglu(s.gate, s.gate, s.up, n * c.hiddenDim);
      this.matmul(s.proj, L.wDown, this.act2.set(s.gate, n * c.hiddenDim), n);
      k.add(s.x, s.x, s.proj, n * c.dim);
    }

    // logits of the last token, or of all of them
    const first = allLogits ? 0 : n - 1;
    const rows = n - first;
    k.rmsnorm(s.h, s.x.subarray(first * c.dim), w.outputNorm, c.dim, rows, c.rmsEps);
    const logits = new Float32Array(rows * c.vocabSize);
    this.matmul(logits, w.output, this.act.set(s.h, rows * c.dim), rows);
    return logits;
  }
}
