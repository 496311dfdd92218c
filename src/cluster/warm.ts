// Reading the next weights into the cache while a reduction is in flight (opt-in: DAIRLLM_WARM).
//
// After a node sends its partial it waits for the others' (the network, and the skew between nodes
// that finish the same block at slightly different moments): tens to hundreds of µs per reduction,
// 45 reductions per token of a 22-layer model. The weights it reads right after the reduction are
// known (the feed-forward's gate, up and down after attention; the next layer's q, k, v and output
// projection after the feed-forward), so while it waits it reads them in chunks, in callbacks of the
// event loop that stop as soon as the message is there: the matmuls that follow can then find part
// of their weights in the cache instead of memory. At most `budget` bytes per wait (more than the
// cache holds would evict what was read first). Only the node's own slices are read (row slices, and
// the contiguous copies of its column slices): its resident memory stays its own (zero data movement).
//
// Measured on the 2-vCPU development VM, where a root and a worker share one memory bus and one L3:
// a lone 5632 x 2048 Q4_0 matmul took 160 µs after its weights were read this way against 207 µs
// (medians of 44), but a root and a worker decoded at 26.0-26.1 ms per token with 16 MiB per wait
// against 22.3-23.0 without (it read 38-53 MB per token ahead, and `profile` showed the matmuls no
// faster and the waits longer: the waiting node's reads slow the node it waits for). So it is off
// unless asked for. Separate machines share no bus: measure there with `profile --workers`.
// DAIRLLM_WARM: unset or 0, off; "auto", half the last-level cache per wait; a number, that many MiB.
import { readFileSync, readdirSync } from "node:fs";
import type { Kernels } from "../native/types";

/** Bytes read per event-loop turn: a few µs, so a message that arrives is taken up that late at most. */
export const WARM_CHUNK = 128 * 1024;

export class Warmer {
  /** bytes read into the cache so far (all waits) */
  bytes = 0;
  private views: readonly Uint8Array[] = [];
  private vi = 0;
  private off = 0;
  private left = 0;

  constructor(
    private readonly k: Pick<Kernels, "warm">,
    /** the most bytes read during one wait */
    readonly budget: number,
    private readonly chunk = WARM_CHUNK,
  ) {}

  /** The weights the node reads next, in the order it reads them; replaces the previous wait's. */
  start(views: readonly Uint8Array[]): void {
    this.views = views;
    this.vi = 0;
    this.off = 0;
    this.left = this.budget;
  }

  /** Reads the next chunk; false when nothing is left to read in this wait. Chunks are whole 256-byte
   *  steps (the native reader's), so a view's last bytes short of one are left out. */
  step(): boolean {
    while (this.vi < this.views.length && this.left >= 256) {
      const v = this.views[this.vi]!;
      const n = Math.min(this.chunk, this.left, v.byteLength - this.off) & ~255;
      if (n <= 0) {
        this.vi++;
        this.off = 0;
        continue;
      }
      this.k.warm(v.subarray(this.off, this.off + n));
      this.off += n;
      this.left -= n;
      this.bytes += n;
      return true;
    }
    return false;
  }
}

/** `w` started on the weights read after this reduction, or null when it is off or there are none. */
export function warmFor(w: Warmer | null, next: readonly Uint8Array[] | undefined): Warmer | null {
  if (!w || !next?.length) return null;
  w.start(next);
  return w;
}

/**
 * Steps `w` in event-loop callbacks (setImmediate: Bun polls its sockets between them without
 * blocking) until `done()` says the awaited message came or nothing is left to read; then hands the
 * rest of the wait to `then` (the opt-in busy-poll, spin.ts) if given. Returns at once.
 */
export function warmWhile(w: Warmer, done: () => boolean, then: { spin(done: () => boolean): void } | null = null): void {
  const step = () => {
    if (done()) return;
    if (w.step()) setImmediate(step);
    else then?.spin(done);
  };
  setImmediate(step);
}

/** The size in bytes of this machine's largest CPU cache (Linux sysfs), or null where it cannot be read. */
export function lastLevelCacheBytes(dir = "/sys/devices/system/cpu/cpu0/cache"): number | null {
  let best: number | null = null;
  let entries: string[];
  try {
    entries = readdirSync(dir).filter((e) => /^index\d+$/.test(e));
  } catch {
    return null;
  }
  for (const e of entries) {
    try {
      const type = readFileSync(`${dir}/${e}/type`, "utf8").trim();
      if (type === "Instruction") continue;
      const m = /^(\d+)([KMG]?)$/.exec(readFileSync(`${dir}/${e}/size`, "utf8").trim());
      if (!m) continue;
      const bytes = Number(m[1]) * (m[2] === "K" ? 1024 : m[2] === "M" ? 1024 ** 2 : m[2] === "G" ? 1024 ** 3 : 1);
      if (best === null || bytes > best) best = bytes;
    } catch {
      // an index without a readable size: skip it
    }
  }
  return best;
}

/** The budget per wait from DAIRLLM_WARM (see the top of this file): 0 means off. */
export function warmBudget(env = process.env.DAIRLLM_WARM, llc: () => number | null = lastLevelCacheBytes): number {
  if (env === undefined || env === "") return 0;
  if (env === "auto") {
    const bytes = llc();
    return bytes === null ? 1024 * 1024 : Math.floor(bytes / 2);
  }
  const mib = Number(env);
  if (!Number.isFinite(mib) || mib < 0) throw new Error(`DAIRLLM_WARM must be "auto" or a number of MiB (0: off), not "${env}"`);
  return Math.floor(mib * 1024 * 1024);
}

/** This process's budget per wait (DAIRLLM_WARM); an unreadable value is said once and turns it off. */
export const WARM_BUDGET = (() => {
  try {
    return warmBudget();
  } catch (e) {
    console.error(`dairllm: ${(e as Error).message}; reading ahead while waiting is off`);
    return 0;
  }
})();

/** A warmer for a node's reductions with this process's budget, or null when it is off. */
export function processWarmer(k: Pick<Kernels, "warm">): Warmer | null {
  return WARM_BUDGET > 0 ? new Warmer(k, WARM_BUDGET) : null;
}
