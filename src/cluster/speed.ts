// How fast a node runs the model's matrix x vector kernel: what `--split auto` sizes each node's share
// by. Decoding reads every weight once per token, so a node's time per token is its share of the
// weights divided by this speed; shares in proportion to it make the nodes finish each reduction
// together. Measured on a synthetic matrix larger than the caches (the model file may not be in the
// page cache yet, and timing the disk would say nothing about the node's compute).
import type { GGUFFile } from "../model/gguf";
import { type GGMLType, type Kernels, traits, typeBytes } from "../native/types";

export interface SpeedOptions {
  /** bytes of the synthetic weight matrix (default 64 MiB: beyond a small machine's caches and the
   *  32 MiB L3 of many x86 ones, so that it times the memory as the model does) */
  bytes?: number;
  /** keep timing passes until this much time has gone by (default 0.35 s), at least 3 passes */
  seconds?: number;
}

/**
 * MB/s of weights of `type` that `k` (with all its threads) multiplies by one vector, sustained: all
 * the passes' bytes over their whole time. Not the best pass: a node held to part of a CPU (a cgroup
 * quota, `cpu.max`) runs at full speed until its quota of the scheduler's period (100 ms by default)
 * is spent, so one pass of a few ms measures the CPU it does not have. (Measured 2026-12-02: a worker
 * at half a CPU reported 37401 MB/s against the root's 43400 by its best pass, and `--split auto` ran
 * 0.94x `--split even`.) The window spans several periods.
 */
export function measureSpeed(k: Kernels, type: GGMLType, o: SpeedOptions = {}): number {
  const cols = 4096;
  const rowBytes = typeBytes(type, cols);
  const rows = Math.max(8, Math.floor((o.bytes ?? 64 * 1024 * 1024) / rowBytes));
  // 0x11 bytes: every fp16 / bf16 / f32 value and block scale is a small normal number (no denormal
  // slow paths), every quantized value in range
  const w = new Uint8Array(rows * rowBytes).fill(0x11);
  const act = traits(type).activation;
  const x = new Uint8Array(typeBytes(act, cols)).fill(0x11);
  const out = new Float32Array(rows);
  k.matmul(out, rows, w, type, x, cols, 0, rows, 1); // warm-up: page faults, thread wake-up
  const t0 = performance.now(), until = t0 + (o.seconds ?? 0.35) * 1000;
  let passes = 0;
  while (passes < 3 || (performance.now() < until && passes < 100_000)) {
    k.matmul(out, rows, w, type, x, cols, 0, rows, 1);
    passes++;
  }
  return (passes * w.length) / (Math.max(performance.now() - t0, 1e-3) / 1000) / 1e6;
}

/** The weight type that dominates a model's bytes (its feed-forward matrices). */
export function dominantType(g: GGUFFile): GGMLType {
  return g.tensor("blk.0.ffn_up.weight").type as GGMLType;
}

/**
 * Relative weights (whole numbers for the Session message) from measured speeds in MB/s: the speeds
 * themselves, rounded, at least 1 and at most `max` (larger ones scaled down together).
 */
export function weightsFromSpeeds(speeds: readonly number[], max: number): number[] {
  const top = Math.max(...speeds);
  const scale = top > max ? max / top : 1;
  return speeds.map((s) => Math.min(max, Math.max(1, Math.round(s * scale))));
}
