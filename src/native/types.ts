// The kernel interface shared by the native library (ffi.ts) and the pure-TypeScript kernels
// (ts-kernels.ts). Semantics are those of cpp/dairllm.h; sizes are element counts unless named bytes.

/** GGML / GGUF type ids of the types the kernels handle. */
export const enum GGMLType {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q8_0 = 8,
  BF16 = 30,
}

export interface TypeTraits {
  name: string;
  /** values per block */
  blockValues: number;
  /** bytes per block */
  blockBytes: number;
  /** the activation type this weight type's matmul takes */
  activation: GGMLType;
}

/** Mirrors the block structs of cpp/internal.h; test/native.test.ts checks it against the library. */
export const TYPE_TRAITS: ReadonlyMap<GGMLType, TypeTraits> = new Map([
  [GGMLType.F32, { name: "F32", blockValues: 1, blockBytes: 4, activation: GGMLType.F32 }],
  [GGMLType.F16, { name: "F16", blockValues: 1, blockBytes: 2, activation: GGMLType.F16 }],
  [GGMLType.BF16, { name: "BF16", blockValues: 1, blockBytes: 2, activation: GGMLType.BF16 }],
  [GGMLType.Q8_0, { name: "Q8_0", blockValues: 32, blockBytes: 34, activation: GGMLType.Q8_0 }],
  [GGMLType.Q4_0, { name: "Q4_0", blockValues: 32, blockBytes: 18, activation: GGMLType.Q8_0 }],
]);

export function traits(type: GGMLType): TypeTraits {
  const t = TYPE_TRAITS.get(type);
  if (!t) throw new Error(`type id ${type} not supported (supported: F32, F16, BF16, Q8_0, Q4_0)`);
  return t;
}

/** Bytes of n values of a type (n a multiple of its block size). */
export function typeBytes(type: GGMLType, n: number): number {
  const t = traits(type);
  if (n % t.blockValues !== 0) throw new Error(`${t.name}: ${n} values is not a multiple of the block size ${t.blockValues}`);
  return (n / t.blockValues) * t.blockBytes;
}

export const enum RopeMode {
  Norm = 0, // adjacent pairs (x[2j], x[2j+1]): llama
  Neox = 2, // (x[j], x[j + n_rot/2]): qwen2
}

/** Any byte view: weights are mmap views (Uint8Array), activations typed arrays. */
export type Bytes = Uint8Array | Uint16Array | Float32Array | Int8Array;

export interface Kernels {
  /** "native:<variant>" or "typescript" */
  readonly name: string;
  readonly threads: number;
  /** out[t*ldo + (r-r0)] = dot(row r of w, row t of x) for t < nTok, r0 <= r < r1; row r of w starts
   *  at byte r * ldw (ldw 0 or omitted: packed rows; larger: a column slice of a wider matrix) */
  matmul(out: Float32Array, ldo: number, w: Bytes, wtype: GGMLType, x: Bytes, nIn: number, r0: number, r1: number, nTok: number, ldw?: number): void;
  rmsnorm(out: Float32Array, x: Float32Array, w: Float32Array | null, n: number, nRows: number, eps: number): void;
  softmax(out: Float32Array, x: Float32Array, n: number, nRows: number): void;
  silu(out: Float32Array, x: Float32Array, n: number): void;
  gelu(out: Float32Array, x: Float32Array, n: number): void;
  swiglu(out: Float32Array, gate: Float32Array, up: Float32Array, n: number): void;
  add(out: Float32Array, a: Float32Array, b: Float32Array, n: number): void;
  mul(out: Float32Array, a: Float32Array, b: Float32Array, n: number): void;
  scale(out: Float32Array, x: Float32Array, s: number, n: number): void;
  rope(out: Float32Array, x: Float32Array, pos: Int32Array, freqs: Float32Array, nTok: number, nHeads: number, headDim: number, nRot: number, mode: RopeMode): void;
  attention(out: Float32Array, q: Float32Array, k: Float32Array | Uint16Array, v: Float32Array | Uint16Array, kvType: GGMLType, pos: Int32Array, nQ: number, nHeads: number, nKvHeads: number, headDim: number, kvStride: number, scale: number): void;
  /** n floats -> n/32 Q8_0 blocks (34 bytes each) */
  quantizeQ8_0(out: Uint8Array, x: Float32Array, n: number): void;
  dequantize(out: Float32Array, x: Bytes, type: GGMLType, n: number): void;
  f32ToF16(out: Uint16Array, x: Float32Array, n: number): void;
  f16ToF32(out: Float32Array, x: Uint16Array, n: number): void;
  f32ToBf16(out: Uint16Array, x: Float32Array, n: number): void;
  /** Drops the pages lying wholly inside `view` from this process's memory (they stay in the page
   *  cache; a later read faults them in again). Only for views of a read-only file mapping: other
   *  memory would read back as zeros. False when these kernels cannot (the TypeScript ones). */
  releaseFilePages(view: Uint8Array): boolean;
  /** dst = `rows` runs of `rowBytes` bytes of src, the r-th at r * srcStride (a column slice of a
   *  matrix into rows of its own; srcStride >= rowBytes). */
  copyRows(dst: Uint8Array, src: Uint8Array, rows: number, rowBytes: number, srcStride: number): void;
  /** Reads `view` into the CPU's caches (weights about to be used; src/cluster/warm.ts), up to its last
   *  whole 256 bytes. False when these kernels cannot (the TypeScript ones). */
  warm(view: Uint8Array): boolean;
}
