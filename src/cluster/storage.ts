// File identity for the storage coordinator. Every node reads the model from its own (or shared)
// storage and no weights cross the network, so before a run each node proves it holds the same file
// by sending its FileIdentity; the root compares it with its own (compareIdentity).
//
// fastMd5 = MD5(samples || size as uint64 little-endian), where the samples are
//   size <  3 MiB: the whole file
//   size >= 3 MiB: three 1 MiB reads, in this order:
//                  [0, 1 MiB)
//                  [mid, mid + 1 MiB) with mid = floor((size - 1 MiB) / 2) rounded down to 4096
//                  [size - 1 MiB, size)
// (the three never overlap once size >= 3 MiB). It costs three reads whatever the size and catches
// a different model, a different quantisation, a truncated or extended copy, and damage to the
// header, the tensor index, the middle or the tail. It does NOT see a change confined to the bytes
// between the samples (e.g. a flipped bit in one tensor); only fullMd5, the MD5 of the whole file,
// does, at the cost of reading every byte (fileIdentity(path, { full: true })).
//
// Files are read through file descriptors into one reused buffer (at most 4 MiB in memory), never
// mapped and never loaded whole, so any size works, including files larger than RAM.
import { constants, readFileSync, type Stats } from "node:fs";
import { type FileHandle, open, stat } from "node:fs/promises";

export const MiB = 1 << 20;
export const SAMPLE_BYTES = MiB;
export const FULL_CHUNK_BYTES = 4 * MiB;

export interface FileIdentity {
  path: string;
  size: number;
  fastMd5: string; // hex
  fullMd5?: string; // hex, only when asked for (reads the whole file)
}

export interface IdentityOptions {
  full?: boolean;
  /** Progress of the full MD5: bytes hashed so far and the file size; starts at 0, ends at size. */
  onProgress?: (done: number, total: number) => void;
}

/** The byte ranges [offset, offset + length) that fastMd5 hashes, in order. */
export function sampleRanges(size: number): [offset: number, length: number][] {
  if (size < 3 * SAMPLE_BYTES) return [[0, size]];
  const mid = Math.floor((size - SAMPLE_BYTES) / 2 / 4096) * 4096;
  return [
    [0, SAMPLE_BYTES],
    [mid, SAMPLE_BYTES],
    [size - SAMPLE_BYTES, SAMPLE_BYTES],
  ];
}

/** The 8 bytes mixed into fastMd5 after the samples: the size as a little-endian uint64. */
export function sizeBytes(size: number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(size), true);
  return b;
}

/** Size, fast MD5 and (with `full`) the MD5 of the whole file. Errors name the path and the problem. */
export async function fileIdentity(path: string, opts: IdentityOptions = {}): Promise<FileIdentity> {
  if (path.startsWith("/$bunfs/")) return embeddedIdentity(path, opts);
  // stat before open: opening a FIFO would block, and a directory opens fine on Linux.
  checkKind(path, await stat(path).catch((e) => fail(path, e)));
  const fh = await open(path, constants.O_RDONLY).catch((e) => fail(path, e));
  try {
    const st = await fh.stat(); // the file actually opened (the path may have changed since)
    checkKind(path, st);
    const size = st.size;
    const buf = Buffer.allocUnsafe(Math.min(opts.full ? FULL_CHUNK_BYTES : SAMPLE_BYTES, Math.max(size, 1)));

    const fast = new Bun.CryptoHasher("md5");
    for (const [off, len] of sampleRanges(size)) {
      for (let done = 0; done < len; ) {
        const n = Math.min(len - done, buf.length);
        await readFully(fh, path, buf, n, off + done);
        fast.update(buf.subarray(0, n));
        done += n;
      }
    }
    fast.update(sizeBytes(size));
    const id: FileIdentity = { path, size, fastMd5: fast.digest("hex") };

    if (opts.full) {
      const full = new Bun.CryptoHasher("md5");
      opts.onProgress?.(0, size);
      for (let pos = 0; pos < size; ) {
        const n = Math.min(size - pos, buf.length);
        await readFully(fh, path, buf, n, pos);
        full.update(buf.subarray(0, n));
        pos += n;
        opts.onProgress?.(pos, size);
      }
      id.fullMd5 = full.digest("hex");
    }
    return id;
  } catch (e) {
    throw e instanceof StorageError ? e : fail(path, e);
  } finally {
    await fh.close().catch(() => {});
  }
}

/** A file embedded in a compiled binary (the demo model): small, read whole, same rule. */
function embeddedIdentity(path: string, opts: IdentityOptions): FileIdentity {
  const bytes = new Uint8Array(readFileSync(path));
  const fast = new Bun.CryptoHasher("md5");
  for (const [off, len] of sampleRanges(bytes.length)) fast.update(bytes.subarray(off, off + len));
  fast.update(sizeBytes(bytes.length));
  const id: FileIdentity = { path, size: bytes.length, fastMd5: fast.digest("hex") };
  if (opts.full) {
    opts.onProgress?.(0, bytes.length);
    id.fullMd5 = new Bun.CryptoHasher("md5").update(bytes).digest("hex");
    opts.onProgress?.(bytes.length, bytes.length);
  }
  return id;
}

export class StorageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StorageError";
  }
}

function checkKind(path: string, st: Stats): void {
  if (st.isDirectory()) throw new StorageError(`${path}: is a directory, not a model file`);
  if (!st.isFile()) throw new StorageError(`${path}: not a regular file`);
  if (st.size === 0) throw new StorageError(`${path}: empty file (0 bytes)`);
}

function fail(path: string, e: unknown): never {
  const code = (e as NodeJS.ErrnoException).code;
  const what: Record<string, string> = {
    ENOENT: "no such file",
    ENOTDIR: "no such file (a component of the path is not a directory)",
    EACCES: "permission denied",
    EPERM: "permission denied",
    EISDIR: "is a directory, not a model file",
    ELOOP: "too many levels of symbolic links",
    EIO: "I/O error (failing disk or lost network mount?)",
  };
  throw new StorageError(`${path}: ${(code && what[code]) ?? `cannot be read (${code ?? (e as Error).message})`}`);
}

/** Reads exactly n bytes at pos into buf (reads may come back short); a file that shrank is an error. */
async function readFully(fh: FileHandle, path: string, buf: Buffer, n: number, pos: number): Promise<void> {
  for (let got = 0; got < n; ) {
    const { bytesRead } = await fh.read(buf, got, n - got, pos + got);
    if (bytesRead === 0) throw new StorageError(`${path}: file ended at byte ${pos + got} while reading (changed while being checked?)`);
    got += bytesRead;
  }
}

/**
 * null when both sides hold the same file: equal size and fastMd5, and equal fullMd5 when both
 * have one. Otherwise one message naming the first difference. Paths are not compared (each node
 * has its own mount) but are named in the message.
 */
export function compareIdentity(local: FileIdentity, remote: FileIdentity, where = "the worker"): string | null {
  const paths = `(here: ${local.path}; ${where}: ${remote.path})`;
  if (local.size !== remote.size) return `size ${local.size} here, ${remote.size} on ${where} ${paths}`;
  if (local.fastMd5.toLowerCase() !== remote.fastMd5.toLowerCase())
    return `fast checksum ${local.fastMd5} here, ${remote.fastMd5} on ${where} (same size: a different or corrupted file) ${paths}`;
  if (local.fullMd5 && remote.fullMd5 && local.fullMd5.toLowerCase() !== remote.fullMd5.toLowerCase())
    return `full checksum ${local.fullMd5} here, ${remote.fullMd5} on ${where} (same size and sampled checksum: the files differ between the samples, a corrupted copy) ${paths}`;
  return null;
}

/** Where progressBar writes; process.stderr by default (a parameter for the tests). */
export interface ProgressSink {
  isTTY?: boolean;
  write(s: string): unknown;
}

/**
 * A progress callback that draws `\r<label> [#####.....] 42% 123/456 MiB` on stderr, at most ~10
 * times a second, and ends the line at 100%. When stderr is not a terminal it prints nothing
 * until it writes one final line at 100%.
 */
export function progressBar(label: string, out: ProgressSink = process.stderr, width = 20): (done: number, total: number) => void {
  let last = -Infinity;
  let finished = false;
  return (done, total) => {
    const end = done >= total;
    if (finished || (!out.isTTY && !end)) return;
    const now = performance.now();
    if (!end && now - last < 100) return;
    last = now;
    const f = total > 0 ? Math.min(done / total, 1) : 1;
    const fill = Math.round(f * width);
    const digits = total >= 10 * MiB ? 0 : 1;
    const line = `${label} [${"#".repeat(fill)}${".".repeat(width - fill)}] ${Math.floor(f * 100)}% ${(done / MiB).toFixed(digits)}/${(total / MiB).toFixed(digits)} MiB`;
    if (end) finished = true;
    out.write(out.isTTY ? `\r${line}${end ? "\n" : ""}` : `${line}\n`);
  };
}
