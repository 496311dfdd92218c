// The forward pass against llama.cpp: for every fixture model, the logits of all 16 positions of the
// reference sequence within the fixture README's tolerances, and the 32-token greedy continuation
// identical. Run with the native kernels (default variant, 2 threads) and, for two models, the
// TypeScript kernels.
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { readConfig } from "../src/model/config";
import { GGUFFile } from "../src/model/gguf";
import { KVCache, LlamaModel, loadWeights } from "../src/model/llama";
import { createNativeKernels } from "../src/native/ffi";
import { createTsKernels } from "../src/native/ts-kernels";
import { GGMLType, type Kernels } from "../src/native/types";

const DIR = join(import.meta.dir, "fixtures", "models");
const MODELS = ["tiny-f32", "tiny-f16", "tiny-q8_0", "tiny-q4_0", "mini-f32", "mini-q8_0", "mini-q4_0", "odd-q4_0", "qwen2-tiny-f32", "qwen2-tiny-q8_0"];
const native = createNativeKernels(2);
afterAll(() => native.close());

interface Ref {
  tokens: number[];
  types: { matrices: string };
  max_abs_diff_vs_exact_math: number;
  rms_diff_vs_exact_math: number;
  greedy: { prompt: number[]; generated: number[]; steps: { margin: number }[] };
}

async function load(name: string, k: Kernels) {
  const g = GGUFFile.open(join(DIR, `${name}.gguf`));
  const c = readConfig(g);
  const ref = (await Bun.file(join(DIR, `${name}.ref.json`)).json()) as Ref;
  const want = new Float32Array(await Bun.file(join(DIR, `${name}.logits.f32`)).arrayBuffer());
  return { c, model: new LlamaModel(c, loadWeights(g, c), k), ref, want };
}

function argmax(v: Float32Array): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i]! > v[best]!) best = i; // ties to the lowest id, as llama.cpp
  return best;
}

async function check(name: string, k: Kernels) {
  const { c, model, ref, want } = await load(name, k);
  const got = await model.forward(ref.tokens, 0, new KVCache(c.contextLength, c), true);
  expect(got.length).toBe(want.length);
  let max = 0, sq = 0;
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i]! - want[i]!);
    if (!(d <= max)) max = Number.isNaN(d) ? Infinity : d;
    sq += d * d;
  }
  const rms = Math.sqrt(sq / want.length);
  const type = ref.types.matrices;
  const tol = type === "f32" ? 1e-5 : type === "f16" ? 1e-3 : 3 * ref.max_abs_diff_vs_exact_math;
  console.log(`${name} (${k.name}): logits max diff ${max.toExponential(2)} (tol ${tol.toExponential(2)}), rms ${rms.toExponential(2)}`);
  expect(max).toBeLessThanOrEqual(tol);
  if (type === "q8_0" || type === "q4_0") expect(rms).toBeLessThanOrEqual(3 * ref.rms_diff_vs_exact_math);

  // greedy: the prompt as one batch, then one token at a time through the cache
  const cache = new KVCache(c.contextLength, c);
  let logits = await model.forward(ref.greedy.prompt, 0, cache);
  const generated: number[] = [];
  for (let pos = ref.greedy.prompt.length; generated.length < ref.greedy.generated.length; pos++) {
    const next = argmax(logits);
    generated.push(next);
    logits = await model.forward([next], pos, cache);
  }
  expect(generated).toEqual(ref.greedy.generated);
}

describe("llama.cpp agreement (native kernels)", () => {
  for (const name of MODELS) test(name, () => check(name, native));
});

describe("llama.cpp agreement (TypeScript kernels)", () => {
  for (const name of ["tiny-q4_0", "qwen2-tiny-f32"]) test(name, () => check(name, createTsKernels()), 30_000);
});

test("a token outside the vocabulary and a position past the context are refused", async () => {
  const { c, model } = await load("tiny-f32", native);
  const cache = new KVCache(c.contextLength, c);
  await expect(model.forward([c.vocabSize], 0, cache)).rejects.toThrow(/token id 512 is outside the vocabulary/);
  await expect(model.forward([1, 2], c.contextLength - 1, cache)).rejects.toThrow(/exceed the context of 128/);
});

test("an F16 KV cache gives the same greedy continuation (tiny-f32, mini-q4_0)", async () => {
  for (const name of ["tiny-f32", "mini-q4_0"]) {
    const { c, model, ref } = await load(name, native);
    const cache = new KVCache(c.contextLength, c, GGMLType.F16);
    let logits = await model.forward(ref.greedy.prompt, 0, cache);
    const generated: number[] = [];
    for (let pos = ref.greedy.prompt.length; generated.length < 32; pos++) {
      generated.push(argmax(logits));
      logits = await model.forward([generated.at(-1)!], pos, cache);
    }
    expect(generated).toEqual(ref.greedy.generated);
  }
});

test("a weight of an unsupported type is refused with its name and type", async () => {
  const bytes = new Uint8Array(await Bun.file(join(DIR, "tiny-q4_0.gguf")).arrayBuffer());
  // tensor info: name (u64 length + bytes), u32 n_dims, u64 dims[2], u32 type, u64 offset
  const name = new TextEncoder().encode("blk.0.attn_q.weight");
  let at = -1;
  for (let i = 0; i < bytes.length - name.length && at < 0; i++) {
    if (name.every((b, j) => bytes[i + j] === b) && bytes[i - 8] === name.length) at = i + name.length;
  }
  expect(at).toBeGreaterThan(0);
  const dv = new DataView(bytes.buffer);
  expect(dv.getUint32(at, true)).toBe(2); // two dims
  expect(dv.getUint32(at + 4 + 16, true)).toBe(2); // Q4_0
  dv.setUint32(at + 4 + 16, 20, true); // IQ4_NL: the same block size, a type dairllm does not run
  const g = new GGUFFile(bytes, "patched.gguf");
  expect(() => loadWeights(g, readConfig(g))).toThrow("patched.gguf: blk.0.attn_q.weight: type IQ4_NL not supported (supported: F32, F16, BF16, Q8_0, Q4_0)");
});
