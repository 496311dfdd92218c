// --rebalance: moving the feed-forward rows between the nodes of a running cluster.
//
// Tensor parallelism waits for the slowest node twice per layer. A static split (--split even, auto
// or weights) is right only while the nodes keep the speeds they had at the start; a Raspberry Pi
// that heats up and throttles, or a VM whose neighbour wakes up, slows down mid-run and the whole
// cluster waits for it. The root therefore times every node's feed-forward work (its own, and each
// worker's from a Timing message per step), keeps a moving average of each node's µs per row, and
// when rows in proportion to the inverse of those rates would make the slowest node's feed-forward
// at least THRESHOLD faster, moves the boundaries (a Rebalance message before the next Step). Each
// boundary stays within its margin of the split (partition.ts boundaryMargins), the rows whose down
// projection columns every node holds. The attention heads (with their KV cache) do not move.
//
// Only decode steps (one token) are timed: a prompt batch costs per row what a token does not.
import { boundaryMargins, ffnBoundaries, type Slice } from "./partition";

export interface RebalanceOptions {
  /** weight of the newest step in the moving average of each node's µs per row */
  alpha?: number;
  /** the least predicted gain (share of the slowest node's feed-forward time) worth a move */
  threshold?: number;
  /** decode steps timed before the first move, and after each move */
  settle?: number;
}

export class Rebalancer {
  /** the boundaries in force: node i computes feed-forward rows [b[i], b[i + 1]) */
  boundaries: number[];
  /** moves made so far */
  moves = 0;
  private readonly base: number[];
  private readonly margins: number[];
  private readonly alpha: number;
  private readonly threshold: number;
  private readonly settle: number;
  /** moving average of each node's µs per feed-forward row of one token */
  private rate: number[] | null = null;
  private steps = 0;

  constructor(
    slices: readonly Slice[],
    private readonly align: number,
    o: RebalanceOptions = {},
  ) {
    this.base = ffnBoundaries(slices);
    this.boundaries = [...this.base];
    this.margins = boundaryMargins(slices, align);
    this.alpha = o.alpha ?? 0.25;
    this.threshold = o.threshold ?? 0.03;
    this.settle = o.settle ?? 3;
  }

  /** node i's rows now */
  rows(i: number): number {
    return this.boundaries[i + 1]! - this.boundaries[i]!;
  }

  /**
   * After a step of `tokens` tokens in which node i spent micros[i] µs computing feed-forward outputs:
   * the new boundaries when moving them is worth it (they are then in force), else null.
   */
  observe(micros: readonly number[], tokens: number): number[] | null {
    const n = this.boundaries.length - 1;
    if (tokens !== 1 || micros.length !== n || micros.some((t) => !(t > 0) || !Number.isFinite(t))) return null;
    const now = micros.map((t, i) => t / this.rows(i));
    this.rate = this.rate ? this.rate.map((r, i) => r + this.alpha * (now[i]! - r)) : now;
    if (++this.steps < this.settle) return null;
    const next = this.target(this.rate);
    const slowest = (b: readonly number[]) => Math.max(...this.rate!.map((r, i) => r * (b[i + 1]! - b[i]!)));
    const before = slowest(this.boundaries), after = slowest(next);
    if (!(before - after >= this.threshold * before)) return null;
    this.boundaries = next;
    this.moves++;
    this.steps = 0;
    return next;
  }

  /** Boundaries giving each node rows in proportion to 1 / rate, on whole blocks, within the margins. */
  private target(rate: readonly number[]): number[] {
    const n = rate.length, a = this.align, total = this.base[n]!;
    const inv = rate.map((r) => 1 / r), sum = inv.reduce((x, y) => x + y, 0);
    const b = [0];
    let acc = 0;
    for (let i = 1; i < n; i++) {
      acc += inv[i - 1]!;
      const want = Math.round((total * acc) / sum / a) * a;
      const lo = Math.max(this.base[i]! - this.margins[i]!, b[i - 1]! + a), hi = this.base[i]! + this.margins[i]!;
      b.push(Math.min(hi, Math.max(lo, want)));
    }
    b.push(total);
    // every node keeps at least one block: pull boundaries pushed too far right back from the end
    for (let i = n - 1; i >= 1; i--) b[i] = Math.min(b[i]!, b[i + 1]! - a);
    return b;
  }
}
