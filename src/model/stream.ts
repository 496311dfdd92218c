// Layer streaming's I/O core (AirLLM's idea): a node holds only a budget of weight bytes in memory,
// reads the next weights from disk while it computes with the current ones, and reuses the memory of
// the ones it has finished with.
//
// What is read is a list of units (e.g. one layer's attention matrices of this node's slice), each a
// list of file byte ranges (spans), consumed cyclically in the given order: 0, 1, ..., U-1, 0, 1, ...
// (one forward pass per cycle). The contract:
//
// - `WeightStream.open(path, units, budget)` checks every span against the file and every unit
//   against the budget, allocates ONE ring buffer of the budget (rounded up to 4096 bytes; smaller if
//   all units together need less, or if the budget is above 4 GiB, the most one Bun buffer holds) and
//   starts reading. Units are placed in the ring first in, first out, each in one contiguous region
//   (a unit that does not fit before the end of the ring goes to its start); every span starts
//   4096-aligned in its region. Reading goes ahead, across passes, as long as the ring has room: the
//   disk works while the consumer computes, and resident weights never exceed the ring. Every pass
//   reads every unit again, even when the ring could hold them all: a node whose weights fit in its
//   memory should not stream.
// - `acquire(i)` gives the views of unit i's spans, in span order; i must be the next unit of the
//   cycle. A loaded unit comes back as an array at once; otherwise a Promise. The views stay valid
//   until the unit is released. A consumer may hold several units (acquired, not yet released).
// - `release(i)` hands back the oldest held unit; it must be i. Its ring space is then reused.
// - An acquire or release out of order, or a release of a unit whose data has not arrived, throws: it
//   is a bug in the consumer. A read error or a file shorter than when it was opened makes the acquire
//   of that unit, and of every later one, reject with an Error naming the file, unit and offsets (the
//   units before it are still served); no unit is read after it.
// - `close()` stops reading, waits for the reads handed to the pool (they write into the ring: up to
//   the free ring, see `inFlight`), closes the file. After it, acquire throws and release does nothing.
//
// Reads use O_DIRECT by default, so the page cache is bypassed as on a machine whose RAM cannot hold
// the model: O_DIRECT needs the file offset, the length and the buffer address aligned to 4096, so
// each span is read as its aligned superset (the last read of the file may come back short, at EOF)
// and its view starts at the exact span offset. A filesystem that refuses O_DIRECT (EINVAL at open)
// gets buffered reads and one log line saying so.
//
// Reads are node:fs async reads, which Bun runs on its thread pool, so they proceed while the JS
// thread is inside a synchronous native kernel. The catch: a read's completion, and so the issue of
// the next read, waits until the JS thread is free. Hence reads are whole spans (in pieces of at most
// MAX_READ bytes) and every piece that fits in the free ring is handed to the pool at once: during a
// long computation the pool's threads keep reading what was queued before it started.
import { closeSync, constants, fstatSync, openSync, read } from "node:fs";
import { addressOf } from "../native/ffi";

/** A file byte range to load. */
export interface Span {
  offset: number;
  length: number;
}

/** What is loaded together into one contiguous region of the ring (e.g. one layer's attention
 *  matrices of this node's slice). Each span's data starts 4096-aligned inside the region. */
export interface Unit {
  name: string;
  spans: Span[];
}

export interface StreamStats {
  /** bytes transferred from the file (alignment padding included) */
  readonly bytesRead: number;
  /** read calls completed */
  readonly reads: number;
  /** wall time during which at least one read was outstanding, as seen from the JS thread */
  readonly readSeconds: number;
  /** wall time acquire() callers waited for data */
  readonly waitSeconds: number;
  /** true when the page cache is bypassed (O_DIRECT) */
  readonly direct: boolean;
  /** the most bytes of ring held at once by units (loading, loaded or acquired): never above the budget */
  readonly peakInUse: number;
}

export interface StreamOptions {
  /** O_DIRECT reads (default true); falls back to buffered reads, with a log line, if the filesystem refuses */
  direct?: boolean;
  log?: (line: string) => void;
  /** the most read calls outstanding at once (default: unlimited, every piece that fits in the free ring) */
  inFlight?: number;
}

/** O_DIRECT's granule: file offsets, lengths and buffer addresses are multiples of it. */
const ALIGN = 4096;
/** A span is read in pieces of at most this many bytes. */
const MAX_READ = 16 << 20;
/** The largest ring: Bun's ArrayBuffers hold at most 4 GiB, and the ring needs ALIGN bytes to align. */
const MAX_RING = 2 ** 32 - ALIGN;

const alignDown = (n: number) => Math.floor(n / ALIGN) * ALIGN;
const alignUp = (n: number) => Math.ceil(n / ALIGN) * ALIGN;

/** One read: `len` bytes (aligned) at file offset `pos` into the unit's region at `rel`. */
interface Piece {
  rel: number;
  pos: number;
  len: number;
}

/** Where a unit's spans go in its region, and the reads that fill it. */
interface Layout {
  size: number;
  pieces: Piece[];
  /** each span's view: its start in the region and its length */
  views: { rel: number; length: number }[];
}

/** A unit placed in the ring: loading, loaded or held by the consumer. */
interface Slot {
  unit: number;
  /** position in an endless virtual ring (laps of the ring's size): never decreases from slot to slot */
  vstart: number;
  start: number;
  size: number;
  /** pieces not yet read */
  pending: number;
  /** why this unit cannot be loaded: a read of it, or of an earlier unit, failed */
  error: Error | null;
  views: Uint8Array[];
  waiter: { resolve: (v: Uint8Array[]) => void; reject: (e: Error) => void; since: number } | null;
}

function layoutOf(path: string, unit: Unit, index: number, fileSize: number): Layout {
  const what = `${path}: unit ${index} (${unit?.name})`;
  if (!unit || !Array.isArray(unit.spans)) throw new Error(`${what}: has no list of spans`);
  const pieces: Piece[] = [], views: Layout["views"] = [];
  let size = 0;
  unit.spans.forEach((s, j) => {
    const { offset, length } = s ?? {};
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new Error(`${what}: span ${j} has offset ${offset} and length ${length} (expected integers >= 0)`);
    }
    if (offset + length > fileSize) {
      throw new Error(`${what}: span ${j} covers bytes ${offset}..${offset + length}, beyond the end of the file (${fileSize} bytes)`);
    }
    if (length === 0) return void views.push({ rel: size, length: 0 });
    const pos = alignDown(offset), end = alignUp(offset + length);
    for (let p = pos; p < end; p += MAX_READ) pieces.push({ rel: size + p - pos, pos: p, len: Math.min(MAX_READ, end - p) });
    views.push({ rel: size + offset - pos, length });
    size += end - pos;
  });
  return { size, pieces, views };
}

export class WeightStream {
  readonly stats: StreamStats;
  private readonly counters = { bytesRead: 0, reads: 0, readSeconds: 0, waitSeconds: 0, direct: false, peakInUse: 0 };
  /** the ring: `budget` rounded up to 4096 bytes, 4096-aligned */
  private readonly ring: Uint8Array;
  /** placed units, oldest first: sequence numbers released.. placed-1 (held, then loaded or loading) */
  private readonly slots: Slot[] = [];
  /** reads not yet handed to the pool, in placement order */
  private readonly queue: { slot: Slot; piece: Piece }[] = [];
  private placed = 0;
  private acquired = 0;
  private released = 0;
  /** virtual end of the newest slot */
  private vEnd = 0;
  private inUse = 0;
  private outstanding = 0;
  private busySince = 0;
  /** the first read failure: no unit is placed after it */
  private error: Error | null = null;
  private closing: Promise<void> | null = null;
  private drained: (() => void) | null = null;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    private readonly fileSize: number,
    private readonly units: Unit[],
    private readonly layouts: Layout[],
    ringBytes: number,
    direct: boolean,
    private readonly maxInFlight: number,
  ) {
    const raw = new Uint8Array(ringBytes + ALIGN);
    const pad = (ALIGN - (addressOf(raw) % ALIGN)) % ALIGN;
    this.ring = raw.subarray(pad, pad + ringBytes);
    this.counters.direct = direct;
    this.stats = this.counters;
    this.pump();
  }

  /** The smallest budget that can hold the largest unit (its spans 4096-aligned). */
  static minimumBudget(units: Unit[]): number {
    let min = 0;
    units.forEach((u, i) => {
      min = Math.max(min, layoutOf("minimumBudget", u, i, Number.MAX_SAFE_INTEGER).size);
    });
    return min;
  }

  /** Opens `path` and starts reading the first units into a ring of `budgetBytes` (rounded up to 4096). */
  static open(path: string, units: Unit[], budgetBytes: number, o: StreamOptions = {}): WeightStream {
    if (!Array.isArray(units) || units.length === 0) throw new Error(`${path}: no units to stream`);
    if (!Number.isSafeInteger(budgetBytes) || budgetBytes <= 0) throw new Error(`${path}: budget ${budgetBytes} is not a positive number of bytes`);
    const maxInFlight = o.inFlight ?? Infinity;
    if (!(maxInFlight >= 1)) throw new Error(`${path}: inFlight ${o.inFlight} must be at least 1`);
    const { fd, direct } = openFile(path, o.direct ?? true, o.log);
    try {
      const fileSize = fstatSync(fd).size;
      const layouts = units.map((u, i) => layoutOf(path, u, i, fileSize));
      const largest = layouts.reduce((a, L, i) => (L.size > layouts[a]!.size ? i : a), 0);
      const need = layouts[largest]!.size;
      if (need > alignUp(budgetBytes)) {
        throw new Error(`${path}: unit ${largest} (${units[largest]!.name}) needs ${need} bytes of ring (its spans 4096-aligned), more than the budget of ${alignUp(budgetBytes)}: the minimum budget for these units is ${need}`);
      }
      if (need > MAX_RING) throw new Error(`${path}: unit ${largest} (${units[largest]!.name}) needs ${need} bytes, more than the ${MAX_RING} one buffer can hold`);
      // more ring than all units together is never used
      let ringBytes = Math.max(ALIGN, Math.min(alignUp(budgetBytes), layouts.reduce((a, L) => a + L.size, 0)));
      if (ringBytes > MAX_RING) {
        o.log?.(`${path}: the ring is limited to ${MAX_RING} bytes (the largest buffer Bun allocates), below the budget of ${budgetBytes}`);
        ringBytes = MAX_RING;
      }
      return new WeightStream(path, fd, fileSize, units, layouts, ringBytes, direct, maxInFlight);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  private describe(unit: number): string {
    return `unit ${unit} (${this.units[unit]!.name})`;
  }

  /** The views of the spans of unit `index`, which must be the next unit of the cycle. */
  acquire(index: number): Uint8Array[] | Promise<Uint8Array[]> {
    if (this.closing) throw new Error(`${this.path}: acquire(${index}) after close()`);
    const next = this.acquired % this.units.length;
    if (index !== next) throw new Error(`${this.path}: acquire(${index}) out of order: the next unit of the cycle is ${this.describe(next)}`);
    const slot = this.slots[this.acquired - this.released];
    if (!slot) {
      if (this.error) return Promise.reject(this.error);
      // pump() places a unit as soon as it fits, so the ring is full of units the consumer holds
      throw new Error(`${this.path}: ${this.describe(next)} needs ${this.layouts[next]!.size} bytes, which the ring of ${this.ring.byteLength} cannot give while ${this.slots.length} units are acquired and not released: release them first or raise the budget`);
    }
    this.acquired++;
    if (slot.error) return Promise.reject(slot.error);
    if (slot.pending === 0) return slot.views;
    const since = performance.now();
    return new Promise((resolve, reject) => {
      slot.waiter = { resolve, reject, since };
    });
  }

  /** The consumer is done with unit `index`, the oldest one it holds: its ring space may be reused. */
  release(index: number): void {
    if (this.closing) return;
    if (this.released >= this.acquired) throw new Error(`${this.path}: release(${index}) but no unit is acquired`);
    const oldest = this.released % this.units.length;
    if (index !== oldest) throw new Error(`${this.path}: release(${index}) out of order: the oldest acquired unit is ${this.describe(oldest)}`);
    const slot = this.slots[0]!;
    if (slot.pending > 0 && !slot.error) throw new Error(`${this.path}: release(${index}) before the data of ${this.describe(index)} arrived: await acquire() first`);
    this.slots.shift();
    this.released++;
    this.inUse -= slot.size;
    this.pump();
  }

  /** Stops reading, waits for the reads in flight, closes the file. */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    const err = new Error(`${this.path}: the stream was closed`);
    for (const s of this.slots) this.settle(s, err);
    this.queue.length = 0;
    this.closing = (this.outstanding === 0 ? Promise.resolve() : new Promise<void>((r) => (this.drained = r))).then(() => closeSync(this.fd));
    return this.closing;
  }

  /** Places units while the ring has room (at most one cycle ahead), then hands reads to the pool. */
  private pump(): void {
    if (this.closing) return;
    while (!this.error && this.slots.length < this.units.length && this.place());
    while (this.outstanding < this.maxInFlight && this.queue.length > 0) {
      const { slot, piece } = this.queue.shift()!;
      if (this.outstanding++ === 0) this.busySince = performance.now();
      this.issue(slot, piece, 0);
    }
  }

  private place(): boolean {
    const R = this.ring.byteLength;
    const unit = this.placed % this.units.length, L = this.layouts[unit]!;
    let v = this.vEnd;
    if ((v % R) + L.size > R) v += R - (v % R); // does not fit before the end: to the start of the ring
    if (this.slots.length > 0 && v + L.size - this.slots[0]!.vstart > R) return false;
    const start = v % R;
    const views = L.views.map((w) => this.ring.subarray(start + w.rel, start + w.rel + w.length));
    const slot: Slot = { unit, vstart: v, start, size: L.size, pending: L.pieces.length, error: null, views, waiter: null };
    this.slots.push(slot);
    for (const piece of L.pieces) this.queue.push({ slot, piece });
    this.placed++;
    this.vEnd = v + L.size;
    this.inUse += L.size;
    this.counters.peakInUse = Math.max(this.counters.peakInUse, this.inUse);
    return true;
  }

  /** Reads the rest of `piece` after the `got` bytes already read (the first call: got = 0). */
  private issue(slot: Slot, piece: Piece, got: number): void {
    // bytes of the file the piece covers: its aligned length, less what lies beyond EOF
    const expect = Math.min(piece.len, this.fileSize - piece.pos);
    const length = (this.counters.direct ? alignUp(expect) : expect) - got;
    read(this.fd, this.ring, slot.start + piece.rel + got, length, piece.pos + got, (err, n) => {
      if (!err) {
        this.counters.bytesRead += n;
        this.counters.reads++;
        if (got + n < expect && n > 0 && !this.closing && !slot.error) return this.issue(slot, piece, got + n);
      }
      if (--this.outstanding === 0) {
        this.counters.readSeconds += (performance.now() - this.busySince) / 1000;
        this.drained?.();
      }
      if (this.closing || slot.error) return;
      const where = `${this.path}: ${this.describe(slot.unit)}, bytes ${piece.pos}..${piece.pos + expect}`;
      if (err) {
        const hint = err.code === "EINVAL" && this.counters.direct ? " (does this filesystem refuse O_DIRECT? direct: false reads through the page cache)" : "";
        return this.fail(slot, new Error(`${where}: read failed: ${err.message}${hint}`));
      }
      if (got + n < expect) {
        let now = "?";
        try {
          now = String(fstatSync(this.fd).size);
        } catch {}
        return this.fail(slot, new Error(`${where}: the read returned ${got + n} of ${expect} bytes: the file has ${now} bytes now, ${this.fileSize} when opened (truncated?)`));
      }
      if (--slot.pending === 0) this.settle(slot, null);
      this.pump();
    });
  }

  /** Resolves the slot's waiter with its views, or rejects it with `err`. */
  private settle(slot: Slot, err: Error | null): void {
    const w = slot.waiter;
    if (!w) return;
    slot.waiter = null;
    this.counters.waitSeconds += (performance.now() - w.since) / 1000;
    if (err) w.reject(err);
    else w.resolve(slot.views);
  }

  /**
   * A read of `slot` failed: no unit is placed any more; this unit and the ones placed after it reject
   * with `err`, the ones before it still load.
   */
  private fail(slot: Slot, err: Error): void {
    this.error ??= err;
    for (let i = this.slots.indexOf(slot); i < this.slots.length; i++) {
      const s = this.slots[i]!;
      s.error ??= err;
      this.settle(s, s.error);
    }
    for (let i = this.queue.length - 1; i >= 0; i--) if (this.queue[i]!.slot.error) this.queue.splice(i, 1);
    this.pump();
  }
}

/** Opens `path` for reading, with O_DIRECT if asked and the filesystem allows it. */
function openFile(path: string, direct: boolean, log?: (line: string) => void): { fd: number; direct: boolean } {
  if (direct) {
    if (constants.O_DIRECT === undefined) {
      log?.(`${path}: O_DIRECT is not available on this platform: reading through the page cache, which is not bypassed`);
    } else {
      try {
        return { fd: openSync(path, constants.O_RDONLY | constants.O_DIRECT), direct: true };
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== "EINVAL" && code !== "EOPNOTSUPP") throw new Error(`${path}: cannot open: ${(e as Error).message}`);
        log?.(`${path}: the filesystem refuses O_DIRECT (${code}): reading through the page cache, which is not bypassed`);
      }
    }
  }
  try {
    return { fd: openSync(path, constants.O_RDONLY), direct: false };
  } catch (e) {
    throw new Error(`${path}: cannot open: ${(e as Error).message}`);
  }
}

/** An aligned buffer of `bytes` (rounded up to 4096). */
function alignedBuffer(bytes: number): Uint8Array {
  const raw = new Uint8Array(alignUp(bytes) + ALIGN);
  const pad = (ALIGN - (addressOf(raw) % ALIGN)) % ALIGN;
  return raw.subarray(pad, pad + alignUp(bytes));
}

/**
 * Sequential read speed of `path` in bytes/s, reading chunks of `chunk` bytes from the start, up to
 * `maxBytes`, with `inFlight` reads outstanding. With O_DIRECT (default) the page cache is bypassed;
 * if the filesystem refuses it the reads are buffered and the result says `direct: false` (the figure
 * may then be the page cache's).
 */
export async function sequentialReadSpeed(path: string, o: { chunk?: number; maxBytes?: number; direct?: boolean; inFlight?: number } = {}): Promise<{ bytesPerSecond: number; bytes: number; seconds: number; direct: boolean }> {
  const chunk = alignUp(o.chunk ?? 8 << 20), inFlight = o.inFlight ?? 2;
  if (!(chunk > 0) || !(inFlight >= 1)) throw new Error(`sequentialReadSpeed: chunk ${o.chunk} and inFlight ${o.inFlight} must be positive`);
  const { fd, direct } = openFile(path, o.direct ?? true);
  try {
    const limit = Math.min(fstatSync(fd).size, o.maxBytes ?? Infinity);
    const bufs = Array.from({ length: inFlight }, () => alignedBuffer(chunk));
    let next = 0, bytes = 0;
    const t0 = performance.now();
    const one = (buf: Uint8Array): Promise<void> =>
      new Promise((resolve, reject) => {
        const loop = () => {
          if (next >= limit) return resolve();
          const pos = next, want = Math.min(chunk, limit - pos);
          next += chunk;
          read(fd, buf, 0, direct ? alignUp(want) : want, pos, (err, n) => {
            if (err) return reject(new Error(`${path}: read at byte ${pos} failed: ${err.message}`));
            if (n < want) return reject(new Error(`${path}: read at byte ${pos} returned ${n} of ${want} bytes (file truncated?)`));
            bytes += Math.min(n, want);
            loop();
          });
        };
        loop();
      });
    await Promise.all(bufs.map(one));
    const seconds = (performance.now() - t0) / 1000;
    return { bytesPerSecond: bytes / seconds, bytes, seconds, direct };
  } finally {
    closeSync(fd);
  }
}
