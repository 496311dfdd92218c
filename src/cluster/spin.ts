// Busy-polling for a message that is due soon (opt-in: DAIRLLM_SPIN_MS). A process waiting in Bun's
// event loop sleeps in epoll; waking it up again (the sender's kernel signals the sleeping CPU, a VM's
// vCPU leaves its idle state) costs tens of µs, twice per reduction. While a reply is expected within
// a layer's time, a node can keep its event loop turning instead (a chain of setImmediate callbacks:
// Bun then polls its sockets without blocking) for at most `boundMs`, then sleep as usual.
//
// Measured on the 2-vCPU development VM (scripts/bench-cluster.ts and a loopback ping-pong of 2.2 KB
// messages): the ping-pong round trip drops from ~100 to ~65 µs (median, 1 ms of work between
// messages), but decode speed of a root and a worker does not move beyond the run-to-run noise, so
// spinning is off unless DAIRLLM_SPIN_MS is set.
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

/** How long a node busy-polls for a message due within a step (root: a worker's result; worker: the
 *  next block input after its result): DAIRLLM_SPIN_MS, default 0 (off). */
export const SPIN_MS = (() => {
  const v = Number(process.env.DAIRLLM_SPIN_MS ?? 0);
  return Number.isFinite(v) && v >= 0 ? v : 0;
})();

/** The process's spinner: one policy for all connections (they share the core it watches). */
export const spinner = new Spinner(SPIN_MS);
