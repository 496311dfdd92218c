import { expect, test } from "bun:test";
import { argmax, DEFAULT_SAMPLER, Sampler } from "../src/model/sampler";

function logitsOf(values: number[]): Float32Array {
  return new Float32Array(values);
}

function randomLogits(n: number, seed: number): Float32Array {
  let s = seed;
  return new Float32Array(n).map(() => {
    s = (s * 1103515245 + 12345) >>> 0;
    return (s / 2 ** 32) * 10 - 5;
  });
}

test("greedy: argmax, ties to the lowest id", () => {
  expect(argmax(logitsOf([1, 3, 3, 2]))).toBe(1);
  const s = new Sampler({ ...DEFAULT_SAMPLER, temperature: 0 });
  expect(s.sample(logitsOf([0.5, -1, 0.5]))).toBe(0);
});

test("the same seed gives the same tokens; another seed other tokens", () => {
  const draw = (seed: number) => {
    const s = new Sampler({ ...DEFAULT_SAMPLER, temperature: 1.2, topK: 0, topP: 1, minP: 0, seed });
    return Array.from({ length: 50 }, (_, i) => s.sample(randomLogits(1000, i + 1)));
  };
  expect(draw(42)).toEqual(draw(42));
  expect(draw(42)).not.toEqual(draw(43));
});

test("top-k 1 is greedy; top-k keeps only the k best", () => {
  for (let i = 0; i < 20; i++) {
    const l = randomLogits(5000, i + 7);
    const best = argmax(l);
    expect(new Sampler({ ...DEFAULT_SAMPLER, topK: 1, seed: i }).sample(l.slice())).toBe(best);
    const top3 = Array.from(l.keys()).sort((a, b) => l[b]! - l[a]! || a - b).slice(0, 3);
    const s = new Sampler({ ...DEFAULT_SAMPLER, topK: 3, topP: 1, minP: 0, temperature: 5, seed: i });
    for (let j = 0; j < 20; j++) expect(top3).toContain(s.sample(l.slice()));
  }
});

test("min-p drops tokens far below the best; top-p keeps the smallest sufficient set", () => {
  const l = logitsOf([10, 9.9, 0, 0, 0]); // p ~ 0.52, 0.47, tiny...
  const minP = new Sampler({ ...DEFAULT_SAMPLER, topK: 0, topP: 1, minP: 0.1, temperature: 1, seed: 3 });
  const seen = new Set(Array.from({ length: 200 }, () => minP.sample(l.slice())));
  expect([...seen].sort()).toEqual([0, 1]);
  const topP = new Sampler({ ...DEFAULT_SAMPLER, topK: 0, topP: 0.5, minP: 0, temperature: 1, seed: 3 });
  const seenP = new Set(Array.from({ length: 200 }, () => topP.sample(l.slice())));
  expect([...seenP]).toEqual([0]);
});

test("the repetition penalty pushes recent tokens down", () => {
  const s = new Sampler({ ...DEFAULT_SAMPLER, temperature: 0, repeatPenalty: 2 });
  s.accept([0]);
  expect(s.sample(logitsOf([1.0, 0.8, 0.1]))).toBe(1); // 1.0 / 2 < 0.8
  const neg = new Sampler({ ...DEFAULT_SAMPLER, temperature: 0, repeatPenalty: 2 });
  neg.accept([1]);
  expect(neg.sample(logitsOf([-1.0, -0.6, -5]))).toBe(0); // -0.6 * 2 < -1.0
});

test("bad options are refused by name", () => {
  expect(() => new Sampler({ ...DEFAULT_SAMPLER, temperature: -1 })).toThrow(/temperature/);
  expect(() => new Sampler({ ...DEFAULT_SAMPLER, topP: 0 })).toThrow(/top-p/);
  expect(() => new Sampler({ ...DEFAULT_SAMPLER, topK: 1.5 })).toThrow(/top-k/);
});
