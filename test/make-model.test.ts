// scripts/make-model.ts: generated models of every type and architecture load (GGUF reader, config,
// weights, tokenizer) and run through the engine with finite logits; files are a pure function of the
// options and the seed (not of the thread count); the quantized weights are the generator's float
// weights quantized by ggml's reference rules (bit-exact against the fixtures' quantizations); bad
// options exit with code 2 naming the option. Small shapes only: the big presets are only planned.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  encode,
  MakeModelError,
  type MakeModelOptions,
  makeModel,
  PART_VALUES,
  PRESETS,
  planFile,
  resolveSpec,
  SEGMENT,
  syntheticVocab,
  tensorValues,
} from "../scripts/make-model";
import { readConfig } from "../src/model/config";
import { GGUFFile } from "../src/model/gguf";
import { LlamaModel, loadWeights } from "../src/model/llama";
import { TokenAttr, Tokenizer } from "../src/model/tokenizer";
import { createNativeKernels } from "../src/native/ffi";
import { createTsKernels, f16BitsToF32, f32ToF16Bits } from "../src/native/ts-kernels";
import type { GGMLType } from "../src/native/types";

const ROOT = join(import.meta.dir, "..");
const SCRIPT = join(ROOT, "scripts", "make-model.ts");
const FIXTURES = join(import.meta.dir, "fixtures", "models");
const DIR = mkdtempSync(join(tmpdir(), "dairllm-make-model-"));
const native = createNativeKernels(2);
const ts = createTsKernels();
afterAll(() => {
  native.close();
  rmSync(DIR, { recursive: true, force: true });
});

const GGML_ID = { f32: 0, f16: 1, q8_0: 8, q4_0: 2 } as const;
const FILE_TYPE = { f32: 0, f16: 1, q8_0: 7, q4_0: 2 } as const;

interface Variant {
  name: string;
  opts: Omit<MakeModelOptions, "out">;
}
const VARIANTS: Variant[] = [
  { name: "llama-f32", opts: { preset: "tiny", type: "f32", seed: 1 } },
  { name: "llama-f16", opts: { preset: "tiny", type: "f16", seed: 1 } },
  { name: "llama-q8_0", opts: { preset: "tiny", type: "q8_0", seed: 1 } },
  { name: "llama-q4_0", opts: { preset: "tiny", type: "q4_0", seed: 1 } },
  { name: "llama-q4_0-tied-odd", opts: { dim: 192, ffn: 544, layers: 3, heads: 6, kvHeads: 3, vocab: 1000, ctx: 128, type: "q4_0", tied: true, seed: 2 } },
  { name: "qwen2-q8_0", opts: { preset: "tiny", arch: "qwen2", type: "q8_0", seed: 3 } },
  { name: "qwen2-f32", opts: { preset: "tiny", arch: "qwen2", type: "f32", seed: 3 } },
  { name: "qwen3-q4_0-headdim", opts: { preset: "tiny", arch: "qwen3", type: "q4_0", headDim: 32, seed: 4 } },
  { name: "qwen3-f16", opts: { preset: "tiny", arch: "qwen3", type: "f16", seed: 4 } },
];

const made = new Map<string, { path: string; bytes: number }>();
async function model(v: Variant): Promise<{ path: string; bytes: number }> {
  let m = made.get(v.name);
  if (!m) {
    m = await makeModel({ ...v.opts, out: join(DIR, `${v.name}.gguf`) });
    made.set(v.name, m);
  }
  return m;
}

/** The float values of a tensor of the file, dequantized by the TypeScript kernels. */
function dequantized(g: GGUFFile, name: string): Float32Array {
  const t = g.tensor(name);
  const out = new Float32Array(t.nElements);
  ts.dequantize(out, g.view(name), t.type as GGMLType, t.nElements);
  return out;
}

describe("generated models load and run", () => {
  for (const v of VARIANTS) {
    test(v.name, async () => {
      const { path, bytes } = await model(v);
      const spec = resolveSpec(v.opts);
      const type = spec.type;
      expect(statSync(path).size).toBe(bytes);

      // file layout
      const g = GGUFFile.open(path);
      expect(g.version).toBe(3);
      expect(g.alignment).toBe(32);
      expect(g.dataOffset % 32).toBe(0);
      expect(g.get("general.file_type", "number")).toBe(FILE_TYPE[type]);
      expect(g.get("general.architecture", "string")).toBe(spec.arch);
      let end = 0;
      for (const t of g.tensors.values()) {
        expect(t.offset % 32).toBe(0);
        const isVector = t.dims.length === 1;
        expect(t.type).toBe(isVector ? 0 : GGML_ID[type]);
        end = Math.max(end, t.offset + t.nBytes);
      }
      expect(bytes - end).toBeLessThan(32);
      const perLayer = 9 + (spec.arch === "qwen2" ? 3 : spec.arch === "qwen3" ? 2 : 0);
      expect(g.tensors.size).toBe(2 + (spec.tied ? 0 : 1) + spec.layers * perLayer);
      expect(g.tensors.has("output.weight")).toBe(!spec.tied);
      expect(g.tensors.has("blk.0.attn_q.bias")).toBe(spec.arch === "qwen2");
      expect(g.tensors.has("blk.1.attn_k_norm.weight")).toBe(spec.arch === "qwen3");
      expect(g.has(`${spec.arch}.attention.key_length`)).toBe(spec.headDim !== spec.dim / spec.heads);

      // config
      const c = readConfig(g);
      expect(c).toMatchObject({
        arch: spec.arch,
        dim: spec.dim,
        hiddenDim: spec.ffn,
        nLayers: spec.layers,
        nHeads: spec.heads,
        nKvHeads: spec.kvHeads,
        headDim: spec.headDim,
        nRot: spec.headDim,
        vocabSize: spec.vocab,
        contextLength: spec.ctx,
        ropeBase: spec.arch === "llama" ? 10000 : 1000000,
        rmsEps: Math.fround(spec.arch === "llama" ? 1e-5 : 1e-6),
      });

      // weights
      const w = loadWeights(g, c);
      expect(w.output === w.tokenEmbd).toBe(spec.tied);
      expect(w.layers[0]!.bq !== null).toBe(spec.arch === "qwen2");
      expect(w.layers[0]!.qNorm?.length ?? 0).toBe(spec.arch === "qwen3" ? spec.headDim : 0);
      expect(w.layers.at(-1)!.ffnNorm.every((x) => x === 1)).toBe(true);

      // tokenizer
      const tok = Tokenizer.fromGGUF(g);
      expect(tok.vocabSize).toBe(spec.vocab);
      const text = "Once upon a time, the quick brown fox jumps over 12 lazy dogs! é";
      const ids = tok.encode(text, { addSpecial: true, parseSpecial: true });
      expect(ids[0]).toBe(1);
      expect(tok.decode(ids.slice(1))).toBe(text); // the space prefix is removed again
      expect(tok.encode("the", { addSpecial: false, parseSpecial: false })).toEqual([tok.textToToken("\u2581the")]);

      // one forward pass
      const m = new LlamaModel(c, w, native);
      const prompt = ids.slice(0, 6);
      const logits = await m.forward(prompt, 0, m.newCache(16), true);
      expect(logits.length).toBe(prompt.length * spec.vocab);
      let min = Infinity, max = -Infinity;
      for (const x of logits) {
        if (!Number.isFinite(x)) throw new Error(`${v.name}: a logit is ${x}`);
        min = Math.min(min, x);
        max = Math.max(max, x);
      }
      expect(max - min).toBeGreaterThan(0.01);
      expect(Math.max(-min, max)).toBeLessThan(100);
      // the next position through the cache as well
      const next = await m.forward([5], prompt.length, m.newCache(16));
      expect(next.every(Number.isFinite)).toBe(true);
    });
  }
});

describe("determinism", () => {
  const opts = { preset: "tiny", type: "q4_0", seed: 7 } as const;

  test("the same seed gives a byte-identical file, with one thread or with workers", async () => {
    const a = await makeModel({ ...opts, out: join(DIR, "seed7-a.gguf"), threads: 1 });
    const b = await makeModel({ ...opts, out: join(DIR, "seed7-b.gguf"), threads: 2 });
    expect(b.bytes).toBe(a.bytes);
    expect(Buffer.compare(readFileSync(a.path), readFileSync(b.path))).toBe(0);
  });

  test("a tensor of several segments and parts: the same with 1 and 2 threads, the quantized tensorValues", async () => {
    const o = { dim: 64, ffn: 64, layers: 1, heads: 2, vocab: 80000, ctx: 16, type: "q4_0", seed: 11 } as const;
    const n = o.dim * o.vocab;
    expect(n).toBeGreaterThan(PART_VALUES);
    expect(n % SEGMENT).not.toBe(0);
    const a = await makeModel({ ...o, out: join(DIR, "parts-1.gguf"), threads: 1 });
    const b = await makeModel({ ...o, out: join(DIR, "parts-2.gguf"), threads: 2 });
    expect(Buffer.compare(readFileSync(a.path), readFileSync(b.path))).toBe(0);
    const g = GGUFFile.open(a.path);
    for (const name of ["token_embd.weight", "output.weight"]) {
      const want = new Uint8Array(n);
      const len = encode("q4_0", tensorValues(o.seed, name, n), n, want);
      expect(Buffer.compare(g.view(name), want.subarray(0, len))).toBe(0);
    }
  });

  test("another seed gives different weights (and the same layout)", async () => {
    const a = GGUFFile.open((await makeModel({ ...opts, out: join(DIR, "seed7-c.gguf") })).path);
    const b = GGUFFile.open((await makeModel({ ...opts, out: join(DIR, "seed8.gguf"), seed: 8 })).path);
    expect(b.bytes.length).toBe(a.bytes.length);
    expect(Buffer.compare(a.bytes, b.bytes)).not.toBe(0);
    for (const t of a.tensors.values()) {
      expect(b.tensor(t.name).offset).toBe(t.offset);
      const same = Buffer.compare(a.view(t.name), b.view(t.name)) === 0;
      expect(same).toBe(t.name.endsWith("norm.weight")); // norms are 1.0 whatever the seed
    }
  });

  test("tensorValues: a tensor's stream does not depend on how it is cut into chunks", () => {
    const all = tensorValues(5, "blk.0.ffn_up.weight", 1001);
    expect(tensorValues(5, "blk.0.ffn_up.weight", 7)).toEqual(all.subarray(0, 7));
    expect(tensorValues(5, "blk.0.ffn_up.weight", 1001)).toEqual(all);
    expect(tensorValues(6, "blk.0.ffn_up.weight", 7)).not.toEqual(all.subarray(0, 7));
    expect(tensorValues(5, "blk.0.ffn_down.weight", 7)).not.toEqual(all.subarray(0, 7));
  });

  test("tensorValues: normal(0, 0.02)", () => {
    const x = tensorValues(0, "token_embd.weight", 1 << 18);
    let s = 0, s2 = 0, s4 = 0;
    for (const v of x) {
      s += v;
      s2 += v * v;
    }
    const mean = s / x.length, sd = Math.sqrt(s2 / x.length - mean * mean);
    for (const v of x) s4 += ((v - mean) / sd) ** 4;
    expect(Math.abs(mean)).toBeLessThan(2e-4);
    expect(Math.abs(sd - 0.02)).toBeLessThan(2e-4);
    expect(Math.abs(s4 / x.length - 3)).toBeLessThan(0.1); // kurtosis of a normal
  });
});

describe("stored weights are the generator's float weights", () => {
  const matrices = (g: GGUFFile) => [...g.tensors.values()].filter((t) => t.dims.length === 2).map((t) => t.name);

  test("F32 exactly, F16 rounded to nearest even", async () => {
    for (const [v, round] of [
      [VARIANTS[0]!, (x: number) => x],
      [VARIANTS[1]!, (x: number) => f16BitsToF32(f32ToF16Bits(x))],
    ] as const) {
      const seed = v.opts.seed!;
      const g = GGUFFile.open((await model(v)).path);
      for (const name of matrices(g)) {
        const want = tensorValues(seed, name, g.tensor(name).nElements).map(round);
        expect(dequantized(g, name)).toEqual(want);
      }
    }
  });

  for (const [vi, type] of [[2, "q8_0"], [3, "q4_0"], [4, "q4_0"]] as const) {
    test(`${VARIANTS[vi]!.name}: within ggml's ${type} rounding of every block`, async () => {
      const v = VARIANTS[vi]!;
      const g = GGUFFile.open((await model(v)).path);
      let errSq = 0, valSq = 0;
      for (const name of matrices(g)) {
        const n = g.tensor(name).nElements;
        const x = tensorValues(v.opts.seed!, name, n);
        const y = dequantized(g, name);
        for (let b = 0; b < n; b += 32) {
          let amax = 0;
          for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b + j]!));
          // q8_0: half a step of amax/127; q4_0: a step of amax/8 (the clamp at +7), half a step elsewhere;
          // plus the fp16 rounding of the scale
          const bound = (type === "q8_0" ? amax / 254 : amax / 8) + amax * 2 ** -10;
          for (let j = 0; j < 32; j++) {
            const e = Math.abs(y[b + j]! - x[b + j]!);
            if (!(e <= bound)) throw new Error(`${name}[${b + j}]: ${y[b + j]} for ${x[b + j]} (bound ${bound})`);
            errSq += e * e;
            valSq += x[b + j]! ** 2;
          }
        }
      }
      expect(Math.sqrt(errSq / valSq)).toBeLessThan(type === "q8_0" ? 0.01 : 0.12);
    });
  }

  test("qwen2 biases are stored exactly, norms are 1.0", async () => {
    const v = VARIANTS.find((x) => x.name === "qwen2-q8_0")!;
    const g = GGUFFile.open((await model(v)).path);
    for (const name of ["blk.0.attn_q.bias", "blk.1.attn_k.bias", "blk.1.attn_v.bias"]) {
      expect(dequantized(g, name)).toEqual(tensorValues(v.opts.seed!, name, g.tensor(name).nElements));
    }
    expect(dequantized(g, "output_norm.weight").every((x) => x === 1)).toBe(true);
  });

  test("encode() reproduces the fixtures' F16 / Q8_0 / Q4_0 files from their F32 weights, bit for bit", () => {
    for (const [from, to, type] of [
      ["tiny-f32", "tiny-f16", "f16"],
      ["tiny-f32", "tiny-q8_0", "q8_0"],
      ["tiny-f32", "tiny-q4_0", "q4_0"],
      ["mini-f32", "mini-q4_0", "q4_0"],
      ["qwen2-tiny-f32", "qwen2-tiny-q8_0", "q8_0"],
    ] as const) {
      const src = GGUFFile.open(join(FIXTURES, `${from}.gguf`));
      const dst = GGUFFile.open(join(FIXTURES, `${to}.gguf`));
      let checked = 0;
      for (const t of dst.tensors.values()) {
        if (t.type === 0) continue;
        const x = new Float32Array(src.view(t.name).slice().buffer);
        const out = new Uint8Array(x.length * 4);
        const n = encode(type, x, x.length, out);
        expect(n).toBe(t.nBytes);
        if (Buffer.compare(out.subarray(0, n), dst.view(t.name)) !== 0) throw new Error(`${to}: ${t.name} differs`);
        checked++;
      }
      expect(checked).toBeGreaterThan(10);
    }
  });
});

describe("tokenizer and presets", () => {
  test("the synthetic vocabulary: fixture layout, unique texts, any size", () => {
    for (const n of [260, 512, 2048, 32000, 100000]) {
      const { tokens, scores, types } = syntheticVocab(n);
      expect(tokens.length).toBe(n);
      expect(new Set(tokens).size).toBe(n);
      expect(tokens.slice(0, 4)).toEqual(["<unk>", "<s>", "</s>", "<0x00>"]);
      expect(tokens[258]).toBe("<0xFF>");
      expect(tokens[259]).toBe("\u2581");
      expect([types[0], types[1], types[2], types[3], types[258], types[259], types[n - 1]]).toEqual([2, 3, 3, 6, 6, 1, 1]);
      expect([scores[258], scores[259], scores[n - 1]]).toEqual([0, -1, -(n - 259)]);
    }
    // the single characters and "▁"+character pieces are the fixtures'
    const fixture = GGUFFile.open(join(FIXTURES, "tiny-q4_0.gguf")).get("tokenizer.ggml.tokens", "array").values as string[];
    expect(syntheticVocab(512).tokens.slice(0, 448)).toEqual(fixture.slice(0, 448));
  });

  test("a 32000-token vocabulary tokenizes words into multi-letter pieces", async () => {
    const { path } = await makeModel({ out: join(DIR, "vocab32k.gguf"), dim: 32, ffn: 32, layers: 1, heads: 1, vocab: 32000, ctx: 16, type: "f32" });
    const tok = Tokenizer.fromGGUF(GGUFFile.open(path));
    const ids = tok.encode("the people of the world", { addSpecial: false, parseSpecial: false });
    expect(ids.map((i) => tok.tokenText(i))).toEqual(["\u2581the", "\u2581people", "\u2581of", "\u2581the", "\u2581world"]);
    expect(tok.tokenAttr(3) & TokenAttr.BYTE).toBeTruthy();
    // a character outside the vocabulary is spelled as its UTF-8 bytes
    expect(tok.encode("\u4e2d", { addSpecial: false, parseSpecial: false })).toEqual([259, 3 + 0xe4, 3 + 0xb8, 3 + 0xad]);
  });

  test("tinyllama preset: TinyLlama-1.1B's shape, ~620 MB as Q4_0 (planned, not written)", () => {
    const spec = resolveSpec({ preset: "tinyllama" });
    expect(spec).toMatchObject({ arch: "llama", type: "q4_0", dim: 2048, ffn: 5632, layers: 22, heads: 32, kvHeads: 4, headDim: 64, vocab: 32000, ctx: 2048, ropeBase: 10000, rmsEps: 1e-5 });
    const plan = planFile(spec);
    expect(plan.tensors.length).toBe(3 + 22 * 9);
    expect(plan.totalBytes).toBeGreaterThan(600e6);
    expect(plan.totalBytes).toBeLessThan(640e6);
    const f16 = planFile(resolveSpec({ preset: "tinyllama", type: "f16" }));
    expect(f16.totalBytes).toBeGreaterThan(2.1e9);
    for (const [name, p] of Object.entries(PRESETS)) {
      expect(resolveSpec({ preset: name as keyof typeof PRESETS })).toMatchObject({ dim: p.dim, ffn: p.ffn, layers: p.layers, heads: p.heads, kvHeads: p.kvHeads, vocab: p.vocab });
    }
  });

  test("progress reaches the total, and the size is the planned one", async () => {
    const seen: number[] = [];
    const r = await makeModel({ out: join(DIR, "progress.gguf"), preset: "tiny", progress: (done, total) => seen.push(done / total) });
    expect(seen.at(-1)).toBe(1);
    expect(seen.every((x, i) => i === 0 || x >= seen[i - 1]!)).toBe(true);
    expect(r.bytes).toBe(planFile(resolveSpec({ preset: "tiny" })).totalBytes);
  });
});

describe("command line", () => {
  const bun = process.execPath;
  const run = async (args: string[]) => {
    const p = Bun.spawn([bun, SCRIPT, ...args], { stdout: "pipe", stderr: "pipe", cwd: ROOT });
    const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    return { stdout, stderr, code };
  };

  test("writes a model, prints its path on stdout and progress on stderr", async () => {
    const out = join(DIR, "cli.gguf");
    const r = await run(["--out", out, "--preset", "tiny", "--type", "q8_0", "--arch", "qwen2", "--tied", "--seed", "9"]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(out);
    expect(r.stderr).toMatch(/make-model: wrote .*cli\.gguf: \d+ bytes/);
    const same = await makeModel({ out: join(DIR, "cli-module.gguf"), preset: "tiny", type: "q8_0", arch: "qwen2", tied: true, seed: 9 });
    expect(Buffer.compare(readFileSync(out), readFileSync(same.path))).toBe(0);
    const help = await run(["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("tinyllama");
  });

  test("bad options exit with code 2 and a message naming the option; nothing is written", async () => {
    const out = join(DIR, "bad", "never.gguf");
    const cases: [string[], string][] = [
      [[], "--out"],
      [["--dim", "64"], "--out"],
      [["--out", out, "--dim", "abc"], "--dim"],
      [["--out", out, "--dim", "-64"], "--dim"],
      [["--out", out, "--ffn", "100"], "--ffn"], // not a multiple of 32 for q4_0
      [["--out", out, "--layers", "0"], "--layers"],
      [["--out", out, "--heads", "5"], "--heads"],
      [["--out", out, "--kv-heads", "3"], "--kv-heads"],
      [["--out", out, "--vocab", "100"], "--vocab"],
      [["--out", out, "--ctx", "x"], "--ctx"],
      [["--out", out, "--head-dim", "7"], "--head-dim"],
      [["--out", out, "--type", "q5_k"], "--type"],
      [["--out", out, "--arch", "gpt2"], "--arch"],
      [["--out", out, "--preset", "huge"], "--preset"],
      [["--out", out, "--seed"], "--seed"],
      [["--out", out, "--tied=yes"], "--tied"],
      [["--out", out, "--threads", "0"], "--threads"],
      [["--out", out, "--bogus", "1"], "--bogus"],
      [["--out", out, "--dim", "64", "--dim", "64"], "--dim"],
    ];
    const results = await Promise.all(cases.map(([args]) => run(args)));
    results.forEach((r, i) => {
      const [args, option] = cases[i]!;
      if (r.code !== 2 || !r.stderr.includes(`${option}:`)) throw new Error(`${args.join(" ")}: exit ${r.code}, stderr ${JSON.stringify(r.stderr)}`);
    });
    expect(existsSync(join(DIR, "bad")) ? readdirSync(join(DIR, "bad")) : []).toEqual([]);
  });

  test("as a module, a bad option is a MakeModelError naming it", async () => {
    const out = join(DIR, "bad-module.gguf");
    const err = await makeModel({ out, dim: 100 }).catch((e) => e);
    expect(err).toBeInstanceOf(MakeModelError);
    expect((err as MakeModelError).option).toBe("--dim");
    expect(() => resolveSpec({ type: "q3_k" as never })).toThrow(/--type: unknown type "q3_k"/);
    expect(existsSync(out)).toBe(false);
  });
});
