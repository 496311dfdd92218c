// Token sampling: repetition penalty, top-k, top-p, min-p, temperature, then a seeded draw; greedy
// (argmax, ties to the lowest id, as llama.cpp) when the temperature is 0. Same seed, same tokens.

export interface SamplerOptions {
  temperature: number; // 0 = greedy
  topK: number; //        0 = off
  topP: number; //        1 = off
  minP: number; //        0 = off
  repeatPenalty: number; // 1 = off
  repeatLastN: number; // how many recent tokens the penalty looks at
  seed: number;
}

export const DEFAULT_SAMPLER: SamplerOptions = {
  temperature: 0.8,
  topK: 40,
  topP: 0.95,
  minP: 0.05,
  repeatPenalty: 1.0,
  repeatLastN: 64,
  seed: 0,
};

export function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
  return best;
}

/** mulberry32: small, fast, and the same sequence on every platform; uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class Sampler {
  private readonly random: () => number;
  private readonly recent: number[] = [];
  private probs = new Float64Array(0);

  constructor(readonly opts: SamplerOptions) {
    const o = opts;
    if (!(o.temperature >= 0)) throw new Error(`temperature ${o.temperature} must be >= 0`);
    if (!Number.isInteger(o.topK) || o.topK < 0) throw new Error(`top-k ${o.topK} must be a whole number >= 0`);
    if (!(o.topP > 0 && o.topP <= 1)) throw new Error(`top-p ${o.topP} must be in (0, 1]`);
    if (!(o.minP >= 0 && o.minP < 1)) throw new Error(`min-p ${o.minP} must be in [0, 1)`);
    if (!(o.repeatPenalty > 0)) throw new Error(`repeat penalty ${o.repeatPenalty} must be > 0`);
    this.random = mulberry32(o.seed);
  }

  /** Remembers tokens for the repetition penalty (the prompt, then each sampled token). */
  accept(tokens: Iterable<number>): void {
    for (const t of tokens) this.recent.push(t);
    const excess = this.recent.length - this.opts.repeatLastN;
    if (excess > 0) this.recent.splice(0, excess);
  }

  /** Picks the next token; `logits` is modified (penalties applied in place). */
  sample(logits: Float32Array): number {
    const o = this.opts;
    if (o.repeatPenalty !== 1) {
      for (const t of new Set(this.recent)) {
        const l = logits[t]!;
        logits[t] = l > 0 ? l / o.repeatPenalty : l * o.repeatPenalty;
      }
    }
    const next = o.temperature === 0 ? argmax(logits) : this.draw(logits);
    this.accept([next]);
    return next;
  }

  private draw(logits: Float32Array): number {
    const o = this.opts, n = logits.length;
    if (this.probs.length < n) this.probs = new Float64Array(n);
    // candidates sorted by logit (descending, ties by id), cut to top-k
    const sorted = o.topK > 0 ? topK(logits, Math.min(o.topK, n)) : Array.from({ length: n }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b);
    let m = sorted.length;
    // softmax at temperature 1 for the p-filters (as llama.cpp's chain: top-k, top-p, min-p, temp)
    const probs = this.probs;
    const max = logits[sorted[0]!]!;
    let sum = 0;
    for (let i = 0; i < m; i++) sum += probs[i] = Math.exp(logits[sorted[i]!]! - max);
    if (o.topP < 1) {
      let cum = 0;
      for (let i = 0; i < m; i++) {
        cum += probs[i]! / sum;
        if (cum >= o.topP) {
          m = i + 1;
          break;
        }
      }
    }
    if (o.minP > 0) {
      const floor = o.minP * probs[0]!;
      let keep = 1;
      while (keep < m && probs[keep]! >= floor) keep++;
      m = keep;
    }
    // temperature, then a draw
    let total = 0;
    for (let i = 0; i < m; i++) total += probs[i] = Math.exp((logits[sorted[i]!]! - max) / o.temperature);
    let r = this.random() * total;
    for (let i = 0; i < m; i++) {
      r -= probs[i]!;
      if (r < 0) return sorted[i]!;
    }
    return sorted[m - 1]!;
  }
}

/** The k largest logits' ids, sorted (descending, ties to the lower id), in one pass over the vocabulary. */
function topK(logits: Float32Array, k: number): number[] {
  const ids: number[] = [];
  let floor = -Infinity; // the k-th best so far
  for (let i = 0; i < logits.length; i++) {
    const l = logits[i]!;
    if (ids.length === k && l <= floor) continue;
    let j = ids.length === k ? k - 1 : ids.length;
    if (ids.length < k) ids.push(i);
    while (j > 0 && logits[ids[j - 1]!]! < l) {
      ids[j] = ids[j - 1]!;
      j--;
    }
    ids[j] = i;
    if (ids.length === k) floor = logits[ids[k - 1]!]!;
  }
  return ids;
}
