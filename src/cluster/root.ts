// The root's side of a cluster: connect to the workers, check them (protocol version, identical
// model file, cluster secret), send each its plan, then per step send the token ids and complete
// every reduction with them (partition.ts exchangesPartials). A worker that dies, stalls or answers
// nonsense stops the root with a message naming it.
import type { ModelConfig } from "../model/config";
import type { GGUFFile } from "../model/gguf";
import { Phase, type Peers } from "../model/llama";
import { GGMLType, type Kernels } from "../native/types";
import { Conn, connect, parseWorkerList, type Received, Silent } from "./conn";
import { type Spinner, spinner } from "./spin";
import { processWarmer, type Warmer, warmFor } from "./warm";
import { sliceOffsets } from "./plan";
import { checkWeights, equalWeights, exchangesPartials, MAX_SPLIT_WEIGHT, partition, type Range, type Slice, splitVocab } from "./partition";
import { dominantType, measureSpeed, weightsFromSpeeds } from "./speed";
import { ggmlTypeName } from "../model/gguf";
import { type FileIdentity } from "./storage";
import { type Counters, countersFromStats, Op, type Profiler } from "../profile/profiler";
import { hmac, md5FromHex } from "./worker";
import { randomBytes } from "node:crypto";
import {
  ALL_CAPABILITIES,
  blockFrameProblem,
  Capability,
  decodeActivation,
  DEFAULT_MAX_PAYLOAD,
  FLAG_FEED_FORWARD,
  FLAG_STATS_RESET,
  HEADER_SIZE,
  MeshMode,
  MessageType,
  NONCE_BYTES,
  tensorMetaBytes,
  PROTOCOL_VERSION,
  roundTripActivation,
  SESSION_EXCHANGE,
  SESSION_LOGITS,
  SESSION_PROFILE,
  writeActivationFrame,
  writeMessage,
  type WireType,
} from "./protocol";

export interface ClusterOptions {
  workers: string[]; // host:port
  secret?: string;
  wire: WireType;
  nCtx: number;
  kvType: GGMLType.F32 | GGMLType.F16;
  connectTimeoutMs?: number;
  /** a worker silent this long inside a step is declared stalled */
  stallTimeoutMs?: number;
  /** busy-polls for a worker's result before sleeping (spin.ts; default: the process's spinner, null: never) */
  spinner?: Spinner | null;
  /** compare full-file MD5s instead of the sampled one (the identity must then carry fullMd5) */
  verifyFull?: boolean;
  /** time the root's side of the wire, and ask the workers to time theirs */
  profiler?: Profiler | null;
  /** column granularity of the model's weights (partition.ts; worker.ts alignmentOf) */
  align: number;
  /** relative weights of the nodes' shares, the root first; "auto": in proportion to each node's
   *  measured matrix x vector speed (speed.ts); default: equal shares */
  split?: number[] | "auto";
  /** progress and the chosen split */
  log?: (line: string) => void;
  /** three nodes or more: links between the workers, so that a reduction crosses the network once
   *  (default true; false, or links that cannot be opened: every reduction goes through the root) */
  mesh?: boolean;
}

export class ClusterPeers implements Peers {
  private tmp = new Float32Array(0);
  /** per worker: the logits rows it computes (SESSION_LOGITS), or null when the root computes them */
  private readonly workerRows: (Range | null)[];
  /** the rows of the logits the root computes: its own and those of workers that do not */
  private readonly localLogitRows: Range[];
  /** the workers exchange partials over links of their own (three nodes or more) */
  meshed = false;
  /** this step: the workers compute their rows of the logits */
  private splitLogits = false;
  /** bytes the root sent and received, bytes the workers sent each other (a mesh: each sends every
   *  other worker what it sends the root), reductions; for the figures */
  readonly stats = { bytesOut: 0, bytesIn: 0, bytesBetweenWorkers: 0, syncs: 0 };
  /** every node's slice, the root's first */
  slices: Slice[] = [];
  /** the relative weights the shares were cut by (--split), the root first */
  weights: number[] = [];
  /** reads the next weights into the cache while a reduction is awaited (warm.ts); null: off */
  readonly warmer: Warmer | null;

  private constructor(
    readonly conns: Conn[],
    private readonly k: Kernels,
    private readonly c: ModelConfig,
    private readonly wire: WireType,
    private readonly stallMs: number,
    private readonly prof: Profiler | null,
    private readonly spinner: Spinner | null,
  ) {
    this.warmer = processWarmer(k);
    this.workerRows = conns.map(() => null);
    this.localLogitRows = [];
  }

  static async connect(g: GGUFFile, c: ModelConfig, identity: FileIdentity, k: Kernels, o: ClusterOptions): Promise<ClusterPeers> {
    const addrs = parseWorkerList(o.workers.join(","));
    const nodes = addrs.length + 1;
    if (Array.isArray(o.split)) checkWeights(o.split, nodes);
    const conns = await Promise.all(addrs.map((a) => connect(a.host, a.port, `worker ${a.addr}`, o.connectTimeoutMs ?? 5000)));
    const peers = new ClusterPeers(conns, k, c, o.wire, o.stallTimeoutMs ?? 5000, o.profiler ?? null, o.spinner === undefined ? spinner : o.spinner);
    try {
      const logits = await Promise.all(conns.map((conn) => peers.hello(conn, identity, o)));
      const weights = o.split === "auto" ? await peers.measuredWeights(g, o) : (o.split ?? equalWeights(nodes));
      const slices = partition(c, nodes, o.align, weights);
      const vocab = splitVocab(c.vocabSize, nodes, weights);
      peers.slices = slices;
      peers.weights = weights;
      if (weights.some((w) => w !== weights[0])) {
        const who = (i: number) => (i === 0 ? "root" : conns[i - 1]!.peer);
        o.log?.(`shares by weight ${weights.join(":")}: ${slices.map((x, i) => `${who(i)} KV heads ${x.kvHeads.start}..${x.kvHeads.end - 1}, feed-forward ${x.ffn.start}..${x.ffn.end - 1}`).join("; ")}`);
      }
      await Promise.all(conns.map((conn, i) => peers.plan(conn, g, c, slices[i + 1]!, weights, o, i, logits[i]! ? vocab[i + 1]! : null)));
      if (nodes > 2 && o.mesh !== false) await peers.formMesh(addrs.map((a) => a.addr), o);
      // the rows the root computes itself, merged where they touch
      for (const r of [vocab[0]!, ...vocab.slice(1).filter((_, i) => !peers.workerRows[i])]) {
        const last = peers.localLogitRows[peers.localLogitRows.length - 1];
        if (last && last.end === r.start) peers.localLogitRows[peers.localLogitRows.length - 1] = { start: last.start, end: r.end };
        else peers.localLogitRows.push(r);
      }
    } catch (e) {
      peers.close();
      throw e;
    }
    return peers;
  }

  /** Hello, the secret, the model file's identity. Resolves to whether the worker computes logits. */
  private async hello(conn: Conn, id: FileIdentity, o: ClusterOptions): Promise<boolean> {
    const t = 10_000;
    const full = o.verifyFull && id.fullMd5;
    const capabilities = ALL_CAPABILITIES | (full ? Capability.FullMd5 : 0);
    conn.send({ type: MessageType.Hello, version: PROTOCOL_VERSION, capabilities, name: "root", model: { path: id.path, size: id.size, sampleMd5: md5FromHex(full ? id.fullMd5! : id.fastMd5) } });
    // a worker hashing its whole file for --verify full may take a while
    let r = await conn.next(full ? 600_000 : t, "the hello");
    if (r.message.type === MessageType.Challenge) {
      if (!o.secret) throw new Error(`${conn.peer} requires a cluster secret: pass --secret or set DAIRLLM_SECRET`);
      conn.send({ type: MessageType.ChallengeResponse, digest: hmac(o.secret, r.message.nonce) });
      r = await conn.next(t, "the secret");
    }
    if (r.message.type === MessageType.Error) throw new Error(`${conn.peer}: ${r.message.message}`);
    if (r.message.type !== MessageType.HelloAck) throw new Error(`${conn.peer}: expected HelloAck, got message type ${r.message.type}`);
    // a worker that can computes its share of the logits (one more round trip per step, half the rows)
    return (r.message.capabilities & Capability.Logits) !== 0;
  }

  /**
   * Three nodes or more: asks the workers to open links to each other (each to those of lower index),
   * then to use them, or, when any link failed, to drop them (the reductions then go through the root,
   * two crossings of the network instead of one, and the root says why).
   */
  private async formMesh(addrs: string[], o: ClusterOptions): Promise<void> {
    const token = new Uint8Array(randomBytes(NONCE_BYTES));
    for (const conn of this.conns) conn.send({ type: MessageType.Mesh, mode: MeshMode.Connect, token, addrs });
    const acks = await Promise.all(this.conns.map((conn) => conn.expect(MessageType.MeshAck, 30_000, "the links to the other workers")));
    const problems = acks.map((a) => a.message.problem).filter(Boolean);
    for (const conn of this.conns) conn.send({ type: MessageType.Mesh, mode: problems.length ? MeshMode.Drop : MeshMode.Use, token, addrs: [] });
    if (problems.length) {
      o.log?.(`the workers cannot all reach each other (${problems.join("; ")}): every reduction goes through the root (two crossings of the network instead of one)`);
      return;
    }
    this.meshed = true;
  }

  /** two nodes, or a mesh: the root sends its own partial output and adds the workers' (else it sends
   *  the sum) */
  private get exchange(): boolean {
    return this.meshed || exchangesPartials(this.conns.length + 1);
  }

  /** --split auto: every node times its matrix x vector kernel at once; the weights are the speeds. */
  private async measuredWeights(g: GGUFFile, o: ClusterOptions): Promise<number[]> {
    const type = dominantType(g);
    for (const conn of this.conns) conn.send({ type: MessageType.Speed, weightType: type, mbPerSecond: 0 });
    const own = measureSpeed(this.k, type);
    const theirs = await Promise.all(this.conns.map(async (conn) => (await conn.expect(MessageType.Speed, 30_000, "its measured speed")).message.mbPerSecond));
    const weights = weightsFromSpeeds([own, ...theirs], MAX_SPLIT_WEIGHT);
    o.log?.(`split by measured ${ggmlTypeName(type)} matrix x vector speed: root ${own.toFixed(0)} MB/s, ${this.conns.map((c, i) => `${c.peer} ${theirs[i]} MB/s`).join(", ")}`);
    return weights;
  }

  /** The session settings and the plan: the slice the worker computes, and the file offsets of it. */
  private async plan(conn: Conn, g: GGUFFile, c: ModelConfig, slice: Slice, weights: number[], o: ClusterOptions, index: number, vocab: Range | null): Promise<void> {
    const nodes = weights.length;
    const flags = (o.profiler ? SESSION_PROFILE : 0) | (vocab ? SESSION_LOGITS : 0) | (exchangesPartials(nodes) ? SESSION_EXCHANGE : 0);
    conn.send({ type: MessageType.Session, node: slice.node, nodes, wire: o.wire, nCtx: o.nCtx, kvType: o.kvType, flags, weights });
    conn.send({ type: MessageType.Plan, layers: Array.from({ length: c.nLayers }, (_, i) => i), offsets: sliceOffsets(g, c, slice, vocab ?? undefined) });
    await conn.expect(MessageType.PlanAck, 10_000, "the plan");
    if (vocab) this.workerRows[index] = vocab;
  }

  begin(pos0: number, tokens: ArrayLike<number>, logits: number): void {
    let most = 0;
    for (const r of this.workerRows) if (r) most = Math.max(most, r.end - r.start);
    // logits of many tokens (perplexity) above a frame's limit: the root computes them all
    this.splitLogits = logits > 0 && most > 0 && logits * most * 4 + 64 <= DEFAULT_MAX_PAYLOAD;
    const ids = Uint32Array.from(tokens);
    for (let i = 0; i < this.conns.length; i++) {
      this.conns[i]!.send({ type: MessageType.Step, pos: pos0, logits: this.splitLogits && this.workerRows[i] ? logits : 0, tokens: ids });
    }
    this.stats.bytesOut += this.conns.length * (HEADER_SIZE + 12 + 4 * ids.length);
  }

  /**
   * Completes a reduction. Two nodes: the root's partial goes out at once, and both add the two.
   * More: the root adds the workers' partials to its own and sends the sum back. Each node adds
   * partials as the wire delivers them (its own too), so every copy of the residual stream is equal.
   */
  async reduce(layer: number, phase: Phase, part: Float32Array, n: number, next?: readonly Uint8Array[]): Promise<void> {
    const size = n * this.c.dim, shape = [n, this.c.dim];
    if (this.tmp.length < size) this.tmp = new Float32Array(size);
    const own = part.subarray(0, size);
    if (this.exchange) {
      for (const conn of this.conns) this.sendPartial(conn, layer, phase, own, shape);
      roundTripActivation(this.k, own, shape, this.wire);
    }
    const what = `layer ${layer} (${phase === Phase.FeedForward ? "feed-forward" : "attention"})`;
    const p = this.prof;
    let t = p ? p.start() : 0;
    const conns = this.conns;
    const warmer = warmFor(this.warmer, next);
    // one worker (the common case): no Promise.all and no array of promises per reduction
    const results = conns.length === 1 ? [await conns[0]!.next(this.stallMs, what, this.spinner, warmer)] : await this.gather(what, warmer);
    if (p) p.stop(Op.NetworkWait, t);
    this.stats.syncs++;
    for (let i = 0; i < results.length; i++) {
      const r = results[i]!, conn = this.conns[i]!;
      const m = r.message;
      if (m.type === MessageType.Error) throw new Error(`${conn.peer}: ${m.message}`);
      const problem = blockFrameProblem(r, MessageType.Result, layer, phase === Phase.FeedForward, n, this.c.dim);
      if (problem || m.type !== MessageType.Result) throw new Error(`${conn.peer} answered ${what} with ${problem}`);
      const frame = HEADER_SIZE + tensorMetaBytes(m.tensor.shape.length) + m.tensor.data.length;
      this.stats.bytesIn += frame;
      if (this.meshed) this.stats.bytesBetweenWorkers += (conns.length - 1) * frame;
      if (p) t = p.start();
      // in node order (the root's own first), as every node adds them
      decodeActivation(this.k, m.tensor, this.tmp);
      conn.recycle(r);
      if (p) t = p.lap(Op.WireDecompress, t);
      this.k.add(own, own, this.tmp, size);
      if (p) p.stop(Op.Add, t);
    }
    if (!this.exchange) {
      // the sum goes out as it is, then the root takes it as the workers will decode it
      for (const conn of conns) this.sendPartial(conn, layer, phase, own, shape);
      roundTripActivation(this.k, own, shape, this.wire);
    }
  }

  /**
   * Every worker's next message. Waits for all of them: with a mesh a worker may wait for another one's
   * partial, so a dead worker can make a live one answer with an Error and a stalled one can keep
   * others silent. A closed connection is named first; else every worker that stayed silent.
   */
  private async gather(what: string, warmer: Warmer | null = null): Promise<Received[]> {
    const settled = await Promise.all(this.conns.map((conn) => conn.next(this.stallMs, what, this.spinner, warmer).catch((e: Error) => e)));
    const closed = settled.find((r) => r instanceof Error && !(r instanceof Silent));
    if (closed) throw closed;
    const silent = settled.filter((r) => r instanceof Silent);
    if (silent.length === 1) throw silent[0]!;
    if (silent.length) throw new Error(`${this.conns.filter((_, i) => settled[i] instanceof Silent).map((c) => c.peer).join(" and ")} did not answer ${what} within ${(this.stallMs / 1000).toFixed(1)} s`);
    return settled as Received[];
  }

  private sendPartial(conn: Conn, layer: number, phase: Phase, x: Float32Array, shape: number[]): void {
    const p = this.prof;
    let t = p ? p.start() : 0;
    const flags = phase === Phase.FeedForward ? FLAG_FEED_FORWARD : 0;
    const info = writeActivationFrame(conn.writer, this.k, MessageType.Partial, { seq: conn.nextSeq(), layer, flags }, x, shape, this.wire);
    this.stats.bytesOut += info.frameBytes;
    if (p) t = p.lap(Op.WireCompress, t);
    conn.flushWriter();
    if (p) p.stop(Op.NetworkSend, t);
  }

  logitRows(): readonly Range[] | null {
    return this.splitLogits ? this.localLogitRows : null;
  }

  async finishLogits(into: Float32Array, n: number): Promise<void> {
    const vocab = this.c.vocabSize, p = this.prof;
    const asked = this.conns.filter((_, i) => this.workerRows[i]);
    let t = p ? p.start() : 0;
    const results = asked.length === 1 ? [await asked[0]!.next(this.stallMs, "the logits", this.spinner)] : await Promise.all(asked.map((conn) => conn.next(this.stallMs, "the logits", this.spinner)));
    if (p) p.stop(Op.NetworkWait, t);
    this.stats.syncs++;
    for (let i = 0, j = 0; i < this.conns.length; i++) {
      const rows = this.workerRows[i];
      if (!rows) continue;
      const r = results[j++]!, conn = this.conns[i]!, m = r.message, nr = rows.end - rows.start;
      if (m.type === MessageType.Error) throw new Error(`${conn.peer}: ${m.message}`);
      if (m.type !== MessageType.Logits) throw new Error(`${conn.peer} answered the logits with message type ${m.type}`);
      if (m.tensor.shape.length !== 2 || m.tensor.shape[0] !== n || m.tensor.shape[1] !== nr || m.tensor.type !== GGMLType.F32) {
        throw new Error(`${conn.peer} answered the logits with a [${m.tensor.shape.join(", ")}] tensor, expected [${n}, ${nr}] F32`);
      }
      this.stats.bytesIn += HEADER_SIZE + tensorMetaBytes(2) + m.tensor.data.length;
      if (p) t = p.start();
      if (this.tmp.length < n * nr) this.tmp = new Float32Array(n * nr);
      decodeActivation(this.k, m.tensor, this.tmp);
      conn.recycle(r);
      for (let tok = 0; tok < n; tok++) into.set(this.tmp.subarray(tok * nr, (tok + 1) * nr), tok * vocab + rows.start);
      if (p) p.stop(Op.WireDecompress, t);
    }
  }

  /** Each worker's profile counters (they time themselves when the session has SESSION_PROFILE);
   *  with `reset`, they start counting afresh. */
  async workerCounters(reset: boolean): Promise<Counters[]> {
    for (const conn of this.conns) conn.send({ type: MessageType.Stats, stats: [] }, { flags: reset ? FLAG_STATS_RESET : 0 });
    return Promise.all(
      this.conns.map(async (conn) => {
        const r = await conn.next(this.stallMs, "the profile request");
        if (r.message.type === MessageType.Error) throw new Error(`${conn.peer}: ${r.message.message}`);
        if (r.message.type !== MessageType.Stats) throw new Error(`${conn.peer} answered the profile request with message type ${r.message.type}`);
        return countersFromStats(r.message.stats, conn.peer);
      }),
    );
  }

  /** the activation encoding on the wire, as --wire names it */
  get wireName(): string {
    return this.wire === GGMLType.Q8_0 ? "q8_0" : this.wire === GGMLType.F16 ? "f16" : "f32";
  }

  close(): void {
    for (const conn of this.conns) {
      if (!conn.closed) {
        try {
          writeMessage(conn.writer, { type: MessageType.Bye }, { seq: conn.nextSeq() });
          conn.flushWriter();
        } catch {
          // gone already
        }
        conn.fail(new Error("closed by the root"));
      }
    }
  }
}
