// The profiler: where the time of a forward pass goes, per operation, on each node.
//
// Off (the default), nothing is timed: the model runs on the plain kernels and the only trace of the
// profiler on the hot path is one null check per matmul. On, the model runs on `profiledKernels`,
// which time every kernel call by what it computes, and the few call sites that know more (which
// weight a matmul reads, compression and network waits on the wire, sampling) time themselves.
//
// Every timed call records its start and end (Bun.nanoseconds). The gap between the end of one timed
// call and the start of the next is TypeScript: the JavaScript that runs between native calls. A
// node's rows therefore cover its wall time up to the ends of the profiled window; what is left is
// reported as "unaccounted".
//
// Workers send their counters to the root in a Stats message: StatId = op * 4 + field (field 0: ns,
// 1: calls, 2: weight bytes read), and STAT_ELAPSED_NS for the node's wall time since the last reset.
import type { StatEntry } from "../cluster/protocol";
import { type Bytes, type GGMLType, type Kernels, typeBytes } from "../native/types";
import type { NodeProfile, OpGroup, OpRow } from "./report";

export const enum Op {
  Embedding,
  RmsNorm,
  AttnQ,
  AttnK,
  AttnV,
  Rope,
  Attention,
  AttnOut,
  FfnGate,
  FfnUp,
  FfnDown,
  Activation,
  Add,
  Convert,
  Logits,
  Sampling,
  WireCompress,
  WireDecompress,
  NetworkSend,
  NetworkWait,
  StreamWait,
  TypeScript,
  Other,
}

interface OpInfo {
  id: string;
  label: string;
  group: OpGroup;
  /** reads weights: its bytes per second are worth printing */
  weights: boolean;
}

/** Indexed by Op. The ids are the stable names of the --json output. */
export const OPS: readonly OpInfo[] = [
  { id: "embedding", label: "token embedding", group: "compute", weights: true },
  { id: "rms_norm", label: "RMS norm", group: "compute", weights: false },
  { id: "attn_q", label: "attention q projection", group: "compute", weights: true },
  { id: "attn_k", label: "attention k projection", group: "compute", weights: true },
  { id: "attn_v", label: "attention v projection", group: "compute", weights: true },
  { id: "rope", label: "RoPE", group: "compute", weights: false },
  { id: "attention", label: "attention (scores, softmax, values)", group: "compute", weights: false },
  { id: "attn_o", label: "attention output projection", group: "compute", weights: true },
  { id: "ffn_gate", label: "feed-forward gate", group: "compute", weights: true },
  { id: "ffn_up", label: "feed-forward up", group: "compute", weights: true },
  { id: "ffn_down", label: "feed-forward down", group: "compute", weights: true },
  { id: "activation", label: "activation (SwiGLU)", group: "compute", weights: false },
  { id: "add", label: "residual and bias adds", group: "compute", weights: false },
  { id: "convert", label: "matmul input to Q8_0/F16, F16 KV", group: "compute", weights: false },
  { id: "logits", label: "output projection (logits)", group: "compute", weights: true },
  { id: "sampling", label: "sampling", group: "compute", weights: false },
  { id: "wire_compress", label: "wire compression (Q8_0)", group: "compression", weights: false },
  { id: "wire_decompress", label: "wire decompression", group: "compression", weights: false },
  { id: "network_send", label: "network send", group: "network", weights: false },
  { id: "network_wait", label: "network wait", group: "network", weights: false },
  { id: "stream_wait", label: "waiting for weights from disk", group: "io", weights: false },
  { id: "typescript", label: "TypeScript between native calls", group: "typescript", weights: false },
  { id: "other", label: "other kernels", group: "compute", weights: false },
];
export const OP_COUNT = OPS.length;
export const STAT_ELAPSED_NS = 0x10000;

const now = Bun.nanoseconds;

export class Profiler {
  readonly ns = new Float64Array(OP_COUNT);
  readonly calls = new Float64Array(OP_COUNT);
  readonly bytes = new Float64Array(OP_COUNT);
  /** end of the last timed call */
  private last = now();
  private since = this.last;

  /** Starts a timed call: the time since the previous one ends is TypeScript. */
  start(): number {
    const t = now();
    this.ns[Op.TypeScript]! += t - this.last;
    return t;
  }

  /** Ends the call started at t0, as `op`, which read `bytes` of weights. */
  stop(op: Op, t0: number, bytes = 0): void {
    const t = now();
    this.ns[op]! += t - t0;
    this.calls[op]!++;
    this.bytes[op]! += bytes;
    this.last = t;
  }

  /** Ends the call started at t0 as `op` and starts the next one at once. */
  lap(op: Op, t0: number): number {
    const t = now();
    this.ns[op]! += t - t0;
    this.calls[op]!++;
    this.last = t;
    return t;
  }

  /** The time since the last timed call ended was spent as `op` (a worker idle between frames). */
  idle(op: Op): void {
    const t = now();
    this.ns[op]! += t - this.last;
    this.calls[op]!++;
    this.last = t;
  }

  /** Zeroes the counters: the profiled window starts now. */
  reset(): void {
    this.ns.fill(0);
    this.calls.fill(0);
    this.bytes.fill(0);
    this.last = this.since = now();
  }

  /** Nanoseconds since the last reset. */
  elapsed(): number {
    return now() - this.since;
  }

  /** The counters as Stats entries (what a worker sends). */
  toStats(): StatEntry[] {
    const out: StatEntry[] = [];
    for (let op = 0; op < OP_COUNT; op++) {
      if (this.calls[op] === 0 && this.ns[op] === 0) continue;
      out.push({ id: op * 4, value: Math.round(this.ns[op]!) }, { id: op * 4 + 1, value: this.calls[op]! }, { id: op * 4 + 2, value: this.bytes[op]! });
    }
    out.push({ id: STAT_ELAPSED_NS, value: Math.round(this.elapsed()) });
    return out;
  }
}

/** Counters as the root holds them for each node, from its own Profiler or a worker's Stats. */
export interface Counters {
  ns: Float64Array;
  calls: Float64Array;
  bytes: Float64Array;
  elapsedNs: number;
}

export function countersOf(p: Profiler): Counters {
  return { ns: p.ns.slice(), calls: p.calls.slice(), bytes: p.bytes.slice(), elapsedNs: p.elapsed() };
}

/** Decodes a worker's Stats; unknown ids (a newer worker) are ignored, values are checked. */
export function countersFromStats(stats: StatEntry[], from: string): Counters {
  const c: Counters = { ns: new Float64Array(OP_COUNT), calls: new Float64Array(OP_COUNT), bytes: new Float64Array(OP_COUNT), elapsedNs: 0 };
  for (const { id, value } of stats) {
    if (!Number.isFinite(value) || value < 0) throw new Error(`${from} sent a bad profile value ${value} for stat ${id}`);
    if (id === STAT_ELAPSED_NS) c.elapsedNs = value;
    else if (id >> 2 < OP_COUNT && (id & 3) < 3) [c.ns, c.calls, c.bytes][id & 3]![id >> 2] = value;
  }
  return c;
}

/**
 * One node's table: each op's share of `wallNs` (the node's wall time over the profiled window), per
 * token over `tokens` tokens, and the "unaccounted" rest, so that the rows sum to the wall time.
 */
export function nodeProfile(name: string, role: "root" | "worker", c: Counters, wallNs: number, tokens: number): NodeProfile {
  const per = (v: number) => v / tokens;
  const ops: OpRow[] = OPS.map((info, op) => ({
    op: info.id,
    label: info.label,
    group: info.group,
    share: wallNs > 0 ? c.ns[op]! / wallNs : 0,
    msPerToken: per(c.ns[op]!) / 1e6,
    callsPerToken: per(c.calls[op]!),
    gbPerSecond: info.weights && c.ns[op]! > 0 ? c.bytes[op]! / c.ns[op]! : null,
  }));
  const accounted = c.ns.reduce((a, b) => a + b, 0);
  const rest = wallNs - accounted;
  ops.push({ op: "unaccounted", label: "unaccounted (outside timed calls)", group: "unaccounted", share: wallNs > 0 ? rest / wallNs : 0, msPerToken: per(rest) / 1e6, callsPerToken: 0, gbPerSecond: null });
  const groups: Record<OpGroup, number> = { compute: 0, compression: 0, network: 0, io: 0, typescript: 0, unaccounted: 0 };
  for (const r of ops) groups[r.group] += r.msPerToken;
  return { name, role, wallMsPerToken: per(wallNs) / 1e6, ops, groups };
}

/**
 * The kernels, each call timed as what it computes. matmul passes through untimed: its callers know
 * which weight it reads and time it themselves (SliceCompute.matmul, the logits).
 */
export function profiledKernels(k: Kernels, p: Profiler): Kernels {
  const timed = <A extends unknown[]>(op: Op, f: (...a: A) => void) => (...a: A): void => {
    const t = p.start();
    f(...a);
    p.stop(op, t);
  };
  return {
    name: k.name,
    threads: k.threads,
    matmul: k.matmul.bind(k),
    rmsnorm: timed(Op.RmsNorm, k.rmsnorm.bind(k)),
    softmax: timed(Op.Other, k.softmax.bind(k)),
    silu: timed(Op.Activation, k.silu.bind(k)),
    gelu: timed(Op.Activation, k.gelu.bind(k)),
    swiglu: timed(Op.Activation, k.swiglu.bind(k)),
    add: timed(Op.Add, k.add.bind(k)),
    mul: timed(Op.Other, k.mul.bind(k)),
    scale: timed(Op.Other, k.scale.bind(k)),
    rope: timed(Op.Rope, k.rope.bind(k)),
    attention: timed(Op.Attention, k.attention.bind(k)),
    quantizeQ8_0: timed(Op.Convert, k.quantizeQ8_0.bind(k)),
    // the model dequantizes only token embedding rows
    dequantize: (out: Float32Array, x: Bytes, type: GGMLType, n: number) => {
      const t = p.start();
      k.dequantize(out, x, type, n);
      p.stop(Op.Embedding, t, typeBytes(type, n));
    },
    f32ToF16: timed(Op.Convert, k.f32ToF16.bind(k)),
    f16ToF32: timed(Op.Convert, k.f16ToF32.bind(k)),
    f32ToBf16: timed(Op.Convert, k.f32ToBf16.bind(k)),
    releaseFilePages: k.releaseFilePages.bind(k),
    copyRows: k.copyRows.bind(k),
    warm: k.warm.bind(k),
  };
}
