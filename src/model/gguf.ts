// GGUF reader (v2 and v3). The file is memory-mapped (Bun.mmap) and tensors are zero-copy views
// into it. A GGUF is untrusted input: every count, length, offset, type id and dimension is checked
// against the file before it is used, and a bad file gets a GGUFError naming the field and the value.
import { existsSync, readFileSync, type Stats, statSync } from "node:fs";

export class GGUFError extends Error {
  constructor(path: string, message: string) {
    super(`${path}: ${message}`);
    this.name = "GGUFError";
  }
}

/** Metadata value types of the GGUF spec. */
export const enum GGUFValueType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

const SCALAR_SIZE: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
const VALUE_TYPE_NAMES = ["UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"];

export type GGUFScalar = number | bigint | boolean | string;
export interface GGUFArray {
  readonly itemType: GGUFValueType;
  /** numeric arrays as typed arrays (zero-copy where aligned), strings as string[], nested as GGUFArray[] */
  readonly values: ArrayLike<number> | ArrayLike<bigint> | string[] | boolean[] | GGUFArray[];
  readonly length: number;
}
export type GGUFValue = GGUFScalar | GGUFArray;

/** ggml type ids: name, values per block, bytes per block (0 = size not known to dairllm). */
export const GGML_TYPES: Record<number, { name: string; blockValues: number; blockBytes: number }> = {
  0: { name: "F32", blockValues: 1, blockBytes: 4 },
  1: { name: "F16", blockValues: 1, blockBytes: 2 },
  2: { name: "Q4_0", blockValues: 32, blockBytes: 18 },
  3: { name: "Q4_1", blockValues: 32, blockBytes: 20 },
  6: { name: "Q5_0", blockValues: 32, blockBytes: 22 },
  7: { name: "Q5_1", blockValues: 32, blockBytes: 24 },
  8: { name: "Q8_0", blockValues: 32, blockBytes: 34 },
  9: { name: "Q8_1", blockValues: 32, blockBytes: 36 },
  10: { name: "Q2_K", blockValues: 256, blockBytes: 84 },
  11: { name: "Q3_K", blockValues: 256, blockBytes: 110 },
  12: { name: "Q4_K", blockValues: 256, blockBytes: 144 },
  13: { name: "Q5_K", blockValues: 256, blockBytes: 176 },
  14: { name: "Q6_K", blockValues: 256, blockBytes: 210 },
  15: { name: "Q8_K", blockValues: 256, blockBytes: 292 },
  16: { name: "IQ2_XXS", blockValues: 256, blockBytes: 0 },
  17: { name: "IQ2_XS", blockValues: 256, blockBytes: 0 },
  18: { name: "IQ3_XXS", blockValues: 256, blockBytes: 0 },
  19: { name: "IQ1_S", blockValues: 256, blockBytes: 0 },
  20: { name: "IQ4_NL", blockValues: 32, blockBytes: 18 },
  21: { name: "IQ3_S", blockValues: 256, blockBytes: 0 },
  22: { name: "IQ2_S", blockValues: 256, blockBytes: 0 },
  23: { name: "IQ4_XS", blockValues: 256, blockBytes: 136 },
  24: { name: "I8", blockValues: 1, blockBytes: 1 },
  25: { name: "I16", blockValues: 1, blockBytes: 2 },
  26: { name: "I32", blockValues: 1, blockBytes: 4 },
  27: { name: "I64", blockValues: 1, blockBytes: 8 },
  28: { name: "F64", blockValues: 1, blockBytes: 8 },
  29: { name: "IQ1_M", blockValues: 256, blockBytes: 0 },
  30: { name: "BF16", blockValues: 1, blockBytes: 2 },
  34: { name: "TQ1_0", blockValues: 256, blockBytes: 0 },
  35: { name: "TQ2_0", blockValues: 256, blockBytes: 0 },
};

export function ggmlTypeName(type: number): string {
  return GGML_TYPES[type]?.name ?? `type ${type}`;
}

export interface GGUFTensor {
  readonly name: string;
  readonly type: number;
  /** ggml order: dims[0] is the contiguous (input) dimension */
  readonly dims: readonly number[];
  readonly nElements: number;
  /** absolute byte offset in the file */
  readonly offset: number;
  /** bytes, or -1 when the type's size is not known to dairllm */
  readonly nBytes: number;
}

const MAX_DIMS = 4;
const MAX_STRING = 1 << 30;
const MAX_NESTING = 4;

/** A bounds-checked little-endian cursor over the file. */
class Cursor {
  pos = 0;
  private readonly dv: DataView;
  private readonly decoder = new TextDecoder("utf-8", { fatal: false });
  constructor(
    readonly bytes: Uint8Array,
    readonly path: string,
  ) {
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  fail(msg: string): never {
    throw new GGUFError(this.path, msg);
  }
  need(n: number, what: string): void {
    if (n < 0 || this.pos + n > this.bytes.byteLength)
      this.fail(`${what}: needs ${n} bytes at offset ${this.pos}, but the file ends at ${this.bytes.byteLength} (truncated?)`);
  }
  u8(what: string): number {
    this.need(1, what);
    return this.dv.getUint8(this.pos++);
  }
  u32(what: string): number {
    this.need(4, what);
    const v = this.dv.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  /** u64 as a number; values above 2^53 are refused (no real count or offset is that large). */
  u64(what: string): number {
    this.need(8, what);
    const v = this.dv.getBigUint64(this.pos, true);
    this.pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(`${what}: ${v} is out of range`);
    return Number(v);
  }
  /** A string; `index` >= 0 names it `what[index]` (an array item). */
  string(what: string, index = -1): string {
    // the name is built only for an error message: building it for each of a vocabulary's 10^5
    // strings took half the parse time
    const name = (): string => (index < 0 ? what : `${what}[${index}]`);
    if (this.pos + 8 > this.bytes.byteLength) this.need(8, `${name()} (string length)`);
    const lo = this.dv.getUint32(this.pos, true);
    const hi = this.dv.getUint32(this.pos + 4, true);
    if (hi !== 0 || lo > MAX_STRING) this.fail(`${name()}: string length ${this.dv.getBigUint64(this.pos, true)} is too large`);
    this.pos += 8;
    const len = lo;
    if (this.pos + len > this.bytes.byteLength) this.need(len, name());
    const s = this.decoder.decode(this.bytes.subarray(this.pos, this.pos + len));
    this.pos += len;
    return s;
  }
  scalar(type: number, what: string): GGUFScalar {
    const size = SCALAR_SIZE[type];
    if (size === undefined) this.fail(`${what}: unknown value type ${type}`);
    this.need(size, what);
    const p = this.pos;
    this.pos += size;
    switch (type) {
      case GGUFValueType.UINT8: return this.dv.getUint8(p);
      case GGUFValueType.INT8: return this.dv.getInt8(p);
      case GGUFValueType.UINT16: return this.dv.getUint16(p, true);
      case GGUFValueType.INT16: return this.dv.getInt16(p, true);
      case GGUFValueType.UINT32: return this.dv.getUint32(p, true);
      case GGUFValueType.INT32: return this.dv.getInt32(p, true);
      case GGUFValueType.FLOAT32: return this.dv.getFloat32(p, true);
      case GGUFValueType.BOOL: {
        const b = this.dv.getUint8(p);
        if (b > 1) this.fail(`${what}: bool value ${b} is neither 0 nor 1`);
        return b === 1;
      }
      case GGUFValueType.UINT64: return toNumberIfSafe(this.dv.getBigUint64(p, true));
      case GGUFValueType.INT64: return toNumberIfSafe(this.dv.getBigInt64(p, true));
      default: return this.dv.getFloat64(p, true);
    }
  }
  value(type: number, what: string, depth = 0): GGUFValue {
    if (type === GGUFValueType.STRING) return this.string(what);
    if (type !== GGUFValueType.ARRAY) return this.scalar(type, what);
    if (depth >= MAX_NESTING) this.fail(`${what}: arrays nested deeper than ${MAX_NESTING}`);
    const itemType = this.u32(`${what} (array item type)`);
    if (itemType > GGUFValueType.FLOAT64) this.fail(`${what}: unknown array item type ${itemType}`);
    const count = this.u64(`${what} (array length)`);
    const left = this.bytes.byteLength - this.pos;
    // every item takes at least one byte (strings 8, arrays 12): a count beyond that is a lie
    const minItem = itemType === GGUFValueType.STRING ? 8 : itemType === GGUFValueType.ARRAY ? 12 : SCALAR_SIZE[itemType]!;
    if (count * minItem > left) this.fail(`${what}: array of ${count} ${VALUE_TYPE_NAMES[itemType]} does not fit in the ${left} bytes left`);
    if (itemType === GGUFValueType.STRING) {
      const values: string[] = new Array(count);
      for (let i = 0; i < count; i++) values[i] = this.string(what, i);
      return { itemType, values, length: count };
    }
    if (itemType === GGUFValueType.ARRAY) {
      const values: GGUFArray[] = new Array(count);
      for (let i = 0; i < count; i++) values[i] = this.value(GGUFValueType.ARRAY, `${what}[${i}]`, depth + 1) as GGUFArray;
      return { itemType, values, length: count };
    }
    return { itemType, values: this.numericArray(itemType, count, what), length: count };
  }
  private numericArray(type: number, count: number, what: string): ArrayLike<number> | ArrayLike<bigint> | boolean[] {
    const size = SCALAR_SIZE[type]!;
    const start = this.pos;
    this.pos += count * size;
    const copy = this.bytes.slice(start, start + count * size); // aligned private copy (metadata is small)
    switch (type) {
      case GGUFValueType.UINT8: return copy;
      case GGUFValueType.INT8: return new Int8Array(copy.buffer);
      case GGUFValueType.UINT16: return new Uint16Array(copy.buffer);
      case GGUFValueType.INT16: return new Int16Array(copy.buffer);
      case GGUFValueType.UINT32: return new Uint32Array(copy.buffer);
      case GGUFValueType.INT32: return new Int32Array(copy.buffer);
      case GGUFValueType.FLOAT32: return new Float32Array(copy.buffer);
      case GGUFValueType.FLOAT64: return new Float64Array(copy.buffer);
      case GGUFValueType.UINT64: return new BigUint64Array(copy.buffer);
      case GGUFValueType.INT64: return new BigInt64Array(copy.buffer);
      default: {
        const out: boolean[] = new Array(count);
        for (let i = 0; i < count; i++) {
          const b = copy[i]!;
          if (b > 1) this.fail(`${what}[${i}]: bool value ${b} is neither 0 nor 1`);
          out[i] = b === 1;
        }
        return out;
      }
    }
  }
}

function toNumberIfSafe(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

export class GGUFFile {
  readonly metadata = new Map<string, GGUFValue>();
  readonly tensors = new Map<string, GGUFTensor>();
  readonly version: number;
  readonly alignment: number;
  readonly dataOffset: number;

  /** Parses `bytes` (the whole file, e.g. from Bun.mmap); `path` only names the file in errors.
   *  `mapped`: bytes is a read-only file mapping, whose pages may be dropped and read again. */
  constructor(
    readonly bytes: Uint8Array,
    readonly path = "<memory>",
    readonly mapped = false,
  ) {
    const c: Cursor = new Cursor(bytes, path); // typed, so that c.fail() (never) narrows types after it
    if (bytes.byteLength < 4 || bytes[0] !== 0x47 || bytes[1] !== 0x47 || bytes[2] !== 0x55 || bytes[3] !== 0x46) {
      c.fail(`not a GGUF file (magic ${JSON.stringify(new TextDecoder().decode(bytes.subarray(0, 4)))}, expected "GGUF")`);
    }
    c.pos = 4;
    this.version = c.u32("version");
    if (this.version !== 2 && this.version !== 3) {
      // a big-endian GGUF (made for s390x) reads as version 0x02000000 or 0x03000000 here
      const bigEndian = this.version === 0x02000000 || this.version === 0x03000000;
      c.fail(`GGUF version ${this.version} is not supported (supported: 2, 3)${bigEndian ? "; this looks like a big-endian GGUF" : ""}`);
    }
    const nTensors = c.u64("tensor count");
    const nKv = c.u64("metadata count");
    // a key-value pair takes at least 8 + 4 bytes, a tensor info at least 8 + 4 + 4 + 8 bytes
    if (nKv * 12 > bytes.byteLength) c.fail(`metadata count ${nKv} cannot fit in a file of ${bytes.byteLength} bytes`);
    if (nTensors * 24 > bytes.byteLength) c.fail(`tensor count ${nTensors} cannot fit in a file of ${bytes.byteLength} bytes`);
    for (let i = 0; i < nKv; i++) {
      const key = c.string(`metadata key #${i}`);
      const type = c.u32(`metadata ${key} (value type)`);
      if (type > GGUFValueType.FLOAT64) c.fail(`metadata ${key}: unknown value type ${type}`);
      if (this.metadata.has(key)) c.fail(`metadata ${key} appears twice`);
      this.metadata.set(key, c.value(type, `metadata ${key}`));
    }
    const align = this.metadata.get("general.alignment") ?? 32;
    if (typeof align !== "number") c.fail(`general.alignment is ${describe(align)}, expected an integer`);
    if (!Number.isInteger(align) || align < 1 || align > 1 << 16 || (align & (align - 1)) !== 0) {
      c.fail(`general.alignment ${align} is not a power of two between 1 and 65536`);
    }
    this.alignment = align;
    const infos: { name: string; type: number; dims: number[]; rel: number }[] = [];
    // a Set, not infos.some(): a file with 10^5 tensor infos must not take O(n^2) to check for duplicates
    const names = new Set<string>();
    for (let i = 0; i < nTensors; i++) {
      const name = c.string(`tensor #${i} name`);
      const nDims = c.u32(`tensor ${name} (dimension count)`);
      if (nDims < 1 || nDims > MAX_DIMS) c.fail(`tensor ${name}: ${nDims} dimensions (expected 1 to ${MAX_DIMS})`);
      const dims: number[] = [];
      for (let d = 0; d < nDims; d++) {
        const n = c.u64(`tensor ${name} dimension ${d}`);
        if (n < 1) c.fail(`tensor ${name}: dimension ${d} is ${n}`);
        dims.push(n);
      }
      const type = c.u32(`tensor ${name} (type)`);
      const rel = c.u64(`tensor ${name} (offset)`);
      if (names.has(name)) c.fail(`tensor ${name} appears twice`);
      names.add(name);
      infos.push({ name, type, dims, rel });
    }
    this.dataOffset = Math.ceil(c.pos / align) * align;
    for (const t of infos) {
      const where = `tensor ${t.name}`;
      const traits = GGML_TYPES[t.type];
      if (!traits) c.fail(`${where}: unknown type id ${t.type}`);
      let n = 1;
      for (const d of t.dims) {
        n *= d;
        if (n > Number.MAX_SAFE_INTEGER) c.fail(`${where}: dimensions ${t.dims.join(" x ")} have more than 2^53 elements`);
      }
      if (t.dims[0]! % traits.blockValues !== 0) c.fail(`${where}: first dimension ${t.dims[0]} is not a multiple of the ${traits.name} block size ${traits.blockValues}`);
      if (t.rel % align !== 0) c.fail(`${where}: data offset ${t.rel} is not a multiple of the alignment ${align}`);
      const nBytes = traits.blockBytes ? (n / traits.blockValues) * traits.blockBytes : -1;
      const offset = this.dataOffset + t.rel;
      const end = offset + Math.max(nBytes, 0);
      if (offset > bytes.byteLength || end > bytes.byteLength) {
        c.fail(`${where}: data [${offset}, ${end}) lies beyond the end of the file (${bytes.byteLength} bytes; truncated?)`);
      }
      this.tensors.set(t.name, { name: t.name, type: t.type, dims: t.dims, nElements: n, offset, nBytes });
    }
  }

  /** Maps the file (no copy) and parses it. */
  static open(path: string): GGUFFile {
    if (!existsSync(path)) throw new GGUFError(path, "no such file");
    let st: Stats;
    try {
      st = statSync(path); // can still fail (removed since, permissions): a GGUFError, not a raw ENOENT
    } catch (e) {
      throw new GGUFError(path, `cannot be read: ${(e as Error).message}`);
    }
    if (!st.isFile()) throw new GGUFError(path, "not a regular file");
    if (st.size === 0) throw new GGUFError(path, "the file is empty");
    let bytes: Uint8Array;
    // a file embedded in a compiled binary is not a real file: read it (small: the demo model)
    const embedded = path.startsWith("/$bunfs/");
    try {
      bytes = embedded ? new Uint8Array(readFileSync(path)) : Bun.mmap(path, { shared: false });
    } catch (e) {
      throw new GGUFError(path, `cannot be mapped: ${(e as Error).message}`);
    }
    return new GGUFFile(bytes, path, !embedded);
  }

  /** A zero-copy view of a tensor's bytes. */
  view(name: string): Uint8Array {
    const t = this.tensor(name);
    if (t.nBytes < 0) throw new GGUFError(this.path, `tensor ${name}: type ${ggmlTypeName(t.type)} is not supported`);
    return this.bytes.subarray(t.offset, t.offset + t.nBytes);
  }

  tensor(name: string): GGUFTensor {
    const t = this.tensors.get(name);
    if (!t) throw new GGUFError(this.path, `tensor ${name} is missing`);
    return t;
  }

  has(key: string): boolean {
    return this.metadata.has(key);
  }

  /** A metadata value of the expected kind, or `fallback` when absent; a wrong kind is an error. */
  get(key: string, kind: "number"): number;
  get(key: string, kind: "number", fallback: number): number;
  get(key: string, kind: "string"): string;
  get(key: string, kind: "string", fallback: string): string;
  get(key: string, kind: "boolean", fallback: boolean): boolean;
  get(key: string, kind: "array"): GGUFArray;
  get(key: string, kind: "number" | "string" | "boolean" | "array", fallback?: number | string | boolean): GGUFValue {
    const v = this.metadata.get(key);
    if (v === undefined) {
      if (fallback !== undefined) return fallback;
      throw new GGUFError(this.path, `metadata ${key} is missing`);
    }
    const ok = kind === "array" ? typeof v === "object" : typeof v === kind;
    if (!ok) throw new GGUFError(this.path, `metadata ${key} is ${describe(v)}, expected ${kind === "number" ? "a number" : `a ${kind}`}`);
    return v;
  }
}

function describe(v: GGUFValue): string {
  if (typeof v === "object") return `an array of ${VALUE_TYPE_NAMES[v.itemType]}`;
  // 64-bit integers beyond 2^53 are kept as bigint: not "a number" to callers
  const kind = typeof v === "string" ? "a string" : typeof v === "boolean" ? "a boolean" : typeof v === "bigint" ? "a 64-bit integer beyond 2^53" : "a number";
  return `${kind} (${(typeof v === "string" ? JSON.stringify(v) : String(v)).slice(0, 40)})`;
}
