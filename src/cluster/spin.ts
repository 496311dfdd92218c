// Busy-polling for a message that is due soon. A process waiting in Bun's event loop sleeps in
// epoll; waking it up again (the sender's kernel signals the sleeping CPU, a VM's vCPU leaves its
// idle state) costs tens to hundreds of µs, twice per reduction. While a reply is expected within a
// layer's time, a node therefore keeps its event loop turning (a chain of setImmediate callbacks: Bun
// then polls its sockets without blocking) for at most `boundMs`, then sleeps as usual.
//
// Spinning only pays when the core is otherwise idle. When more busy processes than cores share a
// machine (several nodes on one host), a spinning node takes CPU time from a computing one. So the
// spinner watches its own thread's run-queue wait (/proc/thread-self/schedstat, Linux; elsewhere the
// process's involuntary context switches): when it was kept waiting for a CPU for more than a quarter
// of a spin, another thread wanted that core, and the spin stops at once; after three such spins in a
// row (not a passing burst of one of Bun's helper threads) it does not spin again for BACKOFF_MS.
import { closeSync, openSync, readSync } from "node:fs";

/** How often, while spinning, the run-queue wait is looked at */
const CHECK_MS = 0.1;
/** Run-queue wait above this share of the spin so far means the core is wanted elsewhere */
const CONTENDED_SHARE = 0.25;
/** This many cut spins in a row... */
const CONTENDED_IN_A_ROW = 3;
/** ...and there is no spinning for this long */
export const BACKOFF_MS = 250;

export class Spinner {
  /** spins that were cut short because the core was wanted elsewhere */
  contended = 0;
  /** spins started */
  spins = 0;
  private fd = -2; // -2: not opened yet, -1: no schedstat on this system
  private readonly buf = new Uint8Array(96);
  private pausedUntil = 0;
  private inARow = 0;

  constructor(
    /** the longest a wait is spent spinning; 0 turns spinning off */
    readonly boundMs: number,
    /** ns this thread has been kept waiting for a CPU (a counter); tests substitute their own */
    private readonly queuedNs: (() => number) | null = null,
  ) {}

  /**
   * Keeps the event loop turning until `done()` says the message came, `boundMs` passed, or the core
   * turns out to be wanted by another thread. Returns at once; the spinning happens in callbacks.
   */
  spin(done: () => boolean): void {
    if (this.boundMs <= 0) return;
    const t0 = performance.now();
    if (t0 < this.pausedUntil) return;
    this.spins++;
    const until = t0 + this.boundMs;
    const q0 = this.queued();
    let check = t0 + CHECK_MS;
    const step = () => {
      if (done()) {
        this.inARow = 0;
        return;
      }
      const now = performance.now();
      if (now >= until) return;
      if (now >= check) {
        check = now + CHECK_MS;
        if (this.queued() - q0 > CONTENDED_SHARE * (now - t0) * 1e6) {
          this.contended++;
          if (++this.inARow >= CONTENDED_IN_A_ROW) {
            this.inARow = 0;
            this.pausedUntil = now + BACKOFF_MS;
          }
          return;
        }
      }
      setImmediate(step);
    };
    setImmediate(step);
  }

  /** ns of run-queue wait of this thread so far (a count of involuntary switches, 1 ms each, where
   *  /proc/thread-self/schedstat is missing) */
  private queued(): number {
    if (this.queuedNs) return this.queuedNs();
    if (this.fd === -2) {
      try {
        this.fd = openSync("/proc/thread-self/schedstat", "r");
      } catch {
        this.fd = -1;
      }
    }
    if (this.fd >= 0) {
      try {
        // "<ns on a CPU> <ns waiting for a CPU> <time slices>\n"
        const n = readSync(this.fd, this.buf, 0, this.buf.length, 0);
        let i = 0;
        while (i < n && this.buf[i] !== 0x20) i++;
        let v = 0;
        for (i++; i < n; i++) {
          const c = this.buf[i]! - 0x30;
          if (c < 0 || c > 9) break;
          v = v * 10 + c;
        }
        return v;
      } catch {
        closeSync(this.fd);
        this.fd = -1;
      }
    }
    return process.resourceUsage().involuntaryContextSwitches * 1e6;
  }
}

/** How long a node busy-polls for a message due within a step (root: a worker's result; worker: the
 *  next block input after its result). DAIRLLM_SPIN_MS overrides it; 0 turns spinning off. */
export const SPIN_MS = (() => {
  const v = Number(process.env.DAIRLLM_SPIN_MS ?? 5);
  return Number.isFinite(v) && v >= 0 ? v : 5;
})();

/** The process's spinner: one policy for all connections (they share the core it watches). */
export const spinner = new Spinner(SPIN_MS);
