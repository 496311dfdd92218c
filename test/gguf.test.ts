// GGUF reader: the fixtures parse to what their ref.json / README say, hand-made hostile files get a
// GGUFError naming the field and the value, and thousands of seeded truncated / mutated fixtures give a
// clean load or a clean GGUFError (never a TypeError, RangeError, crash or hang).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GGML_TYPES, GGUFError, GGUFFile, GGUFValueType, ggmlTypeName, type GGUFArray } from "../src/model/gguf";
import { mulberry32 as prng } from "../src/model/sampler";

const FIX = join(import.meta.dir, "fixtures");
const MODELS = ["tiny-f32", "tiny-f16", "tiny-q8_0", "tiny-q4_0", "mini-f32", "mini-q8_0", "mini-q4_0", "odd-q4_0", "qwen2-tiny-f32", "qwen2-tiny-q8_0"];
const F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8;
const T = {
  UINT8: 0, INT8: 1, UINT16: 2, INT16: 3, UINT32: 4, INT32: 5, FLOAT32: 6, BOOL: 7, STRING: 8, ARRAY: 9, UINT64: 10, INT64: 11, FLOAT64: 12,
} as const;
const SCALAR_SIZE: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };

function readFixture(rel: string): Uint8Array {
  return new Uint8Array(readFileSync(join(FIX, rel))); // a private copy, byteOffset 0
}

/** Expects `f` to throw a GGUFError (anything else, or no throw, fails) and returns it. */
function ggufError(f: () => unknown): GGUFError {
  try {
    f();
  } catch (e) {
    if (e instanceof GGUFError) return e;
    throw new Error(`expected a GGUFError, got ${(e as Error)?.name}: ${(e as Error)?.message}`);
  }
  throw new Error("expected a GGUFError, but it succeeded");
}

// ---------------------------------------------------------------------------------------------
// An independent walker over a well-formed GGUF: where every field is. Used to check gguf.ts's
// results and to aim the fuzzer at the integer fields (counts, lengths, types, dims, offsets).
// ---------------------------------------------------------------------------------------------
interface Layout {
  version: number;
  kv: Map<string, { type: number; itemType?: number; count?: number }>;
  tensors: { name: string; dims: number[]; type: number; rel: number }[];
  u32: number[]; // positions of u32 fields (version, value types, n_dims, tensor types, 4-byte scalars)
  u64: number[]; // positions of u64 fields (counts, string lengths, array lengths, dims, offsets)
  structural: number[]; // every header byte except the items of long arrays
  firstBulk: number; // where the items of the first long array begin (the end of the cheap-to-parse prefix)
  headerEnd: number; // end of the last tensor info
}

function walk(b: Uint8Array): Layout {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const dec = new TextDecoder();
  const u32: number[] = [], u64: number[] = [], structural: number[] = [];
  let p = 0;
  let firstBulk = -1;
  const mark = (from: number, to: number) => { for (let i = from; i < to; i++) structural.push(i); };
  // `keep`: the bytes count as structural (false for the items of long arrays)
  const rd32 = (keep = true) => { u32.push(p); if (keep) mark(p, p + 4); p += 4; return dv.getUint32(p - 4, true); };
  const rd64 = (keep = true) => { u64.push(p); if (keep) mark(p, p + 8); p += 8; return Number(dv.getBigUint64(p - 8, true)); };
  const str = (keep: boolean) => { const n = rd64(keep); if (keep) mark(p, p + n); p += n; return dec.decode(b.subarray(p - n, p)); };
  const value = (type: number, keep: boolean): { itemType?: number; count?: number } => {
    if (type === T.STRING) { str(keep); return {}; }
    if (type === T.ARRAY) {
      const itemType = rd32(keep);
      const count = rd64(keep);
      const short = count <= 16; // long arrays (tokens, scores, merges): their items are sampled, not enumerated
      if (!short && firstBulk < 0) firstBulk = p;
      for (let i = 0; i < count; i++) value(itemType, keep && short);
      return { itemType, count };
    }
    const size = SCALAR_SIZE[type]!;
    if (size === 4) u32.push(p);
    if (size === 8) u64.push(p);
    if (keep) mark(p, p + size);
    p += size;
    return {};
  };
  mark(0, 4);
  p = 4;
  const version = rd32();
  const nTensors = rd64();
  const nKv = rd64();
  const kv = new Map<string, { type: number; itemType?: number; count?: number }>();
  for (let i = 0; i < nKv; i++) {
    const key = str(true);
    const type = rd32();
    kv.set(key, { type, ...value(type, true) });
  }
  const tensors: Layout["tensors"] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = str(true);
    const nDims = rd32();
    const dims: number[] = [];
    for (let d = 0; d < nDims; d++) dims.push(rd64());
    const type = rd32();
    const rel = rd64();
    tensors.push({ name, dims, type, rel });
  }
  return { version, kv, tensors, u32, u64, structural, firstBulk: firstBulk < 0 ? p : firstBulk, headerEnd: p };
}

// ---------------------------------------------------------------------------------------------
// 1. The fixtures
// ---------------------------------------------------------------------------------------------
interface Ref {
  size_bytes: number;
  arch: string;
  dims: { dim: number; ffn: number; layers: number; heads: number; kv_heads: number; head_dim: number; vocab: number; ctx: number; tied_embeddings?: boolean };
  types: { matrices: string; token_embd: string };
}

function expectedTensors(ref: Ref): Map<string, { dims: number[]; type: string }> {
  const { dim, ffn, layers, heads, kv_heads, head_dim, vocab } = ref.dims;
  const m = ref.types.matrices.toUpperCase();
  const out = new Map<string, { dims: number[]; type: string }>();
  out.set("token_embd.weight", { dims: [dim, vocab], type: ref.types.token_embd.toUpperCase() });
  out.set("output_norm.weight", { dims: [dim], type: "F32" });
  if (!ref.dims.tied_embeddings) out.set("output.weight", { dims: [dim, vocab], type: m });
  for (let l = 0; l < layers; l++) {
    const b = `blk.${l}.`;
    out.set(b + "attn_norm.weight", { dims: [dim], type: "F32" });
    out.set(b + "attn_q.weight", { dims: [dim, heads * head_dim], type: m });
    out.set(b + "attn_k.weight", { dims: [dim, kv_heads * head_dim], type: m });
    out.set(b + "attn_v.weight", { dims: [dim, kv_heads * head_dim], type: m });
    if (ref.arch === "qwen2") {
      out.set(b + "attn_q.bias", { dims: [heads * head_dim], type: "F32" });
      out.set(b + "attn_k.bias", { dims: [kv_heads * head_dim], type: "F32" });
      out.set(b + "attn_v.bias", { dims: [kv_heads * head_dim], type: "F32" });
    }
    out.set(b + "attn_output.weight", { dims: [heads * head_dim, dim], type: m });
    out.set(b + "ffn_norm.weight", { dims: [dim], type: "F32" });
    out.set(b + "ffn_gate.weight", { dims: [dim, ffn], type: m });
    out.set(b + "ffn_up.weight", { dims: [dim, ffn], type: m });
    out.set(b + "ffn_down.weight", { dims: [ffn, dim], type: m });
  }
  return out;
}

describe("fixtures", () => {
  for (const name of MODELS) {
    test(`models/${name}.gguf`, () => {
      const ref = JSON.parse(readFileSync(join(FIX, "models", `${name}.ref.json`), "utf8")) as Ref;
      const g = GGUFFile.open(join(FIX, "models", `${name}.gguf`));
      const lay = walk(g.bytes);
      const arch = ref.arch;
      expect(g.bytes.byteLength).toBe(ref.size_bytes);
      expect(g.version).toBe(3);
      expect(g.metadata.size).toBe(lay.kv.size);

      // metadata kinds and values
      expect(g.get("general.architecture", "string")).toBe(arch);
      expect(g.get("general.alignment", "number")).toBe(32);
      expect(g.alignment).toBe(32);
      expect(g.get(`${arch}.embedding_length`, "number")).toBe(ref.dims.dim);
      expect(g.get(`${arch}.feed_forward_length`, "number")).toBe(ref.dims.ffn);
      expect(g.get(`${arch}.block_count`, "number")).toBe(ref.dims.layers);
      expect(g.get(`${arch}.attention.head_count`, "number")).toBe(ref.dims.heads);
      expect(g.get(`${arch}.attention.head_count_kv`, "number")).toBe(ref.dims.kv_heads);
      expect(g.get(`${arch}.rope.dimension_count`, "number")).toBe(ref.dims.head_dim);
      expect(g.get(`${arch}.context_length`, "number")).toBe(ref.dims.ctx);
      expect(g.get(`${arch}.vocab_size`, "number")).toBe(ref.dims.vocab);
      expect(g.get(`${arch}.attention.layer_norm_rms_epsilon`, "number")).toBeCloseTo(arch === "qwen2" ? 1e-6 : 1e-5, 12);
      expect(typeof g.get("tokenizer.ggml.add_bos_token", "boolean", false)).toBe("boolean");
      const tokens = g.get("tokenizer.ggml.tokens", "array");
      expect(tokens.itemType).toBe(GGUFValueType.STRING);
      expect(tokens.length).toBe(ref.dims.vocab);
      expect((tokens.values as string[]).every((s) => typeof s === "string")).toBe(true);
      const scores = g.get("tokenizer.ggml.scores", "array");
      expect(scores.itemType).toBe(GGUFValueType.FLOAT32);
      expect(scores.values).toBeInstanceOf(Float32Array);
      expect(scores.length).toBe(ref.dims.vocab);
      const types = g.get("tokenizer.ggml.token_type", "array");
      expect(types.itemType).toBe(GGUFValueType.INT32);
      expect(types.values).toBeInstanceOf(Int32Array);
      expect(types.length).toBe(ref.dims.vocab);
      // wrong kind / missing key: a GGUFError naming the key
      expect(ggufError(() => g.get(`${arch}.embedding_length`, "string")).message).toContain(`${arch}.embedding_length is a number (${ref.dims.dim}), expected a string`);
      expect(ggufError(() => g.get("no.such.key", "number")).message).toContain("no.such.key is missing");
      expect(g.has("general.architecture")).toBe(true);
      expect(g.has("no.such.key")).toBe(false);

      // tensors: names, types, dims as documented; offsets as the independent walker found them
      const want = expectedTensors(ref);
      expect([...g.tensors.keys()].sort()).toEqual([...want.keys()].sort());
      expect(g.dataOffset % 32).toBe(0);
      expect(g.dataOffset).toBeGreaterThanOrEqual(lay.headerEnd);
      expect(g.dataOffset - lay.headerEnd).toBeLessThan(32);
      let prevEnd = g.dataOffset;
      for (const info of lay.tensors) {
        const t = g.tensor(info.name);
        const w = want.get(info.name)!;
        expect(ggmlTypeName(t.type)).toBe(w.type);
        expect(t.type).toBe(info.type);
        expect([...t.dims]).toEqual(w.dims);
        const tr = GGML_TYPES[t.type]!;
        expect(t.nElements).toBe(w.dims.reduce((a, b) => a * b, 1));
        expect(t.nBytes).toBe((t.nElements / tr.blockValues) * tr.blockBytes);
        expect(t.offset).toBe(g.dataOffset + info.rel);
        expect(t.offset % 32).toBe(0);
        expect(t.offset).toBeGreaterThanOrEqual(prevEnd); // in file order, no overlap
        prevEnd = t.offset + t.nBytes;
        const v = g.view(info.name);
        expect(v.byteLength).toBe(t.nBytes);
        expect(v.byteOffset).toBe(g.bytes.byteOffset + g.dataOffset + info.rel);
        expect(v.buffer).toBe(g.bytes.buffer); // zero-copy: a view into the mapped file
      }
      expect(prevEnd).toBeLessThanOrEqual(g.bytes.byteLength);
      // norm weights are all 1.0 (README): the view points at the right bytes
      const norm = g.view("output_norm.weight");
      expect(Array.from(new Float32Array(norm.slice().buffer)).every((x) => x === 1)).toBe(true);
      // a write through the view shows in the mapping (private mapping: the file is not touched)
      const v0 = g.view("token_embd.weight");
      const old = v0[0]!;
      v0[0] = old ^ 0xff;
      expect(g.bytes[g.tensor("token_embd.weight").offset]).toBe(old ^ 0xff);
      v0[0] = old;
      expect(ggufError(() => g.view("no.such.tensor")).message).toContain("tensor no.such.tensor is missing");
    });
  }

  // vocab-only files: no tensors; token and merge counts from fixtures/README.md section 5
  const VOCABS: [string, string, number, number | undefined][] = [
    ["llama-spm", "llama", 32000, undefined],
    ["phi-3", "llama", 32064, undefined],
    ["llama3-bpe", "gpt2", 128256, 280147],
    ["gpt-2", "gpt2", 50257, 50000],
    ["falcon", "gpt2", 65024, 64784],
    ["deepseek-llm", "gpt2", 102400, 99757],
    ["deepseek-coder", "gpt2", 32256, 31757],
    ["starcoder", "gpt2", 49152, 48872],
    ["refact", "gpt2", 49216, 48891],
    ["mpt", "gpt2", 50432, 50009],
    ["gpt-neox", "gpt2", 50432, 50009],
  ];
  for (const [name, model, nTokens, nMerges] of VOCABS) {
    test(`vocab/ggml-vocab-${name}.gguf`, () => {
      const g = GGUFFile.open(join(FIX, "vocab", `ggml-vocab-${name}.gguf`));
      const lay = walk(g.bytes);
      expect(g.version).toBe(3);
      expect(g.tensors.size).toBe(0);
      expect(g.metadata.size).toBe(lay.kv.size);
      expect(g.alignment).toBe(32);
      expect(g.dataOffset).toBe(Math.ceil(lay.headerEnd / 32) * 32);
      expect(g.get("tokenizer.ggml.model", "string")).toBe(model);
      expect(g.has("tokenizer.ggml.pre")).toBe(name !== "gpt-neox");
      const tokens = g.get("tokenizer.ggml.tokens", "array");
      expect(tokens.itemType).toBe(GGUFValueType.STRING);
      expect(tokens.length).toBe(nTokens);
      expect(tokens.values.length).toBe(nTokens);
      expect(typeof (tokens.values as string[])[nTokens - 1]).toBe("string");
      expect(g.get("tokenizer.ggml.token_type", "array").length).toBe(nTokens);
      if (nMerges === undefined) {
        expect(g.has("tokenizer.ggml.merges")).toBe(false);
        expect(g.get("tokenizer.ggml.scores", "array").length).toBe(nTokens);
      } else {
        const merges = g.get("tokenizer.ggml.merges", "array");
        expect(merges.itemType).toBe(GGUFValueType.STRING);
        expect(merges.length).toBe(nMerges);
      }
      expect(typeof g.get("tokenizer.ggml.eos_token_id", "number")).toBe("number");
      // every key's recorded kind matches what the walker saw
      for (const [key, k] of lay.kv) {
        const v = g.metadata.get(key)!;
        if (k.type === T.STRING) expect(typeof v).toBe("string");
        else if (k.type === T.ARRAY) expect((v as GGUFArray).length).toBe(k.count!);
        else if (k.type === T.BOOL) expect(typeof v).toBe("boolean");
        else expect(typeof v).toBe("number");
      }
    });
  }
});

// ---------------------------------------------------------------------------------------------
// 2. Seeded fuzzing: truncations and mutations of real fixtures
// ---------------------------------------------------------------------------------------------


const KINDS = ["number", "string", "boolean", "array"] as const;

/** Parses `bytes`: returns "load" or the GGUFError's message; throws on anything that is not clean. */
function fuzzOne(bytes: Uint8Array): string {
  let g: GGUFFile;
  try {
    g = new GGUFFile(bytes, "fuzz");
  } catch (e) {
    if (e instanceof GGUFError) return e.message;
    throw e;
  }
  // it loaded: every tensor must lie inside the buffer, every metadata access be clean
  const lo = bytes.byteOffset, hi = bytes.byteOffset + bytes.byteLength;
  if (g.dataOffset % g.alignment !== 0) throw new Error(`dataOffset ${g.dataOffset} not aligned to ${g.alignment}`);
  for (const [name, t] of g.tensors) {
    if (t.offset < g.dataOffset || t.offset % g.alignment !== 0) throw new Error(`tensor ${name}: offset ${t.offset} outside the data section or misaligned`);
    if (t.dims.length < 1 || t.dims.length > 4 || t.dims.some((d) => !Number.isSafeInteger(d) || d < 1)) throw new Error(`tensor ${name}: dims ${t.dims}`);
    if (t.nBytes < 0) {
      ggufError(() => g.view(name));
      continue;
    }
    const v = g.view(name);
    if (v.byteLength !== t.nBytes || v.byteOffset < lo || v.byteOffset + v.byteLength > hi || v.buffer !== bytes.buffer) {
      throw new Error(`tensor ${name}: view [${v.byteOffset}, +${v.byteLength}) is not its ${t.nBytes} bytes inside [${lo}, ${hi})`);
    }
  }
  for (const key of g.metadata.keys()) {
    for (const kind of KINDS) {
      try {
        const v = g.get(key, kind as "number", 0 as never);
        if (kind === "array") void (v as unknown as GGUFArray).values.length;
      } catch (e) {
        if (!(e instanceof GGUFError)) throw e;
      }
    }
  }
  ggufError(() => g.get("fuzz.no.such.key", "number"));
  return "load";
}

const U32_EXTREMES = [0, 1, 2, 3, 4, 5, 8, 9, 12, 13, 31, 32, 33, 99, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
const U64_EXTREMES = [0n, 1n, 2n, 4n, 31n, 32n, 33n, 2n ** 31n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 60n, 2n ** 63n - 1n, 2n ** 63n, 2n ** 64n - 1n];

const stats = { cases: 0, loads: 0, errors: 0, firstWords: new Map<string, number>(), shapes: new Set<string>(), slowestMs: 0, slowest: "", failures: [] as string[] };

function record(what: string, run: () => string): void {
  const t0 = performance.now();
  let out: string;
  try {
    out = run();
  } catch (e) {
    if (stats.failures.length < 20) stats.failures.push(`${what}: ${(e as Error)?.name}: ${(e as Error)?.message}`);
    out = "FAIL";
  }
  const ms = performance.now() - t0;
  if (ms > stats.slowestMs) { stats.slowestMs = ms; stats.slowest = what; }
  stats.cases++;
  if (out === "load") stats.loads++;
  else if (out !== "FAIL") {
    stats.errors++;
    if (!out.startsWith("fuzz: ")) stats.failures.push(`${what}: error does not name the file: ${out}`);
    const word = out.slice(6).split(" ")[0]!;
    stats.firstWords.set(word, (stats.firstWords.get(word) ?? 0) + 1);
    stats.shapes.add(out.replace(/\d+/g, "#"));
  }
}

interface FuzzPlan {
  file: string;
  seed: number;
  everyHeaderOffset: boolean; // truncate at every offset in [0, dataOffset]; else at every structural byte
  lateStructural?: number; // if set, only this many structural bytes after the first long array (each costs a long parse)
  truncSamples: number; // further random truncation points
  mutations: number;
}

const PLANS: FuzzPlan[] = [
  { file: "models/tiny-q4_0.gguf", seed: 1, everyHeaderOffset: true, truncSamples: 300, mutations: 3000 },
  { file: "models/qwen2-tiny-f32.gguf", seed: 2, everyHeaderOffset: false, truncSamples: 1000, mutations: 2000 },
  { file: "models/odd-q4_0.gguf", seed: 3, everyHeaderOffset: false, truncSamples: 1000, mutations: 2000 },
  // a vocab file parses ~100x slower (50k tokens + 50k merges): fewer, better-aimed cases
  { file: "vocab/ggml-vocab-gpt-2.gguf", seed: 4, everyHeaderOffset: false, lateStructural: 20, truncSamples: 40, mutations: 100 },
];

function fuzzFixture(plan: FuzzPlan): void {
  const t0 = performance.now(), cases0 = stats.cases, loads0 = stats.loads;
  const orig = readFixture(plan.file);
  const lay = walk(orig);
  const rand = prng(plan.seed);
  const int = (n: number) => Math.floor(rand() * n);
  const dataOffset = Math.ceil(lay.headerEnd / 32) * 32;

  // (a) truncation
  const cuts = new Set<number>();
  if (plan.everyHeaderOffset) for (let k = 0; k <= Math.min(dataOffset, orig.byteLength); k++) cuts.add(k);
  else {
    const late = lay.structural.filter((k) => k >= lay.firstBulk);
    for (const k of lay.structural) if (k < lay.firstBulk) cuts.add(k);
    for (let i = 0; i < late.length; i++) if (plan.lateStructural === undefined || int(late.length) < plan.lateStructural) cuts.add(late[i]!);
    for (let k = lay.headerEnd; k <= Math.min(dataOffset, orig.byteLength); k++) cuts.add(k);
  }
  for (let i = 0; i < plan.truncSamples; i++) cuts.add(i % 2 ? int(lay.headerEnd) : int(orig.byteLength));
  cuts.add(orig.byteLength - 1);
  for (const k of cuts) record(`${plan.file} truncated to ${k} bytes`, () => fuzzOne(orig.subarray(0, k)));

  // (b) mutations, applied to a working copy and undone after each case
  const work = orig.slice();
  const dv = new DataView(work.buffer);
  const structural = lay.structural;
  // mostly the header (that is what gets parsed), sometimes anywhere
  const pos = (width: number) => {
    const r = rand();
    const p = r < 0.6 ? structural[int(structural.length)]! : r < 0.9 ? int(lay.headerEnd) : int(orig.byteLength);
    return Math.min(p, orig.byteLength - width);
  };
  for (let i = 0; i < plan.mutations; i++) {
    const edits: [number, number][] = []; // [position, width] to restore
    let what: string;
    const kind = int(8);
    if (kind === 0) {
      const p = pos(1), bit = int(8);
      work[p] = work[p]! ^ (1 << bit);
      edits.push([p, 1]);
      what = `flip bit ${bit} at ${p}`;
    } else if (kind === 1) {
      const p = pos(1), v = int(256);
      work[p] = v;
      edits.push([p, 1]);
      what = `byte ${v} at ${p}`;
    } else if (kind === 2) {
      const n = 2 + int(7);
      const ps: number[] = [];
      for (let j = 0; j < n; j++) {
        const p = pos(1);
        work[p] = int(256);
        edits.push([p, 1]);
        ps.push(p);
      }
      what = `${n} random bytes at ${ps.join(",")}`;
    } else if (kind === 3 || kind === 4) {
      // a u32 field (value type, item type, n_dims, tensor type, ...) or a random spot
      const p = kind === 3 ? lay.u32[int(lay.u32.length)]! : pos(4);
      const v = int(4) === 0 ? int(0x100000000) : U32_EXTREMES[int(U32_EXTREMES.length)]!;
      dv.setUint32(p, v, true);
      edits.push([p, 4]);
      what = `u32 ${v} at ${p}`;
    } else {
      // a u64 field (count, string / array length, dim, offset) or a random spot
      const p = kind <= 6 ? lay.u64[int(lay.u64.length)]! : pos(8);
      const old = dv.getBigUint64(p, true);
      const r = int(4);
      const v = r === 0 ? (BigInt(int(0x100000000)) << 32n) | BigInt(int(0x100000000)) : r === 1 ? BigInt.asUintN(64, old + BigInt(int(65) - 32)) : U64_EXTREMES[int(U64_EXTREMES.length)]!;
      dv.setBigUint64(p, v, true);
      edits.push([p, 8]);
      what = `u64 ${v} at ${p}`;
    }
    record(`${plan.file} (seed ${plan.seed}, case ${i}): ${what}`, () => fuzzOne(work));
    for (const [p, w] of edits) work.set(orig.subarray(p, p + w), p);
  }
  const n = stats.cases - cases0, loads = stats.loads - loads0;
  console.log(`gguf fuzz ${plan.file}: ${n} cases (${cuts.size} truncations, ${plan.mutations} mutations): ${loads} loads, ${n - loads} errors, ${((performance.now() - t0) / 1000).toFixed(2)} s`);
}

test("fuzz: truncated and mutated fixtures give a clean load or a clean GGUFError", () => {
  const t0 = performance.now();
  for (const plan of PLANS) fuzzFixture(plan);
  const ms = performance.now() - t0;
  const words = [...stats.firstWords].sort((a, b) => b[1] - a[1]).map(([w, n]) => `${w} ${n}`).join(", ");
  console.log(
    `gguf fuzz: ${stats.cases} cases in ${(ms / 1000).toFixed(2)} s: ${stats.loads} loads, ${stats.errors} GGUFErrors ` +
      `(first words: ${words}; ${stats.shapes.size} distinct messages up to numbers); slowest case ${stats.slowestMs.toFixed(1)} ms (${stats.slowest})`,
  );
  expect(stats.failures).toEqual([]);
  expect(stats.cases).toBeGreaterThanOrEqual(5000);
  expect(stats.loads).toBeGreaterThan(0);
  expect(stats.errors).toBeGreaterThan(0);
  expect(stats.loads + stats.errors).toBe(stats.cases);
  // no single file takes long: nothing quadratic, no hang (the total is printed, not asserted: on a
  // shared CI machine it moved from 8 to 17 s with the neighbours' load)
  expect(stats.slowestMs).toBeLessThan(1000);
}, 60_000);

// ---------------------------------------------------------------------------------------------
// 3. Hand-made hostile files
// ---------------------------------------------------------------------------------------------
const enc = new TextEncoder();

/** A little-endian byte writer. */
class W {
  private a: number[] = [];
  get length(): number {
    return this.a.length;
  }
  u8(v: number): this {
    this.a.push(v & 0xff);
    return this;
  }
  u32(v: number): this {
    for (let i = 0; i < 4; i++) this.a.push((v >>> (8 * i)) & 0xff);
    return this;
  }
  u64(v: number | bigint): this {
    let x = BigInt.asUintN(64, BigInt(v));
    for (let i = 0; i < 8; i++, x >>= 8n) this.a.push(Number(x & 0xffn));
    return this;
  }
  f32(v: number): this {
    const b = new Uint8Array(new Float32Array([v]).buffer);
    return this.raw(b);
  }
  raw(b: ArrayLike<number>): this {
    for (let i = 0; i < b.length; i++) this.a.push(b[i]!);
    return this;
  }
  /** a GGUF string; `len` overrides the stored length */
  str(s: string, len?: number | bigint): this {
    const b = enc.encode(s);
    return this.u64(len ?? b.length).raw(b);
  }
  pad(align: number): this {
    while (this.a.length % align) this.a.push(0);
    return this;
  }
  bytes(): Uint8Array {
    return new Uint8Array(this.a);
  }
}

type KV = (w: W) => void;
const kvStr = (key: string, s: string): KV => (w) => w.str(key).u32(T.STRING).str(s);
const kvU32 = (key: string, v: number): KV => (w) => w.str(key).u32(T.UINT32).u32(v);
const kvU64 = (key: string, v: number | bigint): KV => (w) => w.str(key).u32(T.UINT64).u64(v);
/** a key, a value type, then whatever `value` writes (possibly a lie) */
const kvRaw = (key: string, type: number, value: (w: W) => void): KV => (w) => value(w.str(key).u32(type));

interface TensorSpec {
  name: string;
  dims: (number | bigint)[];
  type: number;
  offset: number | bigint;
  nDims?: number; // stored n_dims, when it should differ from dims.length
}
interface Spec {
  magic?: number[];
  version?: number;
  tensorCount?: number | bigint;
  kvCount?: number | bigint;
  kv?: KV[];
  tensors?: TensorSpec[];
  align?: number; // padding before the data section
  data?: number; // bytes of tensor data after the padding
}

const BASE_TENSORS: TensorSpec[] = [
  { name: "a", dims: [32, 2], type: F32, offset: 0 }, // 256 bytes
  { name: "b", dims: [64], type: Q4_0, offset: 256 }, // 2 blocks, 36 bytes
];
const BASE_KV: KV[] = [kvStr("general.architecture", "llama"), kvU32("llama.block_count", 1)];

/** A GGUF v3 file: magic, version, counts, kv pairs, tensor infos, padding, data. */
function gguf(spec: Spec = {}): Uint8Array {
  const kv = spec.kv ?? BASE_KV;
  const tensors = spec.tensors ?? BASE_TENSORS;
  const w = new W();
  w.raw(spec.magic ?? [0x47, 0x47, 0x55, 0x46]);
  w.u32(spec.version ?? 3);
  w.u64(spec.tensorCount ?? tensors.length);
  w.u64(spec.kvCount ?? kv.length);
  for (const f of kv) f(w);
  for (const t of tensors) {
    w.str(t.name).u32(t.nDims ?? t.dims.length);
    for (const d of t.dims) w.u64(d);
    w.u32(t.type).u64(t.offset);
  }
  w.pad(spec.align ?? 32);
  const data = spec.data ?? 320;
  for (let i = 0; i < data; i++) w.u8(i);
  return w.bytes();
}

/** Expects parsing to fail with a GGUFError whose message contains every `parts` string. */
function rejects(bytes: Uint8Array, ...parts: string[]): string {
  const msg = ggufError(() => new GGUFFile(bytes, "hostile.gguf")).message;
  expect(msg.startsWith("hostile.gguf: ")).toBe(true);
  for (const p of parts) expect(msg).toContain(p);
  return msg;
}

/** `depth` nested arrays around one empty UINT8 array */
function nested(w: W, depth: number): void {
  if (depth === 1) {
    w.u32(T.UINT8).u64(0);
    return;
  }
  w.u32(T.ARRAY).u64(1);
  nested(w, depth - 1);
}

describe("hostile files", () => {
  test("the base file loads (the writer is right)", () => {
    const g = new GGUFFile(gguf(), "base.gguf");
    expect(g.version).toBe(3);
    expect(g.get("general.architecture", "string")).toBe("llama");
    expect(g.get("llama.block_count", "number")).toBe(1);
    expect(g.dataOffset % 32).toBe(0);
    expect(g.view("a").byteLength).toBe(256);
    expect(g.view("a").byteOffset).toBe(g.dataOffset);
    expect(g.view("b").byteLength).toBe(36);
    expect(g.view("b").byteOffset).toBe(g.dataOffset + 256);
    expect(g.view("b").buffer).toBe(g.bytes.buffer);
    expect(g.tensor("b").nElements).toBe(64);
    // version 2 has the same layout
    expect(new GGUFFile(gguf({ version: 2 })).version).toBe(2);
  });

  test("magic and version", () => {
    rejects(gguf({ magic: [0x47, 0x47, 0x4d, 0x4c] }), "not a GGUF file", '"GGML"');
    rejects(new Uint8Array(0), "not a GGUF file");
    rejects(new Uint8Array([0x47, 0x47, 0x55]), "not a GGUF file");
    rejects(gguf().subarray(0, 6), "version", "needs 4 bytes at offset 4");
    rejects(gguf({ version: 1 }), "GGUF version 1 is not supported");
    rejects(gguf({ version: 4 }), "GGUF version 4 is not supported");
    rejects(gguf({ version: 0x03000000 }), "version 50331648", "big-endian");
  });

  test("tensor and metadata counts", () => {
    rejects(gguf({ tensorCount: 2n ** 60n }), "tensor count", "1152921504606846976");
    rejects(gguf({ tensorCount: 2n ** 64n - 1n }), "tensor count", "18446744073709551615");
    rejects(gguf({ tensorCount: 100_000 }), "tensor count 100000 cannot fit");
    rejects(gguf({ kvCount: 1_000_000 }), "metadata count 1000000 cannot fit");
    rejects(gguf({ kvCount: 2n ** 63n }), "metadata count", "9223372036854775808");
    // one more pair than written: the tensor infos are read as a pair and do not make sense as one
    ggufError(() => new GGUFFile(gguf({ kvCount: 3 })));
    // one tensor more than written: the padding and data are read as a tensor info
    ggufError(() => new GGUFFile(gguf({ tensorCount: 3 })));
  });

  test("strings past the end", () => {
    rejects(gguf({ kv: [(w) => w.str("general.name", 1000)] }), "metadata key #0", "needs 1000 bytes");
    rejects(gguf({ kv: [(w) => w.str("general.name").u32(T.STRING).str("x", 5000)] }), "metadata general.name", "needs 5000 bytes");
    rejects(gguf({ kv: [(w) => w.str("general.name").u32(T.STRING).str("x", 2n ** 40n)] }), "metadata general.name", "string length 1099511627776 is too large");
    rejects(gguf({ kv: [(w) => w.str("general.name").u32(T.STRING).str("x", 2n ** 64n - 1n)] }), "metadata general.name", "string length 18446744073709551615 is too large");
    // the tensor name's length field sits right after the 24-byte header (no kv pairs here)
    const noKv = gguf({ kv: [], tensors: [{ name: "a", dims: [8], type: F32, offset: 0 }] });
    expect(new GGUFFile(noKv).tensors.size).toBe(1);
    rejects(noKv.subarray(0, 30), "tensor #0 name (string length)", "needs 8 bytes at offset 24");
    new DataView(noKv.buffer).setBigUint64(24, 777n, true);
    rejects(noKv, "tensor #0 name", "needs 777 bytes");
  });

  test("arrays: count * item size past the end, bad item types, nesting", () => {
    rejects(gguf({ kv: [kvRaw("tokenizer.ggml.scores", T.ARRAY, (w) => w.u32(T.FLOAT32).u64(1_000_000).f32(1))] }), "metadata tokenizer.ggml.scores", "1000000 FLOAT32", "does not fit");
    rejects(gguf({ kv: [kvRaw("tokenizer.ggml.tokens", T.ARRAY, (w) => w.u32(T.STRING).u64(2n ** 50n))] }), "metadata tokenizer.ggml.tokens", "1125899906842624 STRING", "does not fit");
    rejects(gguf({ kv: [kvRaw("x", T.ARRAY, (w) => w.u32(T.UINT64).u64(2n ** 63n))] }), "metadata x (array length)", "9223372036854775808 is out of range");
    rejects(gguf({ kv: [kvRaw("x", T.ARRAY, (w) => w.u32(T.ARRAY).u64(100_000))] }), "metadata x", "100000 ARRAY", "does not fit");
    // the count fits the file, but an item string runs past the end
    rejects(gguf({ kv: [kvRaw("tokenizer.ggml.tokens", T.ARRAY, (w) => w.u32(T.STRING).u64(2).str("a").str("b", 900))] }), "metadata tokenizer.ggml.tokens[1]", "needs 900 bytes");
    rejects(gguf({ kv: [kvRaw("x", T.ARRAY, (w) => w.u32(13).u64(0))] }), "metadata x", "unknown array item type 13");
    rejects(gguf({ kv: [kvRaw("x", T.ARRAY, (w) => w.u32(0xffffffff).u64(0))] }), "metadata x", "unknown array item type 4294967295");
    rejects(gguf({ kv: [kvRaw("x", T.ARRAY, (w) => nested(w, 5))] }), "metadata x", "nested deeper than 4");
    const ok = new GGUFFile(gguf({ kv: [kvRaw("x", T.ARRAY, (w) => nested(w, 4))] }));
    const x = ok.get("x", "array");
    expect(x.itemType).toBe(GGUFValueType.ARRAY);
    expect(((((x.values as GGUFArray[])[0]!.values as GGUFArray[])[0]!.values as GGUFArray[])[0]!).length).toBe(0);
    // numeric arrays come back as typed arrays with the right values
    const arr = new GGUFFile(gguf({ kv: [kvRaw("s", T.ARRAY, (w) => w.u32(T.INT16).u64(3).u32(0xffff0001).u8(2).u8(0))] })).get("s", "array");
    expect(Array.from(arr.values as Int16Array)).toEqual([1, -1, 2]);
  });

  test("unknown value types and bad bools", () => {
    rejects(gguf({ kv: [kvRaw("general.foo", 13, (w) => w.u32(0))] }), "metadata general.foo", "unknown value type 13");
    rejects(gguf({ kv: [kvRaw("general.foo", 0xffffffff, (w) => w.u32(0))] }), "metadata general.foo", "unknown value type 4294967295");
    rejects(gguf({ kv: [kvRaw("tokenizer.ggml.add_bos_token", T.BOOL, (w) => w.u8(7))] }), "metadata tokenizer.ggml.add_bos_token", "bool value 7");
    rejects(gguf({ kv: [kvRaw("flags", T.ARRAY, (w) => w.u32(T.BOOL).u64(3).u8(1).u8(7).u8(0))] }), "metadata flags[1]", "bool value 7");
    // a scalar cut off by the end of the file
    rejects(gguf({ kv: [kvRaw("x", T.UINT64, (w) => w.u32(1))], tensors: [], data: 0, align: 1 }), "metadata x", "needs 8 bytes");
  });

  test("duplicate keys and tensor names", () => {
    rejects(gguf({ kv: [kvStr("general.architecture", "llama"), kvStr("general.architecture", "qwen2")] }), "metadata general.architecture appears twice");
    rejects(gguf({ tensors: [BASE_TENSORS[0]!, { ...BASE_TENSORS[1]!, name: "a" }] }), "tensor a appears twice");
  });

  test("tensor dims", () => {
    rejects(gguf({ tensors: [{ ...BASE_TENSORS[0]!, dims: [], nDims: 0 }] }), "tensor a", "0 dimensions");
    rejects(gguf({ tensors: [{ ...BASE_TENSORS[0]!, dims: [32, 1, 1, 1, 1], nDims: 5 }] }), "tensor a", "5 dimensions");
    rejects(gguf({ tensors: [{ ...BASE_TENSORS[0]!, dims: [32], nDims: 0xffffffff }] }), "tensor a", "4294967295 dimensions");
    rejects(gguf({ tensors: [{ ...BASE_TENSORS[0]!, dims: [32, 0] }] }), "tensor a", "dimension 1 is 0");
    rejects(gguf({ tensors: [{ ...BASE_TENSORS[0]!, dims: [2 ** 20, 2 ** 20, 2 ** 20] }] }), "tensor a", "1048576 x 1048576 x 1048576", "2^53");
    rejects(gguf({ tensors: [{ ...BASE_TENSORS[0]!, dims: [2 ** 26, 2 ** 26, 4] }] }), "tensor a", "67108864 x 67108864 x 4", "2^53");
    rejects(gguf({ tensors: [{ ...BASE_TENSORS[0]!, dims: [2n ** 60n] }] }), "tensor a dimension 0", "1152921504606846976 is out of range");
    // big but representable: a clean "beyond the end", not a wrong size
    rejects(gguf({ tensors: [{ ...BASE_TENSORS[0]!, dims: [2 ** 26, 2 ** 26] }] }), "tensor a", "beyond the end");
  });

  test("tensor types, block sizes, offsets", () => {
    rejects(gguf({ tensors: [{ ...BASE_TENSORS[0]!, type: 99 }] }), "tensor a", "unknown type id 99");
    rejects(gguf({ tensors: [{ ...BASE_TENSORS[0]!, type: 0xffffffff }] }), "tensor a", "unknown type id 4294967295");
    rejects(gguf({ tensors: [{ name: "q", dims: [33, 2], type: Q4_0, offset: 0 }] }), "tensor q", "first dimension 33 is not a multiple of the Q4_0 block size 32");
    rejects(gguf({ tensors: [{ name: "q", dims: [8, 32], type: Q8_0, offset: 0 }] }), "tensor q", "first dimension 8", "Q8_0");
    rejects(gguf({ tensors: [{ ...BASE_TENSORS[0]!, offset: 16 }] }), "tensor a", "data offset 16 is not a multiple of the alignment 32");
    rejects(gguf({ tensors: [BASE_TENSORS[0]!, { ...BASE_TENSORS[1]!, offset: 1024 }] }), "tensor b", "beyond the end");
    rejects(gguf({ data: 100 }), "tensor a", "beyond the end", "truncated?");
    rejects(gguf({ tensors: [{ ...BASE_TENSORS[0]!, offset: 2n ** 64n - 32n }] }), "tensor a (offset)", "18446744073709551584 is out of range");
    rejects(gguf({ tensors: [{ ...BASE_TENSORS[0]!, offset: 2 ** 52 }] }), "tensor a", "beyond the end");
    // a type whose block size dairllm does not know loads, but has no view
    const iq = new GGUFFile(gguf({ tensors: [{ name: "iq", dims: [256], type: 16, offset: 0 }] }));
    expect(iq.tensor("iq").nBytes).toBe(-1);
    expect(ggufError(() => iq.view("iq")).message).toContain("tensor iq: type IQ2_XXS is not supported");
    expect(ggmlTypeName(99)).toBe("type 99");
    expect(ggmlTypeName(F16)).toBe("F16");
  });

  test("general.alignment", () => {
    rejects(gguf({ kv: [kvU32("general.alignment", 0)] }), "general.alignment 0 is not a power of two");
    rejects(gguf({ kv: [kvU32("general.alignment", 3)] }), "general.alignment 3 is not a power of two");
    rejects(gguf({ kv: [kvU32("general.alignment", 1 << 20)] }), "general.alignment 1048576");
    rejects(gguf({ kv: [kvStr("general.alignment", "32")] }), 'general.alignment is a string ("32"), expected an integer');
    rejects(gguf({ kv: [kvU64("general.alignment", 2n ** 60n)] }), "general.alignment is a 64-bit integer beyond 2^53 (1152921504606846976)");
    rejects(gguf({ kv: [kvRaw("general.alignment", T.ARRAY, (w) => w.u32(T.UINT32).u64(1).u32(32))] }), "general.alignment is an array of UINT32");
    // a valid non-default alignment moves the data section and is enforced on offsets
    const a64 = (off: number) => gguf({ kv: [kvU32("general.alignment", 64)], tensors: [{ name: "a", dims: [16], type: F32, offset: off }], align: 64, data: 256 });
    const g = new GGUFFile(a64(64));
    expect(g.alignment).toBe(64);
    expect(g.dataOffset % 64).toBe(0);
    expect(g.tensor("a").offset).toBe(g.dataOffset + 64);
    rejects(a64(32), "tensor a", "data offset 32 is not a multiple of the alignment 64");
  });

  test("metadata of the wrong kind is a GGUFError naming the key", () => {
    const g = new GGUFFile(gguf({ kv: [kvU64("big", 2n ** 60n), kvStr("s", "x"), kvU32("n", 5)] }), "k.gguf");
    expect(ggufError(() => g.get("big", "number")).message).toBe("k.gguf: metadata big is a 64-bit integer beyond 2^53 (1152921504606846976), expected a number");
    expect(ggufError(() => g.get("s", "number")).message).toBe('k.gguf: metadata s is a string ("x"), expected a number');
    expect(ggufError(() => g.get("n", "array")).message).toBe("k.gguf: metadata n is a number (5), expected a array");
    expect(g.get("n", "number")).toBe(5);
    expect(g.get("missing", "number", 7)).toBe(7);
  });

  test("100 000 tensor infos parse in linear time", () => {
    // was O(n^2): duplicate names were looked up with infos.some(), 40 000 tensors took ~4 s
    const n = 100_000;
    const tensors: TensorSpec[] = [];
    for (let i = 0; i < n; i++) tensors.push({ name: `t${i}`, dims: [8], type: F32, offset: 0 });
    const bytes = gguf({ kv: [], tensors, data: 32 });
    const t0 = performance.now();
    const g = new GGUFFile(bytes);
    expect(g.tensors.size).toBe(n);
    expect(performance.now() - t0).toBeLessThan(2000);
    // and a duplicate at the very end is still found
    tensors.push({ name: "t5", dims: [8], type: F32, offset: 0 });
    rejects(gguf({ kv: [], tensors, data: 32 }), "tensor t5 appears twice");
  }, 20_000);
});

describe("GGUFFile.open", () => {
  let dir = "";
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "dairllm-gguf-"));
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  test("a missing path, a directory, an empty file", () => {
    const missing = join(dir, "missing.gguf");
    expect(ggufError(() => GGUFFile.open(missing)).message).toBe(`${missing}: no such file`);
    mkdirSync(join(dir, "sub"));
    expect(ggufError(() => GGUFFile.open(join(dir, "sub"))).message).toBe(`${join(dir, "sub")}: not a regular file`);
    writeFileSync(join(dir, "empty.gguf"), new Uint8Array(0));
    expect(ggufError(() => GGUFFile.open(join(dir, "empty.gguf"))).message).toBe(`${join(dir, "empty.gguf")}: the file is empty`);
  });

  test("a good file maps and views without copying; a bad one names the path", () => {
    const good = join(dir, "good.gguf");
    writeFileSync(good, gguf());
    const g = GGUFFile.open(good);
    expect(g.path).toBe(good);
    expect(g.view("a").buffer).toBe(g.bytes.buffer);
    expect(g.view("b").byteOffset).toBe(g.dataOffset + 256);
    const bad = join(dir, "truncated.gguf");
    writeFileSync(bad, gguf().subarray(0, 40));
    expect(ggufError(() => GGUFFile.open(bad)).message.startsWith(`${bad}: `)).toBe(true);
    const text = join(dir, "notes.txt");
    writeFileSync(text, "hello");
    expect(ggufError(() => GGUFFile.open(text)).message).toContain('not a GGUF file (magic "hell"');
  });
});
