import { expect, test } from "bun:test";
import type { ModelConfig } from "../src/model/config";
import { join } from "node:path";
import { partition, splitRange, splitVocab, splitWeighted } from "../src/cluster/partition";
import { mulberry32 } from "../src/model/sampler";
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

test("weighted shares: in proportion, contiguous, at least one unit each; equal weights are the even split", () => {
  expect(splitWeighted(100, [3, 1])).toEqual([{ start: 0, end: 75 }, { start: 75, end: 100 }]);
  expect(splitWeighted(10, [1, 1, 1])).toEqual([0, 1, 2].map((i) => splitRange(10, 3, i)));
  expect(splitWeighted(10, [7, 7, 7])).toEqual([0, 1, 2].map((i) => splitRange(10, 3, i)));
  // a tiny weight still gets one unit (the KV heads of a slow node)
  expect(splitWeighted(4, [1000, 1, 1]).map((r) => r.end - r.start)).toEqual([2, 1, 1]);
  const rnd = mulberry32(5);
  for (let t = 0; t < 500; t++) {
    const k = 1 + Math.floor(rnd() * 6), n = k + Math.floor(rnd() * 3000);
    const w = Array.from({ length: k }, () => 1 + Math.floor(rnd() * (rnd() < 0.5 ? 10 : 100000)));
    const r = splitWeighted(n, w);
    const total = w.reduce((a, b) => a + b, 0);
    expect(r[0]!.start).toBe(0);
    expect(r[k - 1]!.end).toBe(n);
    for (let i = 0; i < k; i++) {
      if (i > 0) expect(r[i]!.start).toBe(r[i - 1]!.end);
      const size = r[i]!.end - r[i]!.start;
      expect(size).toBeGreaterThanOrEqual(1);
      // within one unit of the exact share, except where the minimum of one took from it
      if ((w[i]! * n) / total >= 1) expect(Math.abs(size - (w[i]! * n) / total)).toBeLessThan(k + 1);
    }
  }
});

test("a weighted partition: feed-forward, KV heads and logits rows follow the weights; bad weights are refused", () => {
  const c = { ...cfg(32, 8, 64, 5632), vocabSize: 32000 } as ModelConfig;
  const s = partition(c, 3, 32, [2, 1, 1]);
  expect(s.map((x) => x.ffn.end - x.ffn.start)).toEqual([2816, 1408, 1408]);
  expect(s.map((x) => x.kvHeads.end - x.kvHeads.start)).toEqual([4, 2, 2]);
  expect(s.map((x) => x.heads.end - x.heads.start)).toEqual([16, 8, 8]);
  expect(splitVocab(32000, 3, [2, 1, 1]).map((r) => r.end - r.start)).toEqual([16000, 8000, 8000]);
  // even weights give the unweighted partition exactly
  expect(partition(c, 3, 32, [5, 5, 5])).toEqual(partition(c, 3, 32));
  expect(() => partition(c, 3, 32, [1, 2])).toThrow("2 split weights for 3 nodes");
  expect(() => partition(c, 2, 32, [1, 0])).toThrow(/split weight 0 must be a whole number from 1/);
  expect(() => partition(c, 2, 32, [1, 1.5])).toThrow(/split weight 1.5/);
  // more nodes than KV heads: the heads stay even, the feed-forward follows the weights
  const m = partition(cfg(6, 2, 64, 1024), 3, 32, [2, 1, 1]);
  expect(m.map((x) => x.heads.end - x.heads.start)).toEqual([2, 2, 2]);
  expect(m.map((x) => x.ffn.end - x.ffn.start)).toEqual([512, 256, 256]);
});
