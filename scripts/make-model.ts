// Synthetic model generator: writes a llama-family GGUF (llama, qwen2, qwen3) of any shape with
// deterministic random weights and a synthetic SentencePiece-style tokenizer, laid out like the test
// fixtures (test/fixtures/README.md, section 1), so benchmarks can run on models of real size without
// downloading anything.
//
//   bun scripts/make-model.ts --out F.gguf [--preset tinyllama|mini|llama7b-layer|...]
//       [--dim N --ffn N --layers N --heads N --kv-heads N --vocab N --ctx N --head-dim N]
//       [--type q4_0|q8_0|f16|f32] [--arch llama|qwen2|qwen3] [--tied] [--seed S]
//       [--threads N] [--quiet]
//
// or as a module: `await makeModel({ out, preset: "tinyllama", type: "q4_0" })`.
//
// Weights: matrices and biases are normal(0, 1) * 0.02 from seeded xoshiro128** streams (Marsaglia's
// polar form of Box-Muller), one stream per segment of 2^20 values of a tensor, seeded from (seed,
// tensor name, segment index), so any part of any tensor can be generated in any order on any number
// of threads and the file is the same byte for byte; norm weights are 1.0. `tensorValues()` gives the
// float weights of one tensor, before quantization.
// Quantization follows ggml's reference rules (quantize_row_q8_0_ref / quantize_row_q4_0_ref).
//
// The file is streamed: the header is written first, then each tensor in chunks through a reused
// buffer with positioned writes (parts of up to 4M values are spread over worker threads when the
// model is large), so a multi-GB model never sits in memory. It is written to a temporary name and
// renamed at the end.
import { closeSync, ftruncateSync, mkdirSync, openSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { availableParallelism } from "node:os";
import { dirname, resolve } from "node:path";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { f32ToF16Bits } from "../src/native/ts-kernels";

// ---- presets and options --------------------------------------------------------------------------

export type ModelType = "q4_0" | "q8_0" | "f16" | "f32";
export type ModelArch = "llama" | "qwen2" | "qwen3";

interface Shape {
  dim: number;
  ffn: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  ctx: number;
}

/** Every preset in one table: shape, and what it is for. Architecture defaults to llama. */
export const PRESETS = {
  tiny: { dim: 64, ffn: 160, layers: 2, heads: 4, kvHeads: 2, vocab: 512, ctx: 128, about: "the tiny-* fixtures' shape" },
  mini: { dim: 256, ffn: 704, layers: 4, heads: 8, kvHeads: 4, vocab: 2048, ctx: 256, about: "the mini-* fixtures' shape (the default)" },
  tinyllama: { dim: 2048, ffn: 5632, layers: 22, heads: 32, kvHeads: 4, vocab: 32000, ctx: 2048, about: "TinyLlama-1.1B (Q4_0 ~ 620 MB)" },
  "llama7b-layer": { dim: 4096, ffn: 11008, layers: 1, heads: 32, kvHeads: 32, vocab: 32000, ctx: 4096, about: "one layer of Llama-2-7B, with its embeddings (Q4_0 ~ 260 MB)" },
  llama7b: { dim: 4096, ffn: 11008, layers: 32, heads: 32, kvHeads: 32, vocab: 32000, ctx: 4096, about: "Llama-2-7B (Q4_0 ~ 3.8 GB)" },
} as const satisfies Record<string, Shape & { about: string }>;
export type PresetName = keyof typeof PRESETS;

const TYPES: Record<ModelType, { ggml: number; fileType: number }> = {
  f32: { ggml: 0, fileType: 0 },
  f16: { ggml: 1, fileType: 1 },
  q8_0: { ggml: 8, fileType: 7 },
  q4_0: { ggml: 2, fileType: 2 },
};
const ARCH_DEFAULTS: Record<ModelArch, { ropeBase: number; rmsEps: number }> = {
  llama: { ropeBase: 10000, rmsEps: 1e-5 },
  qwen2: { ropeBase: 1000000, rmsEps: 1e-6 },
  qwen3: { ropeBase: 1000000, rmsEps: 1e-6 },
};

export interface MakeModelOptions {
  out: string;
  /** shape defaults (default "mini"); explicit dims override it */
  preset?: PresetName;
  dim?: number;
  ffn?: number;
  layers?: number;
  heads?: number;
  kvHeads?: number;
  vocab?: number;
  ctx?: number;
  /** per attention head; default dim / heads. Written as <arch>.attention.key_length when it differs */
  headDim?: number;
  /** matrix type (default q4_0); norms (and biases) are always F32 */
  type?: ModelType;
  arch?: ModelArch;
  /** no output.weight: the model reuses token_embd */
  tied?: boolean;
  seed?: number;
  ropeBase?: number;
  rmsEps?: number;
  /** worker threads (default: up to 4 for models of 8M values or more, else 1); output does not depend on it */
  threads?: number;
  /** true: progress lines on stderr; a function: called with (bytes written, total bytes) */
  progress?: boolean | ((done: number, total: number) => void);
}

/** A bad option; `option` is its CLI name (e.g. "--kv-heads"). The CLI exits with code 2. */
export class MakeModelError extends Error {
  constructor(
    readonly option: string,
    message: string,
  ) {
    super(`${option}: ${message}`);
    this.name = "MakeModelError";
  }
}

/** The fully resolved model description. */
export interface ModelSpec extends Shape {
  arch: ModelArch;
  type: ModelType;
  headDim: number;
  tied: boolean;
  seed: number;
  ropeBase: number;
  rmsEps: number;
  name: string;
}

const MAX_DIM = 1 << 20; // far above any real model; keeps sizes sane and below the reader's 2^24 limit

export function resolveSpec(o: Omit<MakeModelOptions, "out" | "threads" | "progress">): ModelSpec {
  const preset = o.preset ?? "mini";
  if (!Object.hasOwn(PRESETS, preset)) throw new MakeModelError("--preset", `unknown preset ${JSON.stringify(preset)} (presets: ${Object.keys(PRESETS).join(", ")})`);
  const p = PRESETS[preset];
  const type = o.type ?? "q4_0";
  if (!Object.hasOwn(TYPES, type)) throw new MakeModelError("--type", `unknown type ${JSON.stringify(type)} (types: ${Object.keys(TYPES).join(", ")})`);
  const arch = o.arch ?? "llama";
  if (!Object.hasOwn(ARCH_DEFAULTS, arch)) throw new MakeModelError("--arch", `unknown architecture ${JSON.stringify(arch)} (architectures: ${Object.keys(ARCH_DEFAULTS).join(", ")})`);
  const int = (opt: string, v: number | undefined, fallback: number, min = 1, max = MAX_DIM): number => {
    const x = v ?? fallback;
    if (typeof x !== "number" || !Number.isSafeInteger(x)) throw new MakeModelError(opt, `${String(x)} is not an integer`);
    if (x < min || x > max) throw new MakeModelError(opt, `${x} is out of range (${min}..${max})`);
    return x;
  };
  const dim = int("--dim", o.dim, p.dim);
  const ffn = int("--ffn", o.ffn, p.ffn);
  const layers = int("--layers", o.layers, p.layers, 1, 4096);
  const heads = int("--heads", o.heads, p.heads, 1, 4096);
  // the preset's KV heads when they divide the head count, else one per head
  const kvHeads = int("--kv-heads", o.kvHeads, heads % p.kvHeads === 0 ? p.kvHeads : heads, 1, 4096);
  const vocab = int("--vocab", o.vocab, p.vocab, FIRST_PIECE + 1, 1 << 22);
  const ctx = int("--ctx", o.ctx, p.ctx, 1, 1 << 24);
  const seed = int("--seed", o.seed, 0, 0, Number.MAX_SAFE_INTEGER);
  const quantized = type === "q4_0" || type === "q8_0";
  const block = (opt: string, what: string, n: number) => {
    if (quantized && n % 32 !== 0) throw new MakeModelError(opt, `${what} ${n} is not a multiple of 32, the ${type} block size`);
  };
  block("--dim", "dim", dim);
  block("--ffn", "ffn", ffn);
  if (heads % kvHeads !== 0) throw new MakeModelError("--kv-heads", `${kvHeads} does not divide --heads ${heads}`);
  if (o.headDim === undefined && dim % heads !== 0) throw new MakeModelError("--heads", `${heads} does not divide --dim ${dim} (or give --head-dim)`);
  const hdOpt = o.headDim !== undefined ? "--head-dim" : "--heads"; // the one to change
  if (o.headDim === undefined && dim / heads < 2) throw new MakeModelError("--heads", `head_dim = dim / heads = ${dim / heads} must be at least 2`);
  const headDim = int(hdOpt, o.headDim, dim / heads, 2, 1 << 16);
  if (headDim % 2 !== 0) throw new MakeModelError(hdOpt, `head_dim ${headDim} must be even (RoPE rotates pairs)`);
  block(hdOpt, "heads * head_dim", heads * headDim);
  const defaults = ARCH_DEFAULTS[arch];
  const ropeBase = o.ropeBase ?? defaults.ropeBase;
  const rmsEps = o.rmsEps ?? defaults.rmsEps;
  if (!(typeof ropeBase === "number" && ropeBase > 0 && Number.isFinite(ropeBase))) throw new MakeModelError("--rope-base", `${ropeBase} must be a positive number`);
  if (!(typeof rmsEps === "number" && rmsEps > 0 && Number.isFinite(rmsEps))) throw new MakeModelError("--rms-eps", `${rmsEps} must be a positive number`);
  const tied = o.tied ?? false;
  const name =
    `synthetic-${arch}-d${dim}-f${ffn}-l${layers}-h${heads}-kv${kvHeads}` +
    (headDim !== dim / heads ? `-hd${headDim}` : "") +
    `-v${vocab}-${type}${tied ? "-tied" : ""}-seed${seed}`;
  return { arch, type, dim, ffn, layers, heads, kvHeads, headDim, vocab, ctx, tied, seed, ropeBase, rmsEps, name };
}

// ---- random weights ----------------------------------------------------------------------------

function mix32(h: number): number {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) | 0;
}

function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h | 0;
}

/** Normal(0, 1) * scale values: xoshiro128** uniforms through Marsaglia's polar method. */
export class NormalStream {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;
  private spare = 0;
  private hasSpare = false;

  /** The stream of segment `segment` of tensor `name` in a model of seed `seed` (a safe integer >= 0). */
  constructor(seed: number, name: string, segment = 0) {
    // splitmix32 over (seed low word, seed high word, name hash, segment)
    let z = mix32(mix32(mix32((seed >>> 0) ^ 0x243f6a88) ^ ((seed / 4294967296) >>> 0)) ^ fnv1a(name)) ^ mix32(segment + 0x3c6ef372);
    const next = () => (z = (z + 0x9e3779b9) | 0, mix32(z));
    this.s0 = next();
    this.s1 = next();
    this.s2 = next();
    this.s3 = next();
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** Fills out[0..n) with the next n values of the stream times `scale`, rounded to float32. */
  fill(out: Float32Array, n: number, scale: number): void {
    let i = 0;
    if (n > 0 && this.hasSpare) {
      out[i++] = this.spare;
      this.hasSpare = false;
    }
    let s0 = this.s0, s1 = this.s1, s2 = this.s2, s3 = this.s3;
    while (i < n) {
      // two xoshiro128** outputs, as signed 32-bit integers -> uniforms in [-1, 1)
      let a = Math.imul(s1, 5);
      a = Math.imul((a << 7) | (a >>> 25), 9);
      let t = s1 << 9;
      s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3; s2 ^= t;
      s3 = (s3 << 11) | (s3 >>> 21);
      let b = Math.imul(s1, 5);
      b = Math.imul((b << 7) | (b >>> 25), 9);
      t = s1 << 9;
      s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3; s2 ^= t;
      s3 = (s3 << 11) | (s3 >>> 21);
      const x = a * 4.656612873077393e-10, y = b * 4.656612873077393e-10; // 2^-31
      const r = x * x + y * y;
      if (r >= 1 || r === 0) continue;
      const m = Math.sqrt((-2 * Math.log(r)) / r) * scale;
      out[i++] = x * m;
      if (i < n) out[i++] = y * m;
      else {
        this.spare = Math.fround(y * m);
        this.hasSpare = true;
      }
    }
    this.s0 = s0; this.s1 = s1; this.s2 = s2; this.s3 = s3;
  }
}

export const WEIGHT_SCALE = 0.02;
/** Values per independently seeded segment of a tensor (a multiple of every block size). */
export const SEGMENT = 1 << 20;

/** Values [start, start + n) of tensor `name`'s random weights into out[0..n); start is a multiple of SEGMENT. */
function fillValues(out: Float32Array, seed: number, name: string, start: number, n: number): void {
  for (let i = 0; i < n; ) {
    const len = Math.min(SEGMENT, n - i);
    new NormalStream(seed, name, (start + i) / SEGMENT).fill(out.subarray(i, i + len), len, WEIGHT_SCALE);
    i += len;
  }
}

/** The float weights the generator draws for tensor `name` (n values), before quantization. */
export function tensorValues(seed: number, name: string, n: number): Float32Array {
  const out = new Float32Array(n);
  fillValues(out, seed, name, 0, n);
  return out;
}

// ---- encoders (ggml reference rules) -------------------------------------------------------------

const fround = Math.fround;
const QK = 32;

/** n floats of x (n a multiple of the block size for Q types) into `out` as `type`; returns the bytes. */
export function encode(type: ModelType, x: Float32Array, n: number, out: Uint8Array): number {
  switch (type) {
    case "f32": {
      out.set(new Uint8Array(x.buffer, x.byteOffset, n * 4));
      return n * 4;
    }
    case "f16": {
      if (out.byteOffset % 2 !== 0) throw new Error("encode: F16 output must be 2-byte aligned");
      const o16 = new Uint16Array(out.buffer, out.byteOffset, n);
      for (let i = 0; i < n; i++) o16[i] = f32ToF16Bits(x[i]!);
      return n * 2;
    }
    case "q8_0": {
      // quantize_row_q8_0_ref: d = amax / 127, q = roundf(x / d) (computed as x * (1/d) in float32)
      let o = 0;
      for (let b = 0; b < n; b += QK) {
        let amax = 0;
        for (let j = 0; j < QK; j++) {
          const v = Math.abs(x[b + j]!);
          if (v > amax) amax = v;
        }
        const d = fround(amax / 127);
        const id = d !== 0 ? fround(1 / d) : 0;
        const h = f32ToF16Bits(d);
        out[o] = h & 0xff;
        out[o + 1] = h >>> 8;
        for (let j = 0; j < QK; j++) {
          const v = fround(x[b + j]! * id);
          const q = v < 0 ? -Math.round(-v) : Math.round(v); // roundf: half away from zero
          out[o + 2 + j] = q & 0xff;
        }
        o += 34;
      }
      return o;
    }
    case "q4_0": {
      // quantize_row_q4_0_ref: max = the value of largest magnitude, d = max / -8,
      // q = min(15, (int8)(x / d + 8.5)); qs[j] = q[j] | q[j + 16] << 4
      let o = 0;
      for (let b = 0; b < n; b += QK) {
        let amax = 0, max = 0;
        for (let j = 0; j < QK; j++) {
          const v = x[b + j]!;
          if (amax < Math.abs(v)) {
            amax = Math.abs(v);
            max = v;
          }
        }
        const d = fround(max / -8);
        const id = d !== 0 ? fround(1 / d) : 0;
        const h = f32ToF16Bits(d);
        out[o] = h & 0xff;
        out[o + 1] = h >>> 8;
        for (let j = 0; j < QK / 2; j++) {
          const x0 = fround(x[b + j]! * id), x1 = fround(x[b + j + QK / 2]! * id);
          const q0 = Math.min(15, Math.trunc(fround(x0 + 8.5)));
          const q1 = Math.min(15, Math.trunc(fround(x1 + 8.5)));
          out[o + 2 + j] = q0 | (q1 << 4);
        }
        o += 18;
      }
      return o;
    }
  }
}

function typeBytes(type: ModelType | "f32", n: number): number {
  return type === "f32" ? n * 4 : type === "f16" ? n * 2 : type === "q8_0" ? (n / QK) * 34 : (n / QK) * 18;
}

// ---- synthetic tokenizer -----------------------------------------------------------------------

const BYTE_TOKENS = 256;
/** id of the first NORMAL piece: <unk>, <s>, </s>, then 256 byte tokens */
const FIRST_PIECE = 3 + BYTE_TOKENS;
const SPACE = "\u2581";
const PRINTABLE =
  "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" + ".,!?;:'\"-()[]{}/\\@#$%^&*_+=<>|~`";
const WORDS = (
  "the of and to in is that for it as was with be by on not he this are or his from at which but have they you " +
  "were her she there one all their can has been if more when will would who so what up out about into than them " +
  "could time only new some these two may first then do any like my now over such our man me even most made after " +
  "also did many before must through back years where much your way well down should because each just those people " +
  "how too little state good very make world still own see men work long get here between both life being under never " +
  "day same another know while last might us great old year off come since against go came right used take three " +
  "model token layer weight matrix vector tensor cluster worker node network memory machine compute inference " +
  "distributed fast slow quick brown fox jumps lazy dog once upon long ago data language sea story house water light " +
  "number system program question during place point school family group country problem hand part small large"
).split(" ");

/** The token texts, scores and ggml token types of a synthetic SPM vocabulary of `n` tokens. */
export function syntheticVocab(n: number): { tokens: string[]; scores: Float32Array; types: Int32Array } {
  if (n < FIRST_PIECE + 1) throw new MakeModelError("--vocab", `${n} is below the minimum of ${FIRST_PIECE + 1}`);
  const tokens: string[] = ["<unk>", "<s>", "</s>"];
  for (let b = 0; b < BYTE_TOKENS; b++) tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
  const seen = new Set<string>(tokens);
  const add = (t: string): boolean => {
    if (tokens.length >= n) return false;
    if (!seen.has(t)) {
      seen.add(t);
      tokens.push(t);
    }
    return tokens.length < n;
  };
  fill: {
    if (!add(SPACE)) break fill;
    for (const c of PRINTABLE) if (!add(c)) break fill;
    for (const c of PRINTABLE) if (!add(SPACE + c)) break fill;
    for (const w of WORDS) {
      for (let l = 2; l <= w.length; l++) if (!add(SPACE + w.slice(0, l))) break fill;
      for (let l = 2; l <= w.length; l++) if (!add(w.slice(0, l))) break fill;
    }
    // then every lowercase string of length 2, 3, 4, ...: first with the space mark, then without
    for (let len = 2; ; len++) {
      for (const prefix of [SPACE, ""]) {
        const idx = new Array<number>(len).fill(0);
        for (;;) {
          let s = prefix;
          for (const k of idx) s += PRINTABLE[k];
          if (!add(s)) break fill;
          let p = len - 1;
          while (p >= 0 && ++idx[p]! === 26) idx[p--] = 0;
          if (p < 0) break;
        }
      }
    }
  }
  const scores = new Float32Array(n);
  const types = new Int32Array(n).fill(1); // NORMAL
  types[0] = 2; // UNKNOWN
  types[1] = types[2] = 3; // CONTROL
  types.fill(6, 3, FIRST_PIECE); // BYTE
  for (let i = FIRST_PIECE; i < n; i++) scores[i] = -(i - FIRST_PIECE + 1);
  return { tokens, scores, types };
}

// ---- GGUF layout -------------------------------------------------------------------------------

const ALIGN = 32;

/** One tensor of the file: its ggml type id, dims (ne0 first), what fills it, and where it goes. */
export interface TensorPlan {
  name: string;
  dims: number[];
  /** "f32" for norms and biases, else the model's matrix type */
  type: ModelType;
  init: "normal" | "ones";
  /** absolute byte offset in the file */
  offset: number;
  nBytes: number;
}

export interface FilePlan {
  spec: ModelSpec;
  header: Uint8Array;
  tensors: TensorPlan[];
  dataOffset: number;
  totalBytes: number;
}

/** Little-endian byte writer for the header. */
class ByteWriter {
  private buf = new Uint8Array(1 << 16);
  private dv = new DataView(this.buf.buffer);
  pos = 0;
  private readonly enc = new TextEncoder();
  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const b = new Uint8Array(size);
    b.set(this.buf.subarray(0, this.pos));
    this.buf = b;
    this.dv = new DataView(b.buffer);
  }
  u8(v: number): void { this.ensure(1); this.dv.setUint8(this.pos, v); this.pos += 1; }
  u32(v: number): void { this.ensure(4); this.dv.setUint32(this.pos, v, true); this.pos += 4; }
  i32(v: number): void { this.ensure(4); this.dv.setInt32(this.pos, v, true); this.pos += 4; }
  f32(v: number): void { this.ensure(4); this.dv.setFloat32(this.pos, v, true); this.pos += 4; }
  u64(v: number): void { this.ensure(8); this.dv.setBigUint64(this.pos, BigInt(v), true); this.pos += 8; }
  str(s: string): void {
    const b = this.enc.encode(s);
    this.u64(b.length);
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
  bytes(): Uint8Array { return this.buf.slice(0, this.pos); }
}

const enum V { U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9 }

export function planFile(spec: ModelSpec): FilePlan {
  const s = spec, a = s.arch, mt = s.type;
  const q = s.heads * s.headDim, kv = s.kvHeads * s.headDim;
  const list: Omit<TensorPlan, "offset" | "nBytes">[] = [];
  const mat = (name: string, nIn: number, nOut: number) => list.push({ name, dims: [nIn, nOut], type: mt, init: "normal" });
  const vec = (name: string, n: number, init: "normal" | "ones") => list.push({ name, dims: [n], type: "f32", init });
  mat("token_embd.weight", s.dim, s.vocab);
  vec("output_norm.weight", s.dim, "ones");
  if (!s.tied) mat("output.weight", s.dim, s.vocab);
  for (let l = 0; l < s.layers; l++) {
    const p = `blk.${l}.`;
    vec(`${p}attn_norm.weight`, s.dim, "ones");
    mat(`${p}attn_q.weight`, s.dim, q);
    if (a === "qwen2") vec(`${p}attn_q.bias`, q, "normal");
    if (a === "qwen3") vec(`${p}attn_q_norm.weight`, s.headDim, "ones");
    mat(`${p}attn_k.weight`, s.dim, kv);
    if (a === "qwen2") vec(`${p}attn_k.bias`, kv, "normal");
    if (a === "qwen3") vec(`${p}attn_k_norm.weight`, s.headDim, "ones");
    mat(`${p}attn_v.weight`, s.dim, kv);
    if (a === "qwen2") vec(`${p}attn_v.bias`, kv, "normal");
    mat(`${p}attn_output.weight`, q, s.dim);
    vec(`${p}ffn_norm.weight`, s.dim, "ones");
    mat(`${p}ffn_gate.weight`, s.dim, s.ffn);
    mat(`${p}ffn_up.weight`, s.dim, s.ffn);
    mat(`${p}ffn_down.weight`, s.ffn, s.dim);
  }

  const w = new ByteWriter();
  w.u32(0x46554747); // "GGUF"
  w.u32(3);
  w.u64(list.length);
  const kvs: [string, (w: ByteWriter) => void][] = [];
  const u32 = (k: string, v: number) => kvs.push([k, (w) => (w.u32(V.U32), w.u32(v))]);
  const f32 = (k: string, v: number) => kvs.push([k, (w) => (w.u32(V.F32), w.f32(v))]);
  const str = (k: string, v: string) => kvs.push([k, (w) => (w.u32(V.STRING), w.str(v))]);
  const bool = (k: string, v: boolean) => kvs.push([k, (w) => (w.u32(V.BOOL), w.u8(v ? 1 : 0))]);
  str("general.architecture", a);
  str("general.name", s.name);
  u32("general.alignment", ALIGN);
  u32("general.file_type", TYPES[mt].fileType);
  u32("general.quantization_version", 2);
  u32(`${a}.vocab_size`, s.vocab);
  u32(`${a}.context_length`, s.ctx);
  u32(`${a}.embedding_length`, s.dim);
  u32(`${a}.block_count`, s.layers);
  u32(`${a}.feed_forward_length`, s.ffn);
  u32(`${a}.attention.head_count`, s.heads);
  u32(`${a}.attention.head_count_kv`, s.kvHeads);
  if (s.headDim !== s.dim / s.heads) {
    u32(`${a}.attention.key_length`, s.headDim);
    u32(`${a}.attention.value_length`, s.headDim);
  }
  u32(`${a}.rope.dimension_count`, s.headDim);
  f32(`${a}.rope.freq_base`, s.ropeBase);
  f32(`${a}.attention.layer_norm_rms_epsilon`, s.rmsEps);
  const vocab = syntheticVocab(s.vocab);
  str("tokenizer.ggml.model", "llama");
  kvs.push(["tokenizer.ggml.tokens", (w) => {
    w.u32(V.ARRAY); w.u32(V.STRING); w.u64(vocab.tokens.length);
    for (const t of vocab.tokens) w.str(t);
  }]);
  kvs.push(["tokenizer.ggml.scores", (w) => {
    w.u32(V.ARRAY); w.u32(V.F32); w.u64(vocab.scores.length);
    for (const x of vocab.scores) w.f32(x);
  }]);
  kvs.push(["tokenizer.ggml.token_type", (w) => {
    w.u32(V.ARRAY); w.u32(V.I32); w.u64(vocab.types.length);
    for (const x of vocab.types) w.i32(x);
  }]);
  u32("tokenizer.ggml.unknown_token_id", 0);
  u32("tokenizer.ggml.bos_token_id", 1);
  u32("tokenizer.ggml.eos_token_id", 2);
  bool("tokenizer.ggml.add_bos_token", true);
  bool("tokenizer.ggml.add_eos_token", false);
  w.u64(kvs.length);
  for (const [k, put] of kvs) {
    w.str(k);
    put(w);
  }

  let rel = 0;
  const rels: number[] = [];
  for (const t of list) {
    w.str(t.name);
    w.u32(t.dims.length);
    for (const d of t.dims) w.u64(d);
    w.u32(TYPES[t.type].ggml);
    w.u64(rel);
    rels.push(rel);
    rel += Math.ceil(typeBytes(t.type, t.dims[0]! * (t.dims[1] ?? 1)) / ALIGN) * ALIGN;
  }
  const dataOffset = Math.ceil(w.pos / ALIGN) * ALIGN;
  const tensors = list.map((t, i) => ({ ...t, offset: dataOffset + rels[i]!, nBytes: typeBytes(t.type, t.dims[0]! * (t.dims[1] ?? 1)) }));
  return { spec, header: w.bytes(), tensors, dataOffset, totalBytes: dataOffset + rel };
}

// ---- writing -----------------------------------------------------------------------------------

/** Values per chunk (divides SEGMENT): the float buffer is 1 MB, the encoded one at most as large. */
const CHUNK_VALUES = 1 << 18;

function writeAll(fd: number, b: Uint8Array, pos: number): void {
  let off = 0;
  while (off < b.length) {
    const n = writeSync(fd, b, off, b.length - off, pos + off);
    if (n <= 0) throw new Error(`write failed at offset ${pos + off}`);
    off += n;
  }
}

/** Buffers reused across the tensors written by one thread. */
class Buffers {
  readonly floats = new Float32Array(CHUNK_VALUES);
  readonly bytes = new Uint8Array(CHUNK_VALUES * 4);
}

/** A piece of work: values [start, end) of one tensor (start a multiple of SEGMENT). */
interface Part {
  tensor: TensorPlan;
  start: number;
  end: number;
}

/** Values per part handed to a worker: big tensors are split so that threads stay busy to the end. */
export const PART_VALUES = 4 * SEGMENT;

function splitParts(tensors: TensorPlan[]): Part[] {
  const parts: Part[] = [];
  for (const t of tensors) {
    const n = t.dims[0]! * (t.dims[1] ?? 1);
    for (let a = 0; a < n; a += PART_VALUES) parts.push({ tensor: t, start: a, end: Math.min(n, a + PART_VALUES) });
  }
  return parts;
}

/**
 * Generates, encodes and writes one part of a tensor in chunks through reused buffers; reports the
 * bytes written, plus the padding after the tensor with its last part, so that the reports of all
 * parts add up to the data section. Q-type blocks never straddle a chunk: chunks start at multiples
 * of CHUNK_VALUES, and a row (ne0 values) is a whole number of blocks.
 */
function writePart(fd: number, seed: number, p: Part, bufs: Buffers, report: (bytes: number) => void): void {
  const t = p.tensor;
  const { floats, bytes } = bufs;
  let stream: NormalStream | null = null;
  for (let a = p.start; a < p.end; ) {
    const n = Math.min(CHUNK_VALUES, p.end - a);
    if (t.init === "normal") {
      if (a % SEGMENT === 0) stream = new NormalStream(seed, t.name, a / SEGMENT);
      stream!.fill(floats, n, WEIGHT_SCALE);
    } else floats.fill(1, 0, n);
    const len = encode(t.type, floats, n, bytes);
    writeAll(fd, bytes.subarray(0, len), t.offset + typeBytes(t.type, a));
    report(len);
    a += n;
  }
  if (p.end === t.dims[0]! * (t.dims[1] ?? 1)) {
    const pad = Math.ceil(t.nBytes / ALIGN) * ALIGN - t.nBytes; // zeros already (the file was extended)
    if (pad) report(pad);
  }
}

interface WorkerTask {
  path: string;
  seed: number;
  part: Part;
}
type WorkerMessage = { progress: number } | { done: true } | { error: string };

function formatBytes(n: number): string {
  return n >= 1 << 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : n >= 1 << 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`;
}

/** Writes the model; resolves to its path and size once the file is complete under its final name. */
export async function makeModel(opts: MakeModelOptions): Promise<{ path: string; bytes: number; tensors: number; seconds: number; spec: ModelSpec }> {
  const t0 = performance.now();
  if (typeof opts.out !== "string" || opts.out === "") throw new MakeModelError("--out", "the output file is required");
  const spec = resolveSpec(opts);
  const plan = planFile(spec);
  const values = plan.tensors.reduce((s, t) => s + t.dims[0]! * (t.dims[1] ?? 1), 0);
  const threads = opts.threads ?? (values >= 8 << 20 ? Math.min(availableParallelism(), 4) : 1);
  if (!Number.isSafeInteger(threads) || threads < 1 || threads > 256) throw new MakeModelError("--threads", `${threads} is not an integer from 1 to 256`);

  const path = resolve(opts.out);
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;

  // progress: a callback, or lines on stderr (a line updated in place on a terminal)
  const total = plan.totalBytes;
  let done = plan.dataOffset; // the header and its padding, written first
  let lastPct = -1, lastTime = 0;
  const tty = process.stderr.isTTY === true;
  const progress = (bytes: number) => {
    done += bytes;
    if (typeof opts.progress === "function") opts.progress(done, total);
    else if (opts.progress) {
      const pct = Math.floor((done / total) * 100);
      const now = performance.now();
      if (tty ? now - lastTime >= 200 || done === total : Math.floor(pct / 10) > Math.floor(lastPct / 10)) {
        const line = `make-model: ${pct}% (${formatBytes(done)} of ${formatBytes(total)}) ${((now - t0) / 1000).toFixed(1)} s`;
        process.stderr.write(tty ? `\r${line}` : `${line}\n`);
        lastPct = pct;
        lastTime = now;
      }
    }
  };
  if (opts.progress === true) {
    process.stderr.write(`make-model: ${spec.name}: ${plan.tensors.length} tensors, ${formatBytes(total)}, ${threads} thread${threads > 1 ? "s" : ""}\n`);
  }

  const fd = openSync(tmp, "w");
  try {
    ftruncateSync(fd, total); // padding between tensors stays zero
    writeAll(fd, plan.header, 0);
    if (typeof opts.progress === "function") opts.progress(done, total);
    if (threads === 1) {
      const bufs = new Buffers();
      for (const p of splitParts(plan.tensors)) writePart(fd, spec.seed, p, bufs, progress);
    } else {
      await runWorkers(tmp, spec.seed, splitParts(plan.tensors), threads, progress);
    }
    closeSync(fd);
    renameSync(tmp, path);
  } catch (e) {
    try { closeSync(fd); } catch {}
    try { unlinkSync(tmp); } catch {}
    throw e;
  }
  const seconds = (performance.now() - t0) / 1000;
  if (opts.progress === true) {
    if (tty) process.stderr.write("\n");
    process.stderr.write(`make-model: wrote ${path}: ${total} bytes (${formatBytes(total)}), ${plan.tensors.length} tensors in ${seconds.toFixed(1)} s\n`);
  }
  return { path, bytes: total, tensors: plan.tensors.length, seconds, spec };
}

/** Hands the parts out, in file order, to `threads` workers as they become free. */
function runWorkers(path: string, seed: number, parts: Part[], threads: number, progress: (bytes: number) => void): Promise<void> {
  return new Promise((resolveAll, rejectAll) => {
    const workers: Worker[] = [];
    let next = 0, running = 0, settled = false;
    const finish = (err?: Error) => {
      if (settled) return;
      settled = true;
      for (const w of workers) void w.terminate();
      if (err) rejectAll(err);
      else resolveAll();
    };
    const feed = (w: Worker) => {
      if (next < parts.length) {
        running++;
        w.postMessage({ path, seed, part: parts[next++]! } satisfies WorkerTask);
      } else if (running === 0) finish();
    };
    for (let i = 0; i < Math.min(threads, parts.length); i++) {
      const w = new Worker(import.meta.path, { workerData: { makeModelWorker: true } });
      workers.push(w);
      w.on("message", (m: WorkerMessage) => {
        if (settled) return;
        if ("progress" in m) progress(m.progress);
        else if ("error" in m) finish(new Error(`make-model worker: ${m.error}`));
        else {
          running--;
          feed(w);
        }
      });
      w.on("error", (e) => finish(e instanceof Error ? e : new Error(String(e))));
      w.on("exit", (code) => finish(new Error(`make-model worker exited (code ${code}) before the model was complete`)));
      feed(w);
    }
  });
}

if (!isMainThread && (workerData as { makeModelWorker?: boolean } | null)?.makeModelWorker) {
  const bufs = new Buffers();
  parentPort!.on("message", (task: WorkerTask) => {
    let fd = -1;
    try {
      fd = openSync(task.path, "r+");
      let pending = 0;
      writePart(fd, task.seed, task.part, bufs, (n) => {
        pending += n;
        if (pending >= 8 << 20) {
          parentPort!.postMessage({ progress: pending } satisfies WorkerMessage);
          pending = 0;
        }
      });
      if (pending) parentPort!.postMessage({ progress: pending } satisfies WorkerMessage);
      closeSync(fd);
      parentPort!.postMessage({ done: true } satisfies WorkerMessage);
    } catch (e) {
      if (fd >= 0) try { closeSync(fd); } catch {}
      parentPort!.postMessage({ error: `${task.part.tensor.name}: ${(e as Error).message}` } satisfies WorkerMessage);
    }
  });
}

// ---- command line ------------------------------------------------------------------------------

const USAGE = `usage: bun scripts/make-model.ts --out F.gguf [options]

  --out F.gguf        output file (required)
  --preset NAME       shape defaults (default mini): ${Object.keys(PRESETS).join(", ")}
  --dim N --ffn N --layers N --heads N --kv-heads N --vocab N --ctx N --head-dim N
                      override the preset's shape (head-dim defaults to dim / heads)
  --type T            matrix type: q4_0 (default), q8_0, f16, f32
  --arch A            llama (default), qwen2 (q/k/v biases), qwen3 (q/k norms)
  --tied              no output.weight: the output reuses token_embd
  --seed S            weight seed (default 0)
  --rope-base X --rms-eps X   override the architecture's defaults
  --threads N         worker threads (default: up to 4 for large models); the file does not depend on it
  --quiet             no progress on stderr

presets:
${Object.entries(PRESETS)
  .map(([k, p]) => `  ${k.padEnd(14)} ${`dim ${p.dim} ffn ${p.ffn} layers ${p.layers} heads ${p.heads}/${p.kvHeads} vocab ${p.vocab} ctx ${p.ctx}`.padEnd(66)} ${p.about}`)
  .join("\n")}
`;

type Kind = "int" | "float" | "string" | "flag";
const FLAGS: Record<string, [keyof MakeModelOptions | "quiet" | "help", Kind]> = {
  "--out": ["out", "string"],
  "--preset": ["preset", "string"],
  "--dim": ["dim", "int"],
  "--ffn": ["ffn", "int"],
  "--layers": ["layers", "int"],
  "--heads": ["heads", "int"],
  "--kv-heads": ["kvHeads", "int"],
  "--vocab": ["vocab", "int"],
  "--ctx": ["ctx", "int"],
  "--head-dim": ["headDim", "int"],
  "--type": ["type", "string"],
  "--arch": ["arch", "string"],
  "--tied": ["tied", "flag"],
  "--seed": ["seed", "int"],
  "--rope-base": ["ropeBase", "float"],
  "--rms-eps": ["rmsEps", "float"],
  "--threads": ["threads", "int"],
  "--quiet": ["quiet", "flag"],
  "--help": ["help", "flag"],
  "-h": ["help", "flag"],
};

/** The command line's options: any of them may be missing (--out too, checked by main). */
export type MakeModelArgs = Partial<MakeModelOptions> & { quiet?: boolean; help?: boolean };

/** Parses the command line into options; a bad option throws a MakeModelError naming it. */
export function parseArgs(args: string[]): MakeModelArgs {
  const o: Record<string, unknown> = {};
  for (let i = 0; i < args.length; i++) {
    let arg = args[i]!;
    let value: string | undefined;
    const eq = arg.indexOf("=");
    if (arg.startsWith("--") && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    const flag = FLAGS[arg];
    if (!flag) {
      if (!arg.startsWith("-")) throw new MakeModelError(arg, "unexpected argument (options start with --)");
      throw new MakeModelError(arg, `unknown option (options: ${Object.keys(FLAGS).filter((f) => f.startsWith("--")).join(" ")})`);
    }
    const [key, kind] = flag;
    if (key in o) throw new MakeModelError(arg, "given twice");
    if (kind === "flag") {
      if (value !== undefined) throw new MakeModelError(arg, "takes no value");
      o[key] = true;
      continue;
    }
    if (value === undefined) {
      value = args[++i];
      if (value === undefined || (value.startsWith("--") && value.length > 2)) throw new MakeModelError(arg, "needs a value");
    }
    if (kind === "int") {
      if (!/^\d+$/.test(value)) throw new MakeModelError(arg, `${JSON.stringify(value)} is not a non-negative integer`);
      o[key] = Number(value);
    } else if (kind === "float") {
      const x = Number(value);
      if (value.trim() === "" || !Number.isFinite(x)) throw new MakeModelError(arg, `${JSON.stringify(value)} is not a number`);
      o[key] = x;
    } else {
      if (value === "") throw new MakeModelError(arg, "is empty");
      o[key] = value;
    }
  }
  return o as MakeModelArgs;
}

function hasOut(a: MakeModelArgs): a is MakeModelArgs & { out: string } {
  return a.out !== undefined;
}

export async function main(args: string[]): Promise<number> {
  let opts: MakeModelArgs & { out: string };
  try {
    const a = parseArgs(args);
    if (a.help) {
      process.stdout.write(USAGE);
      return 0;
    }
    if (!hasOut(a)) throw new MakeModelError("--out", "the output file is required");
    opts = a;
    resolveSpec(opts); // bad shapes fail here, before anything is written
  } catch (e) {
    if (e instanceof MakeModelError) {
      process.stderr.write(`make-model: ${e.message}\n(bun scripts/make-model.ts --help for the options)\n`);
      return 2;
    }
    throw e;
  }
  const { quiet, help: _, ...rest } = opts;
  try {
    const r = await makeModel({ ...rest, progress: !quiet });
    process.stdout.write(`${r.path}\n`);
    return 0;
  } catch (e) {
    if (e instanceof MakeModelError) {
      process.stderr.write(`make-model: ${e.message}\n`);
      return 2;
    }
    process.stderr.write(`make-model: ${(e as Error).message}\n`);
    return 1;
  }
}

if (import.meta.main && isMainThread) process.exitCode = await main(process.argv.slice(2));
