// A worker: listens for a root, checks that both hold the same model file (and the cluster secret),
// maps its own copy of the file, and runs every forward step the root starts over its own copy of
// the residual stream, computing its slice of every layer and completing each reduction with the
// root (RootLink). It serves one root session after another; a bad frame closes that connection only.
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { statSync } from "node:fs";
import { readConfig } from "../model/config";
import { GGUFFile, ggmlTypeName } from "../model/gguf";
import { type KVCache, LlamaModel, loadWeights, type Peers, Phase, SliceCopies } from "../model/llama";
import { loadKernels } from "../native/index";
import { GGMLType, type Kernels, TYPE_TRAITS } from "../native/types";
import { measureSpeed } from "./speed";
import { Conn, connect, connHandlers, parseWorkerList } from "./conn";
import { type Spinner, spinner } from "./spin";
import { processWarmer, type Warmer, warmFor } from "./warm";
import { Op, Profiler, profiledKernels } from "../profile/profiler";
import { formatBytes, StreamedWeights } from "../model/streamed";
import { sliceOffsets } from "./plan";
import { exchangesPartials, partition, type Range, type Slice, splitVocab } from "./partition";
import type { ModelConfig } from "../model/config";
import { compareIdentity, fileIdentity, type FileIdentity } from "./storage";
import {
  ALL_CAPABILITIES,
  blockFrameProblem,
  Capability,
  decodeActivation,
  ErrorCode,
  FLAG_FEED_FORWARD,
  FLAG_STATS_RESET,
  MAX_U32,
  MeshMode,
  MessageType,
  messageTypeName,
  NONCE_BYTES,
  PROTOCOL_VERSION,
  roundTripActivation,
  SESSION_EXCHANGE,
  SESSION_LOGITS,
  SESSION_PROFILE,
  writeActivationFrame,
  type Message,
  type WireType,
} from "./protocol";

export interface WorkerOptions {
  host: string;
  port: number;
  modelPath: string;
  secret?: string;
  threads: number;
  /** --max-memory: stream this node's weight slices through a budget of this many bytes */
  maxMemory?: number;
  name?: string;
  log?: (line: string) => void;
  /** how long a root may stay silent inside a step before the session is dropped */
  idleTimeoutMs?: number;
  /** after sending a result, busy-polls for the root's next message (spin.ts; default: the process's
   *  spinner, null: never) */
  spinner?: Spinner | null;
}

export function hmac(secret: string, nonce: Uint8Array): Uint8Array {
  return new Uint8Array(createHmac("sha256", secret).update(nonce).digest().subarray(0, 16));
}

export function md5FromHex(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g)!.map((b) => parseInt(b, 16)));
}

interface Session {
  conn: Conn;
  model: LlamaModel;
  link: RootLink;
  /** set when the root asked for a profile (SESSION_PROFILE) */
  prof: Profiler | null;
  cache: KVCache;
  node: number;
  nodes: number;
  /** the links to the other workers (three nodes or more), from the root's Mesh message on */
  mesh: Mesh | null;
}

/** A session's links to the other workers: links[i] to node i (null for the root, this node, and
 *  links not up yet). This worker opens those to lower indexes and accepts those from higher ones. */
interface Mesh {
  token: Uint8Array;
  links: (Conn | null)[];
}

/** How long a worker waits for the links of a mesh to come up. */
const MESH_TIMEOUT_MS = 5000;

export interface RunningWorker {
  readonly port: number;
  stop(): void;
}

export async function startWorker(o: WorkerOptions): Promise<RunningWorker> {
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const name = o.name ?? `${o.host}:${o.port}`;
  let kernels: Kernels | null = null;
  let session: Session | null = null;
  /** the column slices' copies of the last session, for the next one with the same split */
  const copies = new SliceCopies();
  let identity: FileIdentity | null = null;
  let identityError: string | null = null;
  let stamp: string | null | undefined; // undefined: not identified yet
  /** The model file as it is now (at start-up, then at each handshake): one replaced, changed or
   *  created since it was identified (size, modification time or inode differ) is identified again,
   *  and the copies kept from the last session are dropped; one gone refuses roots. */
  const identify = async (): Promise<void> => {
    const now = fileStamp(o.modelPath);
    if (now === stamp) return;
    const again = stamp !== undefined;
    stamp = now;
    copies.clear();
    try {
      identity = await fileIdentity(o.modelPath);
      identityError = null;
      if (again) log(`worker ${name}: ${o.modelPath} changed since it was identified: now ${identity.size} bytes, fast md5 ${identity.fastMd5}`);
    } catch (e) {
      identity = null;
      identityError = (e as Error).message;
      log(`worker ${name}: ${identityError} (roots will be refused until the file is there)`);
    }
  };
  await identify();

  if (o.maxMemory !== undefined && identity) checkBudget(o.modelPath, o.maxMemory, name, log);
  let closeStream: (() => Promise<void>) | null = null;
  /** The secret's challenge, when this worker has one; throws (after telling the peer) on a wrong answer. */
  const challenge = async (conn: Conn, who: string): Promise<void> => {
    if (!o.secret) return;
    const nonce = new Uint8Array(randomBytes(NONCE_BYTES));
    conn.send({ type: MessageType.Challenge, nonce, ranges: [] });
    const r = await conn.expect(MessageType.ChallengeResponse, 10_000, "the secret challenge");
    const want = hmac(o.secret, nonce);
    if (!Buffer.from(r.message.digest).equals(Buffer.from(want))) throw refuse(conn, ErrorCode.Unauthorized, `worker ${name} refused ${who}: wrong cluster secret`);
  };

  /** A link from another worker of the current session (its PeerHello): checked, then handed to the
   *  session's mesh. Resolves to true when the connection now belongs to the mesh. */
  const acceptLink = async (conn: Conn, h: Extract<Message, { type: MessageType.PeerHello }>): Promise<boolean> => {
    await challenge(conn, `${conn.peer}, which claimed to be worker node ${h.node} of a session`);
    // its Mesh message may reach this worker a moment after the peer's: wait for it
    const deadline = Date.now() + MESH_TIMEOUT_MS;
    const token = Buffer.from(h.token);
    while (!(session?.mesh && timingSafeEqual(Buffer.from(session.mesh.token), token))) {
      if (Date.now() > deadline) throw refuse(conn, ErrorCode.Unauthorized, `worker ${name}: no session of this worker has the mesh token that ${conn.peer} gave`);
      await Bun.sleep(5);
    }
    const s = session, mesh = s.mesh!;
    if (!(h.node > s.node && h.node < s.nodes) || mesh.links[h.node]) {
      throw refuse(conn, ErrorCode.BadPlan, `worker ${name} (node ${s.node} of ${s.nodes}): a link from node ${h.node} is not expected`);
    }
    conn.peer = `worker node ${h.node} (${conn.socket.remoteAddress})`;
    mesh.links[h.node] = conn;
    conn.send({ type: MessageType.MeshAck, problem: "" });
    return true;
  };

  /** Mesh Connect: open the links to the lower-index workers, wait for the higher ones; the root hears
   *  whether every link is up (MeshAck). */
  const connectMesh = async (s: Session, m: Extract<Message, { type: MessageType.Mesh }>): Promise<void> => {
    if (s.mesh || s.node === 0 || m.addrs.length !== s.nodes - 1) throw refuse(s.conn, ErrorCode.BadPlan, `worker ${name}: a mesh of ${m.addrs.length} worker addresses for node ${s.node} of ${s.nodes}${s.mesh ? " (a mesh is already up)" : ""}`);
    const mesh: Mesh = { token: m.token, links: new Array<Conn | null>(s.nodes).fill(null) };
    s.mesh = mesh;
    let problem = "";
    let opening: Conn | null = null;
    try {
      const addrs = parseWorkerList(m.addrs.join(","));
      for (let j = 1; j < s.node; j++) {
        const a = addrs[j - 1]!;
        const link = (opening = await connect(a.host, a.port, `worker ${a.addr}`, MESH_TIMEOUT_MS));
        link.send({ type: MessageType.PeerHello, version: PROTOCOL_VERSION, node: s.node, token: m.token });
        let r = await link.next(MESH_TIMEOUT_MS, "the link");
        if (r.message.type === MessageType.Challenge) {
          if (!o.secret) throw new Error(`${link.peer} requires a cluster secret and this worker has none`);
          link.send({ type: MessageType.ChallengeResponse, digest: hmac(o.secret, r.message.nonce) });
          r = await link.next(MESH_TIMEOUT_MS, "the link");
        }
        if (r.message.type === MessageType.Error) throw new Error(`${link.peer}: ${r.message.message}`);
        if (r.message.type !== MessageType.MeshAck || r.message.problem) throw new Error(`${link.peer} answered the link with ${r.message.type === MessageType.MeshAck ? r.message.problem : messageTypeName(r.message.type)}`);
        if (s.mesh !== mesh) link.fail(new Error("mesh dropped"));
        else mesh.links[j] = link;
        opening = null;
      }
      const deadline = Date.now() + MESH_TIMEOUT_MS;
      for (;;) {
        const missing = mesh.links.map((l, j) => (j > s.node && !l ? j : -1)).filter((j) => j >= 0);
        if (!missing.length) break;
        if (Date.now() > deadline) throw new Error(`no link from node(s) ${missing.join(", ")} (${missing.map((j) => m.addrs[j - 1]).join(", ")}) within ${MESH_TIMEOUT_MS / 1000} s`);
        await Bun.sleep(2);
      }
      log(`worker ${name}: linked to the other workers (${mesh.links.map((l, j) => (l ? `node ${j} ${l.peer}` : "")).filter(Boolean).join(", ")})`);
    } catch (e) {
      opening?.fail(e as Error);
      problem = `worker ${name}: ${(e as Error).message}`;
      log(`${problem}; reductions will go through the root`);
    }
    s.conn.send({ type: MessageType.MeshAck, problem });
  };

  const handle = async (conn: Conn): Promise<boolean> => {
    // ---- handshake: version, model file, secret (or a link from another worker)
    const hello = await conn.next(10_000, "the hello");
    if (hello.message.type === MessageType.PeerHello) return acceptLink(conn, hello.message);
    if (hello.message.type !== MessageType.Hello) throw refuse(conn, ErrorCode.Protocol, `expected Hello, got ${messageTypeName(hello.message.type)}`);
    const h = hello.message;
    if (h.version !== PROTOCOL_VERSION) throw refuse(conn, ErrorCode.Version, `protocol version ${h.version} refused: this worker speaks ${PROTOCOL_VERSION}`);
    await identify();
    if (!identity) throw refuse(conn, ErrorCode.ModelMismatch, `worker ${name} cannot use its model file: ${identityError}`);
    const md5 = Buffer.from(h.model.sampleMd5).toString("hex");
    let local = identity;
    let remote: FileIdentity = { path: h.model.path, size: h.model.size, fastMd5: md5 };
    if (h.capabilities & Capability.FullMd5) {
      // the root asked for a full-file comparison (--verify full): hash every byte once, then reuse
      if (!identity.fullMd5) {
        log(`worker ${name}: computing the full MD5 of ${identity.path} for ${conn.peer} ...`);
        identity = await fileIdentity(o.modelPath, { full: true });
      }
      local = identity;
      remote = { ...remote, fastMd5: identity.fastMd5, fullMd5: md5 };
    }
    const diff = compareIdentity(local, remote, "the root");
    if (diff) throw refuse(conn, ErrorCode.ModelMismatch, `worker ${name} has a different model file at ${identity.path}: ${diff}`);
    await challenge(conn, "the root");
    if (session) throw refuse(conn, ErrorCode.Busy, `worker ${name} is busy serving another root`);
    // a worker streaming its weights through --max-memory keeps the output matrix out of its budget
    const capabilities = ALL_CAPABILITIES | (o.maxMemory === undefined ? Capability.Logits : 0);
    conn.send({ type: MessageType.HelloAck, version: PROTOCOL_VERSION, capabilities, name, model: { path: identity.path, size: identity.size, sampleMd5: md5FromHex(identity.fastMd5) } });

    // ---- --split auto: time the kernel the root names; then the session and plan: map the file,
    // check the slice offsets the root expects
    let first = await conn.next(10_000, "the session settings");
    while (first.message.type === MessageType.Speed) {
      if (!TYPE_TRAITS.has(first.message.weightType)) throw refuse(conn, ErrorCode.BadPlan, `worker ${name}: cannot time weight type ${first.message.weightType} (${ggmlTypeName(first.message.weightType)})`);
      kernels ??= await loadKernels({ threads: o.threads });
      const mbPerSecond = Math.max(1, Math.min(MAX_U32, Math.round(measureSpeed(kernels, first.message.weightType as GGMLType))));
      log(`worker ${name}: ${ggmlTypeName(first.message.weightType)} matrix x vector at ${mbPerSecond} MB/s with ${kernels.threads} thread(s), for ${conn.peer}`);
      conn.send({ type: MessageType.Speed, weightType: first.message.weightType, mbPerSecond });
      first = await conn.next(30_000, "the session settings");
    }
    if (first.message.type === MessageType.Error) throw new Error(`${conn.peer}: ${first.message.message}`);
    if (first.message.type !== MessageType.Session) throw new Error(`${conn.peer}: expected Session (the session settings), got ${messageTypeName(first.message.type)}`);
    const s = first.message;
    const plan = (await conn.expect(MessageType.Plan, 10_000, "the plan")).message;
    const g = GGUFFile.open(o.modelPath);
    const config = readConfig(g);
    const weights = loadWeights(g, config);
    const slices = partition(config, s.nodes, alignmentOf(weights), s.weights);
    const slice = slices[s.node]!;
    if (s.flags & SESSION_EXCHANGE && !exchangesPartials(s.nodes)) throw refuse(conn, ErrorCode.BadPlan, `worker ${name}: exchanged reductions without links between workers need 2 nodes, not ${s.nodes}`);
    if (s.flags & SESSION_LOGITS && !(capabilities & Capability.Logits)) throw refuse(conn, ErrorCode.BadPlan, `worker ${name} streams its weights (--max-memory) and does not compute logits`);
    const logitRows = s.flags & SESSION_LOGITS ? splitVocab(config.vocabSize, s.nodes, s.weights)[s.node]! : undefined;
    const mine = sliceOffsets(g, config, slice, logitRows);
    const wrong = mine.findIndex((e, i) => plan.offsets[i]?.tensor !== e.tensor || plan.offsets[i]?.offset !== e.offset);
    if (wrong >= 0 || plan.offsets.length !== mine.length) {
      throw refuse(conn, ErrorCode.BadPlan, `worker ${name}: the plan's byte offsets do not match this file's layout (entry ${wrong}): refusing to compute a wrong slice`);
    }
    kernels ??= await loadKernels({ threads: o.threads });
    const prof = s.flags & SESSION_PROFILE ? new Profiler() : null;
    const kvType = s.kvType === GGMLType.F16 ? GGMLType.F16 : GGMLType.F32;
    let streamed: StreamedWeights | null = null;
    if (o.maxMemory !== undefined) {
      try {
        streamed = StreamedWeights.open(o.modelPath, g, config, weights, slice, false, { budget: o.maxMemory, otherBytes: memoryBesidesWeights(config, slice, s.nCtx, kvType), log });
      } catch (e) {
        throw refuse(conn, ErrorCode.OutOfMemory, `worker ${name}: ${(e as Error).message}`);
      }
      closeStream = () => {
        const st = streamed!.stats;
        log(`worker ${name}: streamed ${st.bytesRead} bytes in ${st.reads} reads (${st.readSeconds.toFixed(2)} s in flight, ${st.waitSeconds.toFixed(2)} s waited for)${st.direct ? "" : " through the page cache"}`);
        return streamed!.close();
      };
    }
    const idle = o.idleTimeoutMs ?? 24 * 3600_000;
    const spin = o.spinner === undefined ? spinner : o.spinner;
    const link = new RootLink(conn, kernels, config, s.wire, (s.flags & SESSION_EXCHANGE) !== 0, s.node, s.nodes, logitRows ?? null, prof, idle, spin);
    const model = new LlamaModel(config, weights, prof ? profiledKernels(kernels, prof) : kernels, slice, link, prof, streamed, copies);
    if (copies.reused) log(`worker ${name}: ${copies.reused} column slices (${(copies.reusedBytes / 2 ** 20).toFixed(1)} MiB) kept from the last session, ${copies.made} copied`);
    session = { conn, model, link, prof, cache: model.newCache(s.nCtx, kvType), node: s.node, nodes: s.nodes, mesh: null };
    conn.send({ type: MessageType.PlanAck, layers: plan.layers });
    log(`worker ${name}: serving ${conn.peer} as node ${s.node} of ${s.nodes} (KV heads ${slice.kvHeads.start}..${slice.kvHeads.end - 1}, feed-forward ${slice.ffn.start}..${slice.ffn.end - 1}${logitRows ? `, logits ${logitRows.start}..${logitRows.end - 1}` : ""}), wire ${s.wire === GGMLType.Q8_0 ? "q8_0" : s.wire === GGMLType.F16 ? "f16" : "f32"}`);

    // ---- steps
    let answered = false; // a step just ended: the root's next Step is due within a token's time
    for (;;) {
      const r = await conn.next(idle, "the next step", answered ? spin : null);
      answered = false;
      session.prof?.idle(Op.NetworkWait);
      const m = r.message;
      if (m.type === MessageType.Bye) return false;
      if (m.type === MessageType.Mesh) {
        if (m.mode === MeshMode.Connect) await connectMesh(session, m);
        else if (m.mode === MeshMode.Use && session.mesh?.links.every((l, j) => l || j === 0 || j === session!.node)) session.link.useMesh(session.mesh.links);
        else if (m.mode === MeshMode.Use) throw refuse(conn, ErrorCode.BadPlan, `worker ${name}: asked to use a mesh whose links are not all up`);
        else dropMesh(session, "the root dropped the mesh");
        continue;
      }
      if (m.type === MessageType.Ping) {
        conn.send({ type: MessageType.Pong, time: m.time });
        continue;
      }
      if (m.type === MessageType.Stats) {
        conn.send({ type: MessageType.Stats, stats: session.prof?.toStats() ?? [] });
        if (r.flags & FLAG_STATS_RESET) session.prof?.reset();
        continue;
      }
      if (m.type !== MessageType.Step) throw refuse(conn, ErrorCode.BadPlan, `unexpected ${messageTypeName(m.type)} between steps`);
      const n = m.tokens.length;
      if (m.logits !== 0 && m.logits !== 1 && m.logits !== n) throw refuse(conn, ErrorCode.BadPlan, `Step of ${n} tokens asks for the logits of ${m.logits}: 0, 1 or ${n} expected`);
      if (m.logits && !session.link.rows) throw refuse(conn, ErrorCode.BadPlan, "Step asks for logits from a worker that has no rows of them");
      session.link.logits = m.logits;
      try {
        await session.model.forward(m.tokens, m.pos, session.cache, m.logits > 1);
      } catch (e) {
        // tell the root why (a token outside the vocabulary, positions beyond the context, a bad
        // partial), unless it is the connection itself that failed
        if (conn.closed) throw e;
        throw refuse(conn, ErrorCode.Compute, `worker ${name}: the step at position ${m.pos} failed: ${(e as Error).message}`);
      }
      answered = true;
    }
  };

  const server = Bun.listen<{ conn: Conn }>({
    hostname: o.host,
    port: o.port,
    socket: {
      open(socket) {
        const conn = new Conn(socket, `root ${socket.remoteAddress}`);
        socket.data = { conn };
        handle(conn)
          .catch((e: Error) => {
            log(`worker ${name}: ${conn.peer}: ${e.message}`);
            return false;
          })
          .then((link) => {
            if (session?.conn === conn) {
              dropMesh(session, "the session ended");
              session = null;
              closeStream?.().catch(() => {});
              closeStream = null;
              log(`worker ${name}: session with ${conn.peer} ended; ready for the next root`);
            }
            if (!link) conn.fail(new Error("session over")); // a link of the mesh lives on with its session
          });
      },
      data: connHandlers.data,
      drain: connHandlers.drain,
      close(socket) {
        connHandlers.close(socket);
        // the root is gone: a step waiting for another worker's partial must not wait on
        if (session?.conn === socket.data.conn) dropMesh(session, "the root closed the connection");
      },
      error(socket, err) {
        connHandlers.error(socket, err);
        if (session?.conn === socket.data.conn) dropMesh(session, "the root's connection failed");
      },
    },
  });
  const id = identity as FileIdentity | null; // set by identify(), which TypeScript's narrowing does not follow
  log(`worker ${name}: listening on ${o.host}:${server.port}, model ${o.modelPath}${id ? ` (${id.size} bytes, fast md5 ${id.fastMd5})` : ""}`);
  if (!o.secret) log(`worker ${name}: WARNING: no cluster secret (--secret or DAIRLLM_SECRET): anyone who can reach ${o.host}:${server.port} can use this worker`);
  return { port: server.port, stop: () => server.stop(true) };
}

/**
 * A worker's side of the reductions (the Peers of its LlamaModel): its partial output of each block
 * goes to the root as a Result; the root's Partial completes it (SESSION_EXCHANGE: the root's own
 * partial, added to this node's as the wire delivers it; else the sum over all nodes).
 */
class RootLink implements Peers {
  /** how many last tokens' logits this step wants from this worker (the Step says) */
  logits = 0;
  private tmp = new Float32Array(0);
  private acc = new Float32Array(0);
  private rowsOut = new Float32Array(0);
  /** the mesh's links by node index (three nodes or more), empty without a mesh */
  private links: (Conn | null)[] = [];

  constructor(
    private readonly conn: Conn,
    /** the plain kernels (the model's may be the profiled ones) */
    private readonly k: Kernels,
    private readonly c: ModelConfig,
    private readonly wire: WireType,
    /** the reductions are exchanges: two nodes (SESSION_EXCHANGE), or a mesh (useMesh) */
    private exchange: boolean,
    /** this worker's node index, and the node count */
    private readonly node: number,
    private readonly nodes: number,
    /** SESSION_LOGITS: the rows of the output projection this worker computes */
    readonly rows: Range | null,
    private readonly prof: Profiler | null,
    private readonly waitMs: number,
    private readonly spinner: Spinner | null,
  ) {
    this.warmer = processWarmer(k);
  }
  /** reads the next weights into the cache while a partial is awaited (warm.ts); null: off */
  readonly warmer: Warmer | null;

  begin(): void {
    // the root started the step (its Step message is what runs forward() here)
  }

  /** From the next reduction on, exchange partials with every node over the mesh's links. */
  useMesh(links: (Conn | null)[]): void {
    this.links = links;
    this.exchange = true;
  }

  async reduce(layer: number, phase: Phase, part: Float32Array, n: number, next?: readonly Uint8Array[]): Promise<void> {
    const { conn, k, prof: p, links } = this, size = n * this.c.dim, shape = [n, this.c.dim], ffn = phase === Phase.FeedForward;
    const own = part.subarray(0, size);
    let t = p ? p.start() : 0;
    // this node's partial: to the root, and with a mesh to every other worker
    const send = (to: Conn, type: MessageType.Result | MessageType.Partial) => {
      writeActivationFrame(to.writer, k, type, { seq: to.nextSeq(), layer, flags: ffn ? FLAG_FEED_FORWARD : 0 }, own, shape, this.wire);
      if (p) t = p.lap(Op.WireCompress, t);
      to.flushWriter();
      if (p) t = p.lap(Op.NetworkSend, t);
    };
    send(conn, MessageType.Result);
    for (const l of links) if (l) send(l, MessageType.Partial);
    if (this.exchange) roundTripActivation(k, own, shape, this.wire);
    const what = `layer ${layer} (${ffn ? "feed-forward" : "attention"})`;
    t = p ? p.start() : 0;
    const warmer = warmFor(this.warmer, next);
    const r = await conn.next(this.waitMs, `the root's partial of ${what}`, this.spinner, warmer);
    if (p) p.stop(Op.NetworkWait, t);
    const m = r.message;
    if (m.type === MessageType.Bye) throw new Error(`${conn.peer} ended the session in the middle of a step`);
    if (m.type === MessageType.Error) throw new Error(`${conn.peer}: ${m.message}`);
    const problem = blockFrameProblem(r, MessageType.Partial, layer, ffn, n, this.c.dim);
    if (problem || m.type !== MessageType.Partial) throw refuse(conn, ErrorCode.BadPlan, `${conn.peer} answered ${what} with ${problem}`);
    t = p ? p.start() : 0;
    if (!this.exchange) {
      // the root sent the sum over all nodes
      decodeActivation(k, m.tensor, own);
      conn.recycle(r);
      if (p) p.stop(Op.WireDecompress, t);
      return;
    }
    // every node adds all partials in node order (the root's first), so all get the same bits: two
    // nodes, the root's and this one's; a mesh, each worker's from its link, this node's own in its place
    if (this.tmp.length < size) this.tmp = new Float32Array(size);
    if (this.acc.length < size) this.acc = new Float32Array(size);
    const acc = this.acc.subarray(0, size);
    decodeActivation(k, m.tensor, acc);
    conn.recycle(r);
    if (p) t = p.lap(Op.WireDecompress, t);
    for (let j = 1; j < this.nodes; j++) {
      if (j === this.node) {
        k.add(acc, acc, own, size);
        if (p) t = p.lap(Op.Add, t);
        continue;
      }
      const l = links[j]!;
      const rj = await l.next(this.waitMs, `${l.peer}'s partial of ${what}`, this.spinner, warmer);
      if (p) t = p.lap(Op.NetworkWait, t);
      const pj = blockFrameProblem(rj, MessageType.Partial, layer, ffn, n, this.c.dim);
      if (pj || rj.message.type !== MessageType.Partial) throw new Error(`${l.peer} answered ${what} with ${pj}`);
      decodeActivation(k, rj.message.tensor, this.tmp);
      l.recycle(rj);
      if (p) t = p.lap(Op.WireDecompress, t);
      k.add(acc, acc, this.tmp, size);
      if (p) t = p.lap(Op.Add, t);
    }
    own.set(acc);
  }

  logitRows(): readonly Range[] | null {
    return this.logits && this.rows ? [this.rows] : [];
  }

  /** Sends this worker's rows of the logits (n tokens) to the root. */
  async finishLogits(logits: Float32Array, n: number): Promise<void> {
    const rows = this.rows, p = this.prof;
    if (!this.logits || !rows) return;
    const vocab = this.c.vocabSize, nr = rows.end - rows.start;
    let out: Float32Array;
    if (n === 1) out = logits.subarray(rows.start, rows.end);
    else {
      if (this.rowsOut.length < n * nr) this.rowsOut = new Float32Array(n * nr);
      out = this.rowsOut.subarray(0, n * nr);
      for (let i = 0; i < n; i++) out.set(logits.subarray(i * vocab + rows.start, i * vocab + rows.end), i * nr);
    }
    const t = p ? p.start() : 0;
    writeActivationFrame(this.conn.writer, this.k, MessageType.Logits, { seq: this.conn.nextSeq() }, out, [n, nr], GGMLType.F32);
    this.conn.flushWriter();
    if (p) p.stop(Op.NetworkSend, t);
  }
}

/** Closes a session's mesh links (the session ended, or the root dropped the mesh). */
function dropMesh(s: Session, why: string): void {
  const mesh = s.mesh;
  if (!mesh) return;
  s.mesh = null;
  for (const l of mesh.links) l?.fail(new Error(why));
}

/** Sends an Error to the peer and returns the Error to throw locally. */
function refuse(conn: Conn, code: ErrorCode, message: string): Error {
  try {
    conn.send({ type: MessageType.Error, code, message });
  } catch {
    // the connection is already gone
  }
  return new Error(message);
}

/**
 * At start, before any root: a worker whose --max-memory cannot hold its layer slice even as one of
 * the most nodes the model can be split into refuses to start; otherwise it says how many nodes the
 * budget needs (the exact check runs when a root assigns the slice).
 */
function checkBudget(path: string, budget: number, name: string, log: (l: string) => void): void {
  const g = GGUFFile.open(path);
  const c = readConfig(g);
  const w = loadWeights(g, c);
  const need = (nodes: number) => StreamedWeights.minimumBudget(g, c, w, partition(c, nodes, alignmentOf(w))[nodes - 1]!, false);
  let fits = 0, smallest = need(1), smallestNodes = 1;
  for (let n = 1; n <= Math.min(c.nHeads, 64) && !fits; n++) {
    let bytes: number;
    try {
      bytes = need(n);
    } catch {
      continue; // this model cannot be split into n nodes
    }
    if (bytes <= budget) fits = n;
    if (bytes < smallest) [smallest, smallestNodes] = [bytes, n];
  }
  if (!fits) throw new Error(`worker ${name}: --max-memory ${formatBytes(budget)} is below the ${formatBytes(smallest)} of weights a layer slice of ${path} needs even as one of ${smallestNodes} nodes (${formatBytes(need(1))} on a single node): raise --max-memory`);
  log(`worker ${name}: streaming weights through --max-memory ${formatBytes(budget)} (${fits === 1 ? "enough for any cluster size" : `enough as one of ${fits} or more nodes`}; the KV cache and activations come on top)`);
}

/** Bytes a node holds besides its weights: its KV cache and its activation scratch for one token. */
export function memoryBesidesWeights(c: ModelConfig, s: Slice, nCtx: number, kvType: GGMLType.F32 | GGMLType.F16): { kvCache: number; activations: number } {
  const kvDim = (s.kvHeads.end - s.kvHeads.start) * c.headDim, qDim = (s.heads.end - s.heads.start) * c.headDim, ffn = s.ffn.end - s.ffn.start;
  const kvCache = 2 * c.nLayers * nCtx * kvDim * (kvType === GGMLType.F16 ? 2 : 4);
  const activations = 4 * (2 * qDim + 2 * kvDim + 2 * ffn + 5 * c.dim + c.vocabSize);
  return { kvCache, activations };
}

export function alignmentOf(w: { layers: { wo: { type: number }; wDown: { type: number } }[] }): number {
  const t = w.layers[0]?.wo.type;
  return t === GGMLType.Q8_0 || t === GGMLType.Q4_0 ? 32 : 1;
}

/** What tells a changed model file: its size, modification time and inode ("" for an embedded one,
 *  which cannot change; null when it cannot be read). */
function fileStamp(path: string): string | null {
  if (path.startsWith("/$bunfs/")) return "";
  try {
    const st = statSync(path);
    return `${st.size} ${st.mtimeMs} ${st.ino}`;
  } catch {
    return null;
  }
}
