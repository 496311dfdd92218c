// Pure-TypeScript kernels: the fallback when the native library cannot load, and the tests' oracle.
//
// Every kernel computes what the scalar reference of cpp/kernels.c computes (the `DL_SCALAR` build),
// in the same operation order, with float32 rounding (Math.fround) wherever C rounds to float32.
// The fp16 / bf16 conversions follow the bit recipes of cpp/internal.h exactly (dl_h2f, dl_f2h,
// dl_bf2f, dl_f2bf), and quantizeQ8_0 is bit-identical to k_quantize_q8_0.
//
// Arguments are checked like the C entry points (dairllm.h): a problem throws an Error whose message
// starts with the kernel name ("matmul: row range [5, 3) is empty").
//
// Byte views (weights, Q8_0 activations) may start at any byteOffset; blocks are read byte by byte, so
// no alignment is assumed. Typed-array layouts assume a little-endian host (as GGUF and the C library do).

import { type Bytes, type GGMLType, type Kernels, type RopeMode, TYPE_TRAITS, type TypeTraits } from "./types";

// Local copies of the type ids (types.ts declares them as a const enum).
const T_F32 = 0;
const T_F16 = 1;
const T_Q4_0 = 2;
const T_Q8_0 = 8;
const T_BF16 = 30;

const QK = 32; // values per Q8_0 / Q4_0 block
const Q8_0_BYTES = 34;
const Q4_0_BYTES = 18;


const fround = Math.fround;

// ---- scalar helpers ---------------------------------------------------------------------------

/** Scratch for float32 <-> bits casts (one element, reused; never held across calls). */
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** Round to nearest integer, ties to even (C's nearbyintf / rintf in the default rounding mode).
 *  Keeps -0 (roundHalfEven(-0.5) is -0), infinities and NaN. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x); // ties toward +infinity
  if (r - x === 0.5 && r % 2 !== 0) return r - 1;
  return r;
}

/** dl_h2f as float32 bits. */
function h2fBitsOf(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  const man = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (man << 13)) >>> 0; // inf / nan
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (man << 13)) >>> 0;
  if (man === 0) return sign >>> 0;
  // subnormal: man * 2^-24, exact in float32
  scratchF32[0] = sign ? -(man * 5.9604644775390625e-8) : man * 5.9604644775390625e-8;
  return scratchU32[0]!;
}

let h2fF32: Float32Array | null = null;
let h2fU32: Uint32Array | null = null;

/** The 65536-entry fp16 -> float32 table (built once, on first use). */
function halfTable(): Float32Array {
  if (h2fF32 === null) {
    const u = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) u[h] = h2fBitsOf(h);
    h2fU32 = u;
    h2fF32 = new Float32Array(u.buffer);
  }
  return h2fF32;
}

/** The same table as float32 bit patterns (NaN payloads kept). */
function halfBitsTable(): Uint32Array {
  halfTable();
  return h2fU32 as Uint32Array;
}

let bf2fF32: Float32Array | null = null;

/** The 65536-entry bf16 -> float32 table (built once, on first use). */
function bf16Table(): Float32Array {
  if (bf2fF32 === null) {
    const u = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) u[h] = (h << 16) >>> 0;
    bf2fF32 = new Float32Array(u.buffer);
  }
  return bf2fF32;
}

/** dl_f2h on float32 bits u. */
function f2hFromBits(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const a = u & 0x7fffffff;
  if (a >= 0x7f800000) return sign | (a > 0x7f800000 ? 0x7e00 | ((a >>> 13) & 0x3ff) : 0x7c00);
  if (a >= 0x477ff000) return sign | 0x7c00; // rounds to >= 65520: overflow to inf
  if (a >= 0x38800000) {
    // normal half
    const mantOdd = (a >>> 13) & 1;
    const r = a + 0xfff + mantOdd;
    return sign | ((r - 0x38000000) >>> 13);
  }
  // subnormal half (or zero): value / 2^-24 rounded to nearest even
  scratchU32[0] = a;
  return sign | roundHalfEven(scratchF32[0]! * 16777216);
}

/** dl_f2bf on float32 bits u. */
function f2bfFromBits(u: number): number {
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 64) & 0xffff; // quiet NaN
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** float32 -> fp16 bits: IEEE round to nearest even (subnormals included), overflow to inf, NaN kept
 *  quiet. x is first rounded to float32. */
export function f32ToF16Bits(x: number): number {
  scratchF32[0] = x;
  return f2hFromBits(scratchU32[0]!);
}

/** fp16 bits -> float32 value (exact). */
export function f16BitsToF32(h: number): number {
  return halfTable()[h & 0xffff]!;
}

/** float32 -> bf16 bits: round to nearest even, NaN kept quiet. x is first rounded to float32. */
export function f32ToBf16Bits(x: number): number {
  scratchF32[0] = x;
  return f2bfFromBits(scratchU32[0]!);
}

/** bf16 bits -> float32 value (exact). */
export function bf16BitsToF32(h: number): number {
  scratchU32[0] = (h & 0xffff) << 16;
  return scratchF32[0]!;
}

// ---- argument checks --------------------------------------------------------------------------

function fail(k: string, msg: string): never {
  throw new Error(`${k}: ${msg}`);
}

/** An integer argument >= min. */
function int(k: string, name: string, v: number, min: number): void {
  if (typeof v !== "number" || !Number.isSafeInteger(v)) fail(k, `${name} ${String(v)} is not an integer`);
  if (v < min) fail(k, min === 0 ? `${name} ${v} is negative` : `${name} ${v} must be at least ${min}`);
}

/** A required typed-array argument. */
function view(k: string, name: string, v: unknown): void {
  if (v === null || v === undefined) fail(k, `${name} is null`);
  if (!ArrayBuffer.isView(v) || v instanceof DataView) fail(k, `${name} is not a typed array`);
}

function typed<T>(k: string, name: string, v: unknown, ctor: { new (...args: never[]): T; name: string }): void {
  view(k, name, v);
  if (!(v instanceof ctor)) fail(k, `${name} must be a ${ctor.name} (got ${(v as object).constructor.name})`);
}

/** A buffer holds at least `want` units. */
function need(k: string, name: string, have: number, want: number, unit: string): void {
  if (have < want) fail(k, `${name} holds ${have} ${unit}, the sizes given need ${want}`);
}

function typeTraits(k: string, type: number): TypeTraits {
  const t = typeof type === "number" ? TYPE_TRAITS.get(type) : undefined;
  if (!t) fail(k, `type id ${String(type)} is not supported (supported: F32=0, F16=1, Q4_0=2, Q8_0=8, BF16=30)`);
  return t;
}

// ---- views (no alignment assumed) -------------------------------------------------------------

function u8(v: ArrayBufferView): Uint8Array {
  return v instanceof Uint8Array ? v : new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

function i8(v: ArrayBufferView): Int8Array {
  return v instanceof Int8Array ? v : new Int8Array(v.buffer, v.byteOffset, v.byteLength);
}

/** The bytes of v as a Float32Array (copied when the bytes are not 4-byte aligned). */
function f32(v: ArrayBufferView): Float32Array {
  if (v instanceof Float32Array) return v;
  const n = Math.floor(v.byteLength / 4);
  if (v.byteOffset % 4 === 0) return new Float32Array(v.buffer, v.byteOffset, n);
  return new Float32Array(u8(v).slice(0, n * 4).buffer);
}

/** The bytes of v as a Uint16Array (copied when the bytes are not 2-byte aligned). */
function u16(v: ArrayBufferView): Uint16Array {
  if (v instanceof Uint16Array) return v;
  const n = Math.floor(v.byteLength / 2);
  if (v.byteOffset % 2 === 0) return new Uint16Array(v.buffer, v.byteOffset, n);
  return new Uint16Array(u8(v).slice(0, n * 2).buffer);
}

/** The float32 bit patterns of a Float32Array (same memory). */
function bitsOf(v: Float32Array): Uint32Array {
  return new Uint32Array(v.buffer, v.byteOffset, v.length);
}

// ---- matmul -----------------------------------------------------------------------------------

function matmulF32(out: Float32Array, ldo: number, w: Float32Array, ldw: number, x: Float32Array, nIn: number, r0: number, r1: number, nTok: number): void {
  for (let r = r0; r < r1; r++) {
    const wo = r * (ldw / 4);
    for (let t = 0; t < nTok; t++) {
      const xo = t * nIn;
      let s = 0;
      for (let i = 0; i < nIn; i++) s = fround(s + fround(w[wo + i]! * x[xo + i]!));
      out[t * ldo + (r - r0)] = s;
    }
  }
}

/** F16 (table = fp16 table) or BF16 (table = bf16 table) rows against rows of the same type. */
function matmulHalf(out: Float32Array, ldo: number, w: Uint16Array, ldw: number, x: Uint16Array, nIn: number, r0: number, r1: number, nTok: number, table: Float32Array): void {
  for (let r = r0; r < r1; r++) {
    const wo = r * (ldw / 2);
    for (let t = 0; t < nTok; t++) {
      const xo = t * nIn;
      let s = 0;
      for (let i = 0; i < nIn; i++) s = fround(s + fround(table[w[wo + i]!]! * table[x[xo + i]!]!));
      out[t * ldo + (r - r0)] = s;
    }
  }
}

/** The fp32 scales of nTok rows of nb Q8_0 blocks. */
function q8Scales(xb: Uint8Array, nb: number, nTok: number, H: Float32Array): Float32Array {
  const d = new Float32Array(nTok * nb);
  for (let i = 0, o = 0; i < nTok * nb; i++, o += Q8_0_BYTES) d[i] = H[xb[o]! | (xb[o + 1]! << 8)]!;
  return d;
}

function matmulQ8_0(out: Float32Array, ldo: number, w: Bytes, ldw: number, x: Bytes, nIn: number, r0: number, r1: number, nTok: number): void {
  const H = halfTable();
  const nb = nIn / QK;
  const rowBytes = nb * Q8_0_BYTES;
  const wb = u8(w), wq = i8(w), xb = u8(x), xq = i8(x);
  const xd = q8Scales(xb, nb, nTok, H);
  for (let r = r0; r < r1; r++) {
    const wo = r * ldw;
    for (let t = 0; t < nTok; t++) {
      let s = 0;
      let wp = wo;
      let xp = t * rowBytes;
      const xdo = t * nb;
      for (let b = 0; b < nb; b++, wp += Q8_0_BYTES, xp += Q8_0_BYTES) {
        const dw = H[wb[wp]! | (wb[wp + 1]! << 8)]!;
        const qw = wp + 2, qx = xp + 2;
        let acc = 0;
        for (let j = 0; j < QK; j++) acc += wq[qw + j]! * xq[qx + j]!;
        s = fround(s + fround(fround(dw * xd[xdo + b]!) * acc));
      }
      out[t * ldo + (r - r0)] = s;
    }
  }
}

function matmulQ4_0(out: Float32Array, ldo: number, w: Bytes, ldw: number, x: Bytes, nIn: number, r0: number, r1: number, nTok: number): void {
  const H = halfTable();
  const nb = nIn / QK;
  const xRowBytes = nb * Q8_0_BYTES;
  const wb = u8(w), xb = u8(x), xq = i8(x);
  const xd = q8Scales(xb, nb, nTok, H);
  for (let r = r0; r < r1; r++) {
    const wo = r * ldw;
    for (let t = 0; t < nTok; t++) {
      let s = 0;
      let wp = wo;
      let xp = t * xRowBytes;
      const xdo = t * nb;
      for (let b = 0; b < nb; b++, wp += Q4_0_BYTES, xp += Q8_0_BYTES) {
        const dw = H[wb[wp]! | (wb[wp + 1]! << 8)]!;
        const qw = wp + 2, qx = xp + 2;
        let acc = 0;
        for (let j = 0; j < QK / 2; j++) {
          const q = wb[qw + j]!;
          acc += ((q & 15) - 8) * xq[qx + j]! + ((q >>> 4) - 8) * xq[qx + j + QK / 2]!;
        }
        s = fround(s + fround(fround(dw * xd[xdo + b]!) * acc));
      }
      out[t * ldo + (r - r0)] = s;
    }
  }
}

// ---- the kernels --------------------------------------------------------------------------------

const GELU_C = fround(0.7978845608028654); // sqrt(2/pi)
const GELU_A = fround(0.044715);

function matmul(out: Float32Array, ldo: number, w: Bytes, wtype: GGMLType, x: Bytes, nIn: number, r0: number, r1: number, nTok: number, ldw = 0): void {
  const K = "matmul";
  typed(K, "out", out, Float32Array);
  view(K, "w", w);
  view(K, "x", x);
  const wt = typeTraits(K, wtype);
  const xt = TYPE_TRAITS.get(wt.activation)!;
  int(K, "n_in", nIn, 1);
  if (nIn % wt.blockValues !== 0) fail(K, `n_in ${nIn} is not a multiple of the ${wt.name} block size ${wt.blockValues}`);
  int(K, "r0", r0, 0);
  int(K, "r1", r1, 0);
  if (r1 <= r0) fail(K, `row range [${r0}, ${r1}) is empty`);
  int(K, "ldo", ldo, 0);
  if (ldo < r1 - r0) fail(K, `ldo ${ldo} is less than the ${r1 - r0} rows of the range [${r0}, ${r1})`);
  int(K, "n_tok", nTok, 0);
  if (nTok === 0) return;
  const rowBytes = (nIn / wt.blockValues) * wt.blockBytes;
  const xRowBytes = (nIn / xt.blockValues) * xt.blockBytes;
  int(K, "ldw", ldw, 0);
  if (ldw === 0) ldw = rowBytes;
  if (ldw < rowBytes || ldw % wt.blockBytes !== 0) fail(K, `ldw ${ldw} is not a row stride for rows of ${rowBytes} bytes`);
  need(K, `w (${wt.name}, ${r1} rows of ${nIn})`, w.byteLength, (r1 - 1) * ldw + rowBytes, "bytes");
  need(K, `x (${xt.name}, ${nTok} rows of ${nIn})`, x.byteLength, nTok * xRowBytes, "bytes");
  need(K, "out", out.length, (nTok - 1) * ldo + (r1 - r0), "floats");
  switch (wtype as number) {
    case T_F32:
      matmulF32(out, ldo, f32(w), ldw, f32(x), nIn, r0, r1, nTok);
      break;
    case T_F16:
      matmulHalf(out, ldo, u16(w), ldw, u16(x), nIn, r0, r1, nTok, halfTable());
      break;
    case T_BF16:
      matmulHalf(out, ldo, u16(w), ldw, u16(x), nIn, r0, r1, nTok, bf16Table());
      break;
    case T_Q8_0:
      matmulQ8_0(out, ldo, w, ldw, x, nIn, r0, r1, nTok);
      break;
    case T_Q4_0:
      matmulQ4_0(out, ldo, w, ldw, x, nIn, r0, r1, nTok);
      break;
  }
}

function rmsnorm(out: Float32Array, x: Float32Array, w: Float32Array | null, n: number, nRows: number, eps: number): void {
  const K = "rmsnorm";
  typed(K, "out", out, Float32Array);
  typed(K, "x", x, Float32Array);
  if (w !== null && w !== undefined) typed(K, "w", w, Float32Array);
  int(K, "n", n, 1);
  int(K, "n_rows", nRows, 0);
  if (typeof eps !== "number") fail(K, `eps ${String(eps)} is not a number`);
  need(K, "x", x.length, n * nRows, "floats");
  need(K, "out", out.length, n * nRows, "floats");
  if (w) need(K, "w", w.length, n, "floats");
  const e = fround(eps);
  for (let row = 0; row < nRows; row++) {
    const o = row * n;
    let sum = 0; // double
    for (let i = 0; i < n; i++) {
      const v = x[o + i]!;
      sum += fround(v * v);
    }
    const mean = fround(sum / n);
    const scale = fround(1 / fround(Math.sqrt(fround(mean + e))));
    if (w) {
      for (let i = 0; i < n; i++) out[o + i] = fround(x[o + i]! * scale) * w[i]!;
    } else {
      for (let i = 0; i < n; i++) out[o + i] = x[o + i]! * scale;
    }
  }
}

function softmax(out: Float32Array, x: Float32Array, n: number, nRows: number): void {
  const K = "softmax";
  typed(K, "out", out, Float32Array);
  typed(K, "x", x, Float32Array);
  int(K, "n", n, 1);
  int(K, "n_rows", nRows, 0);
  need(K, "x", x.length, n * nRows, "floats");
  need(K, "out", out.length, n * nRows, "floats");
  for (let row = 0; row < nRows; row++) {
    const o = row * n;
    let m = -Infinity;
    for (let i = 0; i < n; i++) {
      const v = x[o + i]!;
      if (v > m) m = v; // NaN never wins, like the C ternary
    }
    let sum = 0; // double
    for (let i = 0; i < n; i++) {
      const e = fround(Math.exp(fround(x[o + i]! - m)));
      out[o + i] = e;
      sum += e;
    }
    const inv = fround(1 / sum);
    for (let i = 0; i < n; i++) out[o + i] = out[o + i]! * inv;
  }
}

function unary(K: string, out: Float32Array, x: Float32Array, n: number): void {
  typed(K, "out", out, Float32Array);
  typed(K, "x", x, Float32Array);
  int(K, "n", n, 0);
  need(K, "x", x.length, n, "floats");
  need(K, "out", out.length, n, "floats");
}

function binary(K: string, out: Float32Array, a: Float32Array, b: Float32Array, n: number, an: string, bn: string): void {
  typed(K, "out", out, Float32Array);
  typed(K, an, a, Float32Array);
  typed(K, bn, b, Float32Array);
  int(K, "n", n, 0);
  need(K, an, a.length, n, "floats");
  need(K, bn, b.length, n, "floats");
  need(K, "out", out.length, n, "floats");
}

function silu(out: Float32Array, x: Float32Array, n: number): void {
  unary("silu", out, x, n);
  for (let i = 0; i < n; i++) {
    const v = x[i]!;
    out[i] = v / fround(1 + fround(Math.exp(-v)));
  }
}

function gelu(out: Float32Array, x: Float32Array, n: number): void {
  unary("gelu", out, x, n);
  for (let i = 0; i < n; i++) {
    const v = x[i]!;
    // 0.5f * v * (1.0f + tanhf(c * v * (1.0f + 0.044715f * v * v))), left to right
    const inner = fround(1 + fround(fround(GELU_A * v) * v));
    const th = fround(Math.tanh(fround(fround(GELU_C * v) * inner)));
    out[i] = fround(0.5 * v) * fround(1 + th);
  }
}

function swiglu(out: Float32Array, gate: Float32Array, up: Float32Array, n: number): void {
  binary("swiglu", out, gate, up, n, "gate", "up");
  for (let i = 0; i < n; i++) {
    const g = gate[i]!;
    out[i] = fround(g / fround(1 + fround(Math.exp(-g)))) * up[i]!;
  }
}

function add(out: Float32Array, a: Float32Array, b: Float32Array, n: number): void {
  binary("add", out, a, b, n, "a", "b");
  for (let i = 0; i < n; i++) out[i] = a[i]! + b[i]!;
}

function mul(out: Float32Array, a: Float32Array, b: Float32Array, n: number): void {
  binary("mul", out, a, b, n, "a", "b");
  for (let i = 0; i < n; i++) out[i] = a[i]! * b[i]!;
}

function scale(out: Float32Array, x: Float32Array, s: number, n: number): void {
  unary("scale", out, x, n);
  if (typeof s !== "number") fail("scale", `s ${String(s)} is not a number`);
  const sf = fround(s);
  for (let i = 0; i < n; i++) out[i] = x[i]! * sf;
}

function rope(out: Float32Array, x: Float32Array, pos: Int32Array, freqs: Float32Array, nTok: number, nHeads: number, headDim: number, nRot: number, mode: RopeMode): void {
  const K = "rope";
  typed(K, "out", out, Float32Array);
  typed(K, "x", x, Float32Array);
  typed(K, "pos", pos, Int32Array);
  typed(K, "freqs", freqs, Float32Array);
  int(K, "n_tok", nTok, 0);
  int(K, "n_heads", nHeads, 1);
  int(K, "head_dim", headDim, 1);
  int(K, "n_rot", nRot, 0);
  if (nRot % 2 !== 0) fail(K, `n_rot ${nRot} is odd`);
  if (nRot > headDim) fail(K, `n_rot ${nRot} is larger than head_dim ${headDim}`);
  const m = mode as number;
  if (m !== 0 && m !== 2) fail(K, `mode ${String(mode)} is neither DL_ROPE_NORM (0) nor DL_ROPE_NEOX (2)`);
  const neox = m === 2;
  const half = nRot / 2;
  const rowLen = nHeads * headDim;
  need(K, "pos", pos.length, nTok, "positions");
  need(K, "freqs", freqs.length, half, "floats");
  need(K, "x", x.length, nTok * rowLen, "floats");
  need(K, "out", out.length, nTok * rowLen, "floats");
  for (let t = 0; t < nTok; t++) {
    const base = t * rowLen;
    if (out !== x) out.set(x.subarray(base, base + rowLen), base);
    const p = fround(pos[t]!);
    for (let j = 0; j < half; j++) {
      const angle = fround(p * freqs[j]!);
      const c = fround(Math.cos(angle));
      const s = fround(Math.sin(angle));
      const ia = base + (neox ? j : 2 * j);
      const ib = base + (neox ? j + half : 2 * j + 1);
      for (let h = 0, o = 0; h < nHeads; h++, o += headDim) {
        const a = out[ia + o]!;
        const b = out[ib + o]!;
        out[ia + o] = fround(a * c) - fround(b * s);
        out[ib + o] = fround(a * s) + fround(b * c);
      }
    }
  }
}

function attention(out: Float32Array, q: Float32Array, k: Float32Array | Uint16Array, v: Float32Array | Uint16Array, kvType: GGMLType, pos: Int32Array, nQ: number, nHeads: number, nKvHeads: number, headDim: number, kvStride: number, scale: number): void {
  const K = "attention";
  typed(K, "out", out, Float32Array);
  typed(K, "q", q, Float32Array);
  view(K, "k", k);
  view(K, "v", v);
  typed(K, "pos", pos, Int32Array);
  const kt = kvType as number;
  if (kt !== T_F32 && kt !== T_F16) fail(K, `kv_type ${String(kvType)} is not supported (F32=0 or F16=1)`);
  int(K, "n_q", nQ, 0);
  int(K, "n_heads", nHeads, 1);
  int(K, "n_kv_heads", nKvHeads, 1);
  int(K, "head_dim", headDim, 1);
  int(K, "kv_stride", kvStride, 1);
  if (typeof scale !== "number") fail(K, `scale ${String(scale)} is not a number`);
  if (nHeads % nKvHeads !== 0) fail(K, `n_heads ${nHeads} is not a multiple of n_kv_heads ${nKvHeads}`);
  if (kvStride < nKvHeads * headDim) fail(K, `kv_stride ${kvStride} is less than n_kv_heads * head_dim = ${nKvHeads * headDim}`);
  need(K, "pos", pos.length, nQ, "positions");
  const rowLen = nHeads * headDim;
  need(K, "q", q.length, nQ * rowLen, "floats");
  need(K, "out", out.length, nQ * rowLen, "floats");
  let maxPos = -1;
  for (let t = 0; t < nQ; t++) {
    const p = pos[t]!;
    if (p < 0) fail(K, `pos[${t}] ${p} is negative`);
    if (p > maxPos) maxPos = p;
  }
  if (nQ === 0) return;
  const f16 = kt === T_F16;
  const kf = f16 ? null : f32(k);
  const vf = f16 ? null : f32(v);
  const kh = f16 ? u16(k) : null;
  const vh = f16 ? u16(v) : null;
  const unit = f16 ? "F16 values" : "floats";
  const needKv = maxPos * kvStride + nKvHeads * headDim;
  need(K, "k", f16 ? (kh as Uint16Array).length : (kf as Float32Array).length, needKv, unit);
  need(K, "v", f16 ? (vh as Uint16Array).length : (vf as Float32Array).length, needKv, unit);
  const H = halfTable();
  const sc = fround(scale);
  const group = nHeads / nKvHeads;
  for (let t = 0; t < nQ; t++) {
    const nKv = pos[t]! + 1;
    for (let h = 0; h < nHeads; h++) {
      const qo = (t * nHeads + h) * headDim;
      const ko = Math.floor(h / group) * headDim;
      let m = -Infinity;
      let l = 0;
      for (let d = 0; d < headDim; d++) out[qo + d] = 0;
      for (let p = 0; p < nKv; p++) {
        const kvo = p * kvStride + ko;
        let s = 0;
        if (f16) {
          const kp = kh as Uint16Array;
          for (let d = 0; d < headDim; d++) s = fround(s + fround(q[qo + d]! * H[kp[kvo + d]!]!));
        } else {
          const kp = kf as Float32Array;
          for (let d = 0; d < headDim; d++) s = fround(s + fround(q[qo + d]! * kp[kvo + d]!));
        }
        s = fround(s * sc);
        if (s > m) {
          const c = fround(Math.exp(fround(m - s))); // 0 on the first position (m = -inf)
          for (let d = 0; d < headDim; d++) out[qo + d] = out[qo + d]! * c;
          l = fround(l * c);
          m = s;
        }
        const e = fround(Math.exp(fround(s - m)));
        l = fround(l + e);
        if (f16) {
          const vp = vh as Uint16Array;
          for (let d = 0; d < headDim; d++) out[qo + d] = out[qo + d]! + fround(e * H[vp[kvo + d]!]!);
        } else {
          const vp = vf as Float32Array;
          for (let d = 0; d < headDim; d++) out[qo + d] = out[qo + d]! + fround(e * vp[kvo + d]!);
        }
      }
      const inv = l > 0 ? fround(1 / l) : 0;
      for (let d = 0; d < headDim; d++) out[qo + d] = out[qo + d]! * inv;
    }
  }
}

function quantizeQ8_0(out: Uint8Array, x: Float32Array, n: number): void {
  const K = "quantize_q8_0";
  view(K, "out", out);
  typed(K, "x", x, Float32Array);
  int(K, "n", n, 0);
  if (n % QK !== 0) fail(K, `n ${n} is not a multiple of the Q8_0 block size ${QK}`);
  const nb = n / QK;
  need(K, "x", x.length, n, "floats");
  need(K, "out", out.byteLength, nb * Q8_0_BYTES, "bytes");
  const ob = u8(out);
  const oq = i8(out);
  for (let b = 0; b < nb; b++) {
    const xo = b * QK;
    let amax = 0;
    for (let j = 0; j < QK; j++) {
      const a = Math.abs(x[xo + j]!);
      if (a > amax) amax = a; // NaN never wins, like the C ternary
    }
    const id = amax !== 0 ? fround(127 / amax) : 0;
    const d = f32ToF16Bits(fround(amax / 127));
    const o = b * Q8_0_BYTES;
    ob[o] = d & 0xff;
    ob[o + 1] = d >>> 8;
    // |x * id| <= 127 for finite amax; NaN stores 0 (what x86 and arm conversions give in C)
    for (let j = 0; j < QK; j++) oq[o + 2 + j] = roundHalfEven(fround(x[xo + j]! * id));
  }
}

function dequantize(out: Float32Array, x: Bytes, type: GGMLType, n: number): void {
  const K = "dequantize";
  typed(K, "out", out, Float32Array);
  view(K, "x", x);
  const tt = typeTraits(K, type);
  int(K, "n", n, 0);
  if (n % tt.blockValues !== 0) fail(K, `n ${n} is not a multiple of the ${tt.name} block size ${tt.blockValues}`);
  need(K, `x (${tt.name})`, x.byteLength, (n / tt.blockValues) * tt.blockBytes, "bytes");
  need(K, "out", out.length, n, "floats");
  const xb = u8(x);
  switch (type as number) {
    case T_F32:
      new Uint8Array(out.buffer, out.byteOffset, n * 4).set(xb.subarray(0, n * 4));
      break;
    case T_F16: {
      const HB = halfBitsTable();
      const ou = bitsOf(out);
      for (let i = 0; i < n; i++) ou[i] = HB[xb[2 * i]! | (xb[2 * i + 1]! << 8)]!;
      break;
    }
    case T_BF16: {
      const ou = bitsOf(out);
      for (let i = 0; i < n; i++) ou[i] = (xb[2 * i]! << 16) | (xb[2 * i + 1]! << 24);
      break;
    }
    case T_Q8_0: {
      const H = halfTable();
      const xq = i8(x);
      for (let b = 0, o = 0; b < n / QK; b++, o += Q8_0_BYTES) {
        const d = H[xb[o]! | (xb[o + 1]! << 8)]!;
        for (let j = 0; j < QK; j++) out[b * QK + j] = d * xq[o + 2 + j]!;
      }
      break;
    }
    case T_Q4_0: {
      const H = halfTable();
      for (let b = 0, o = 0; b < n / QK; b++, o += Q4_0_BYTES) {
        const d = H[xb[o]! | (xb[o + 1]! << 8)]!;
        for (let j = 0; j < QK / 2; j++) {
          const q = xb[o + 2 + j]!;
          out[b * QK + j] = d * ((q & 15) - 8);
          out[b * QK + j + QK / 2] = d * ((q >>> 4) - 8);
        }
      }
      break;
    }
  }
}

function f32ToF16(out: Uint16Array, x: Float32Array, n: number): void {
  const K = "f32_to_f16";
  typed(K, "out", out, Uint16Array);
  typed(K, "x", x, Float32Array);
  int(K, "n", n, 0);
  need(K, "x", x.length, n, "floats");
  need(K, "out", out.length, n, "values");
  const xu = bitsOf(x); // bit patterns, so NaN payloads are kept
  for (let i = 0; i < n; i++) out[i] = f2hFromBits(xu[i]!);
}

function f16ToF32(out: Float32Array, x: Uint16Array, n: number): void {
  const K = "f16_to_f32";
  typed(K, "out", out, Float32Array);
  typed(K, "x", x, Uint16Array);
  int(K, "n", n, 0);
  need(K, "x", x.length, n, "values");
  need(K, "out", out.length, n, "floats");
  const HB = halfBitsTable();
  const ou = bitsOf(out); // bit patterns, so NaN payloads are kept
  for (let i = 0; i < n; i++) ou[i] = HB[x[i]!]!;
}

function f32ToBf16(out: Uint16Array, x: Float32Array, n: number): void {
  const K = "f32_to_bf16";
  typed(K, "out", out, Uint16Array);
  typed(K, "x", x, Float32Array);
  int(K, "n", n, 0);
  need(K, "x", x.length, n, "floats");
  need(K, "out", out.length, n, "values");
  const xu = bitsOf(x);
  for (let i = 0; i < n; i++) out[i] = f2bfFromBits(xu[i]!);
}

/** The pure-TypeScript kernels (single-threaded). */
export function createTsKernels(): Kernels {
  return {
    name: "typescript",
    threads: 1,
    matmul,
    rmsnorm,
    softmax,
    silu,
    gelu,
    swiglu,
    add,
    mul,
    scale,
    rope,
    attention,
    quantizeQ8_0,
    dequantize,
    f32ToF16,
    f16ToF32,
    f32ToBf16,
    releaseFilePages: () => false, // no madvise without the native library: the pages stay mapped
    copyRows(dst, src, rows, rowBytes, srcStride) {
      if (!(srcStride >= rowBytes)) throw new Error(`copyRows: the source stride ${srcStride} is below the row's ${rowBytes} bytes`);
      if (rows === 0 || rowBytes === 0) return;
      if (dst.byteLength < rows * rowBytes || src.byteLength < (rows - 1) * srcStride + rowBytes) throw new Error(`copyRows: ${rows} rows of ${rowBytes} bytes (stride ${srcStride}) do not fit dst (${dst.byteLength}) and src (${src.byteLength})`);
      for (let r = 0; r < rows; r++) dst.set(src.subarray(r * srcStride, r * srcStride + rowBytes), r * rowBytes);
    },
    warm: () => false, // reading ahead pays only at native speed
  };
}
