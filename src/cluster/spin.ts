// Busy-polling for a message that is due soon (DAIRLLM_SPIN_MS, default 5 ms; 0 turns it off). A
// process waiting in Bun's event loop sleeps in epoll; waking it up again (the sender's kernel signals
// the sleeping CPU, a VM's vCPU leaves its idle state) costs tens of µs, twice per reduction, and now
// and then a millisecond. While a reply is expected within a layer's time, a node keeps its event loop
// turning instead (a chain of setImmediate callbacks: Bun then polls its sockets without blocking) for
// at most `boundMs`, then sleeps as usual.
//
// Measured on the 2-vCPU development VM, timestamps at every reduction of a pinned root and worker
// (a throwaway patch): from "both have sent" to "the other's partial is in the event loop" took a
// median 10-12 µs sleeping but 1.0-1.2 ms at the 99th percentile over tokens 5-45 (0.17-0.22 ms over
// tokens 5-450), and each late arrival makes the receiver start its next block that much after the
// sender (the skew that both then wait out); spinning, a median 7-9 µs and 77-102 µs at the 99th
// (tokens 5-45). A loopback ping-pong of 2.2 KB: ~100 -> ~65 µs. Decode speed: short runs (48-128
// tokens, in which the JIT still compiles the forward pass and steals the pinned core now and then)
// did not separate, so spinning was opt-in until 2026-12-03; 500-token runs, alternated: pinned
// 54.0 / 51.3 / 52.3 tokens/s sleeping against 56.8 / 57.9 / 54.3 spinning, unpinned (two nodes on
// two vCPUs) 50.8 / 51.0 / 50.6 against 52.0 / 51.2 / 48.7. Nodes on machines of their own are the
// pinned case.
//
// Spinning only pays when the core is otherwise idle. When more busy threads than cores share a
// machine (several nodes on one host), a spinning node holds a CPU for a whole time slice (ms) that a
// computing one needed. So while spinning, the spinner looks every 0.1 ms at the machine's runnable
// threads (/proc/loadavg) and at its own run-queue wait (/proc/thread-self/schedstat; elsewhere the
// process's involuntary context switches): more runnable threads than cores, or waiting for a CPU
// more than a quarter of the spin, stops the spin at once; after three such spins in a row (not a
// passing burst of one of Bun's helper threads) it does not spin again for BACKOFF_MS.
import { closeSync, openSync, readSync } from "node:fs";
import { cpus } from "node:os";

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
  // "<ns on a CPU> <ns waiting for a CPU> <time slices>": the second field
  private readonly schedstat = new ProcNumber("/proc/thread-self/schedstat", 1);
  // "0.52 0.58 0.59 3/312 12345": the runnable count starts the 4th field
  private readonly loadavg = new ProcNumber("/proc/loadavg", 3);
  private readonly cores = Math.max(1, cpus().length);
  private pausedUntil = 0;
  private inARow = 0;

  constructor(
    /** the longest a wait is spent spinning; 0 turns spinning off */
    readonly boundMs: number,
    /** ns this thread has been kept waiting for a CPU (a counter), and the machine's runnable
     *  threads; tests substitute their own */
    private readonly probe: { queuedNs(): number; runnable(): number } | null = null,
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
        if (this.runnable() > this.cores || this.queued() - q0 > CONTENDED_SHARE * (now - t0) * 1e6) {
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

  /** Threads running or waiting for a CPU on the whole machine, this one included (the 4th field of
   *  /proc/loadavg, "running/total"); 0 where it cannot be read. A spinning thread holds its CPU for
   *  a whole time slice before it is the one kept waiting: more runnable threads than cores means one
   *  is waiting now, possibly for this core. */
  private runnable(): number {
    if (this.probe) return this.probe.runnable();
    return this.loadavg.read() ?? 0;
  }

  /** ns of run-queue wait of this thread so far (a count of involuntary switches, 1 ms each, where
   *  /proc/thread-self/schedstat is missing) */
  private queued(): number {
    if (this.probe) return this.probe.queuedNs();
    return this.schedstat.read() ?? process.resourceUsage().involuntaryContextSwitches * 1e6;
  }
}

/** One whole number of a small /proc file, read again at each call without allocating: the field
 *  after `skip` spaces. null where the file cannot be opened or read (then never tried again). */
class ProcNumber {
  private fd = -2; // -2: not opened yet, -1: not available here
  private static readonly buf = new Uint8Array(96);

  constructor(
    private readonly path: string,
    private readonly skip: number,
  ) {}

  read(): number | null {
    if (this.fd === -2) {
      try {
        this.fd = openSync(this.path, "r");
      } catch {
        this.fd = -1;
      }
    }
    if (this.fd < 0) return null;
    const buf = ProcNumber.buf;
    try {
      const n = readSync(this.fd, buf, 0, buf.length, 0);
      let i = 0;
      for (let spaces = 0; i < n && spaces < this.skip; ) if (buf[i++] === 0x20) spaces++;
      let v = 0;
      for (; i < n; i++) {
        const c = buf[i]! - 0x30;
        if (c < 0 || c > 9) break;
        v = v * 10 + c;
      }
      return v;
    } catch {
      closeSync(this.fd);
      this.fd = -1;
      return null;
    }
  }
}

/** The longest a node busy-polls for a message due within a step, in ms, unless DAIRLLM_SPIN_MS says */
export const DEFAULT_SPIN_MS = 5;

/** How long a node busy-polls for a message due within a step (root: a worker's result; worker: the
 *  next block input after its result): DAIRLLM_SPIN_MS, default DEFAULT_SPIN_MS, 0 off. */
export function spinBound(env = process.env.DAIRLLM_SPIN_MS): number {
  if (env === undefined || env === "") return DEFAULT_SPIN_MS;
  const v = Number(env);
  if (!Number.isFinite(v) || v < 0) throw new Error(`DAIRLLM_SPIN_MS must be a number of milliseconds (0: off), not "${env}"`);
  return v;
}

/** This process's bound (DAIRLLM_SPIN_MS); an unreadable value is said once and the default taken. */
export const SPIN_MS = (() => {
  try {
    return spinBound();
  } catch (e) {
    console.error(`dairllm: ${(e as Error).message}; busy-polling up to ${DEFAULT_SPIN_MS} ms`);
    return DEFAULT_SPIN_MS;
  }
})();

/** The process's spinner: one policy for all connections (they share the core it watches). */
export const spinner = new Spinner(SPIN_MS);
