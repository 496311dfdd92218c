import { expect, test } from "bun:test";
import type { ModelConfig } from "../src/model/config";
import { join } from "node:path";
import { partition, splitVocab } from "../src/cluster/partition";
import { outputTensorName, sliceOffsets } from "../src/cluster/plan";
import { readConfig } from "../src/model/config";
import { GGUFFile } from "../src/model/gguf";
import { typeBytes } from "../src/native/types";

const cfg = (heads: number, kv: number, headDim: number, hidden: number) => ({ nHeads: heads, nKvHeads: kv, headDim, hiddenDim: hidden }) as ModelConfig;

test("shares cover every head and feed-forward unit once, in order, differing by at most one unit", () => {
  for (const [heads, kv, hd, hidden, nodes] of [[32, 8, 64, 5632, 3], [32, 4, 64, 5632, 4], [10, 10, 64, 1024, 5], [6, 3, 32, 544, 3], [6, 2, 64, 1024, 3], [32, 32, 128, 11008, 7]]) {
    const slices = partition(cfg(heads!, kv!, hd!, hidden!), nodes!);
    expect(slices.length).toBe(nodes!);
    let h = 0, f = 0;
    for (const s of slices) {
      expect(s.heads.start).toBe(h);
      expect(s.ffn.start).toBe(f);
      expect(s.ffn.start % 32).toBe(0);
      h = s.heads.end;
      f = s.ffn.end;
    }
    expect(h).toBe(heads!);
    expect(f).toBe(hidden!);
    const sizes = slices.map((s) => s.heads.end - s.heads.start);
    expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(heads! / kv!);
  }
});

test("3 nodes on 32 heads / 8 KV heads: whole KV groups (3, 3, 2)", () => {
  const s = partition(cfg(32, 8, 64, 5632), 3);
  expect(s.map((x) => [x.kvHeads.start, x.kvHeads.end])).toEqual([[0, 3], [3, 6], [6, 8]]);
  expect(s.map((x) => [x.heads.start, x.heads.end])).toEqual([[0, 12], [12, 24], [24, 32]]);
});

test("more nodes than KV heads: query heads split, shared KV heads computed by both", () => {
  const s = partition(cfg(6, 2, 64, 1024), 3);
  expect(s.map((x) => [x.heads.start, x.heads.end, x.kvHeads.start, x.kvHeads.end])).toEqual([[0, 2, 0, 1], [2, 4, 0, 2], [4, 6, 1, 2]]);
});

test("impossible splits are refused with a reason", () => {
  expect(() => partition(cfg(4, 2, 64, 1024), 5)).toThrow(/more than the model's 4 attention heads/);
  expect(() => partition(cfg(10, 2, 64, 1024), 3)).toThrow(/cannot share this model's 10 heads/);
  expect(() => partition(cfg(4, 4, 64, 1000), 2)).toThrow(/feed-forward size 1000 is not a multiple/);
  expect(() => partition(cfg(4, 4, 16, 1024), 2)).toThrow(/not a multiple of the 32-value block/);
});

test("the vocabulary (logits rows) is cut into contiguous shares covering every row once", () => {
  for (const [vocab, nodes] of [[32000, 2], [32000, 3], [151936, 7], [5, 5], [1000, 1]] as const) {
    const r = splitVocab(vocab, nodes);
    expect(r.length).toBe(nodes);
    expect(r[0]!.start).toBe(0);
    for (let i = 1; i < nodes; i++) expect(r[i]!.start).toBe(r[i - 1]!.end);
    expect(r[nodes - 1]!.end).toBe(vocab);
    const sizes = r.map((x) => x.end - x.start);
    expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(1);
  }
  expect(() => splitVocab(32000, 0)).toThrow(/node count/);
});

test("a plan with the logits ends with the first of the node's output rows", () => {
  for (const name of ["tiny-q4_0", "qwen2-tiny-q8_0", "mini-f32"]) {
    const g = GGUFFile.open(join(import.meta.dir, "fixtures", "models", `${name}.gguf`));
    const c = readConfig(g);
    const s = partition(c, 2, 32)[1]!;
    const rows = splitVocab(c.vocabSize, 2)[1]!;
    const plain = sliceOffsets(g, c, s), withLogits = sliceOffsets(g, c, s, rows);
    expect(withLogits.slice(0, plain.length)).toEqual(plain);
    expect(withLogits.length).toBe(plain.length + 1);
    const name_ = outputTensorName(g), t = g.tensor(name_);
    const last = withLogits[withLogits.length - 1]!;
    expect(last.tensor).toBe([...g.tensors.keys()].indexOf(name_));
    expect(last.offset).toBe(t.offset + rows.start * typeBytes(t.type, t.dims[0]!));
  }
});
