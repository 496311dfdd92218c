import { expect, test } from "bun:test";
import type { ModelConfig } from "../src/model/config";
import { partition } from "../src/cluster/partition";

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
