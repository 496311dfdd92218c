// The cluster wire protocol: constants, message types, payload layouts and the activation codec.
// framer.ts holds the frame level (the 24-byte header, the Writer, the streaming Framer).
//
// Everything is little-endian. Payload layouts (sizes in bytes; "str" = u32 byte length + UTF-8):
//
//   Hello, HelloAck      u16 version, u32 capabilities (Capability bits), str name (<= 4096),
//                        str model path (<= 4096), u64 model size, 16 model sample MD5
//                        = 38 + name + path bytes
//   Challenge            16 nonce, u32 n, n x (u64 offset, u32 length)   = 20 + 12n
//   ChallengeResponse    16 digest                                        = 16
//   Plan                 layer list, offset index                         = 8 + 4 layers + 12 entries
//   PlanAck              layer list (the layers the worker now serves)    = 4 + 4n
//   Partial, Result,     tensor metadata, data in the wire type          = 5 + 4 dims + data
//   Logits               (Partial: root to worker, what completes the worker's reduction, see
//                        SESSION_EXCHANGE; Result: worker to root, its partial output; Logits:
//                        worker to root, its rows of the logits, only with SESSION_LOGITS)
//   Stats                u32 n, n x (u32 StatId, u64 value)               = 4 + 12n
//                        (root to worker with n = 0: a request; the StatId scheme is in
//                        src/profile/profiler.ts)
//   Error                u32 ErrorCode, str message (<= 4096)            = 8 + message bytes
//   Bye                  (empty)
//   Ping, Pong           u64 sender clock in ns (Pong echoes Ping's)     = 8
//   Step                 u32 first position, u32 logits (how many last tokens' logits the worker
//                        computes its rows of: 0, 1 or n), u32 n, n x u32 token id: one forward pass
//                        over a batch of n tokens, which every node runs on its own copy of the
//                        residual stream                                 = 12 + 4n
//   Session              u32 node index, u32 node count, u32 wire type, u32 context size,
//                        u32 KV cache type (GGML id), u32 flags (SESSION_*), node count x u32
//                        relative weight of each node's share (partition.ts; 1..MAX_SPLIT_WEIGHT)
//                                                                         = 24 + 4 nodes
//   Speed                u32 weight type (GGML id), u32 MB/s: root to worker with 0 MB/s, a request
//                        to time its matrix x vector kernel on that type (--split auto); the worker
//                        answers with what it measured                   = 8
//   Mesh                 u32 MeshMode, 16 session token, u32 n, n x str worker address (<= 256,
//                        "host:port" as the root reached node i + 1; only with MeshMode.Connect)
//                                                                         = 24 + 4n + address bytes
//   PeerHello            u16 version, u32 node index of the sender, 16 session token: a worker
//                        opening its link to a worker of a lower index   = 22
//   MeshAck              str problem (<= 4096; empty: done): worker to root when its links are
//                        up (or not), worker to worker when it accepted a link
//                                                                         = 4 + problem bytes
//
//   layer list           u32 n, n x u32 layer index                       = 4 + 4n
//   offset index         u32 n, n x (u32 tensor id, u64 byte offset)      = 4 + 12n
//   tensor metadata      u8 n_dims (1..4), u32 dims (outermost first: (rows, cols) for a matrix,
//                        cols contiguous), u32 wire type (GGML id: 0 F32, 1 F16, 8 Q8_0)
//                                                                         = 1 + 4 dims + 4
//
// Decoding is for untrusted bytes: every count is checked against the bytes left before anything is
// allocated, every string against its maximum, and a payload must be consumed exactly. Violations
// throw a ProtocolError naming the field and the value.
import type { Writer } from "./framer";
import { GGMLType, type Kernels } from "../native/types";
import { MAX_SPLIT_WEIGHT } from "./partition";

// ---- constants ----------------------------------------------------------------------------------

/** "DLLM" read as a little-endian u32 (bytes 44 4c 4c 4d). */
export const MAGIC = 0x4d4c4c44;
export const PROTOCOL_VERSION = 4;
export const HEADER_SIZE = 24;
/** The header's layer field when the message is not about a layer. */
export const NO_LAYER = 0xffffffff;
export const MAX_U32 = 0xffffffff;
/** Header flag bit 0: the last frame of a step. The other bits are reserved and must be 0. */
export const FLAG_LAST_OF_STEP = 0x0001;
/** Header flag bit 1 on Partial / Result: the feed-forward half of the layer (else attention). */
export const FLAG_FEED_FORWARD = 0x0002;
/** Header flag bit 2 on a Stats request (a Stats with no entries, root to worker): the worker answers
 *  with its counters and then zeroes them. */
export const FLAG_STATS_RESET = 0x0004;
export const FLAGS_KNOWN = FLAG_LAST_OF_STEP | FLAG_FEED_FORWARD | FLAG_STATS_RESET;
/** Session flag bit 0: the worker times its operations (answers Stats requests with them). */
export const SESSION_PROFILE = 0x0001;
/** Session flag bit 1 (only to a worker whose HelloAck has Capability.Logits): the worker computes its
 *  share of the logits (partition.ts splitVocab). The Plan's offset index then ends with one more
 *  entry, the first of those rows of the output tensor. When a Step asks for logits, the worker
 *  computes its rows from its own copy of the final hidden state (the same as the root's to the bit)
 *  and sends them in a Logits message (tensor [logits, rows], F32). */
export const SESSION_LOGITS = 0x0002;
/** Session flag bit 2: the reductions are exchanges (two nodes): the root's Partial is its own partial
 *  output, and each node adds the two. (Three nodes or more exchange too once a Mesh of links between
 *  the workers is in use: every node sends its partial to every other and adds all in node order.) Without it the root sums the workers' Results and its own and
 *  sends the sum back as the Partial. Either way every node adds the same values in the same order,
 *  so the residual stream is the same to the bit on every node (partition.ts exchangesPartials). */
export const SESSION_EXCHANGE = 0x0004;
/** Default largest payload a Framer accepts (and a Writer builds). */
export const DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024;
/** Largest node name / model path in a Hello, and Error message (bytes of UTF-8). */
export const MAX_NAME_BYTES = 4096;
export const MAX_PATH_BYTES = 4096;
export const MAX_ERROR_MESSAGE_BYTES = 4096;
export const MD5_BYTES = 16;
export const NONCE_BYTES = 16;
export const MAX_TENSOR_DIMS = 4;
export const Q8_0_BLOCK_VALUES = 32;
export const Q8_0_BLOCK_BYTES = 34; // fp16 scale + 32 int8

/** Byte offsets of the header fields. */
export const enum HeaderOffset {
  Magic = 0,
  Version = 4,
  Type = 6,
  Flags = 8,
  Reserved = 10,
  Seq = 12,
  Length = 16,
  Layer = 20,
}

export const enum MessageType {
  Hello = 1,
  HelloAck = 2,
  Challenge = 3,
  ChallengeResponse = 4,
  Plan = 5,
  PlanAck = 6,
  /** root to worker: the root's partial output of a block, or the sum over all nodes */
  Partial = 7,
  /** worker to root: its partial output of a block */
  Result = 8,
  Logits = 9,
  Stats = 10,
  Error = 11,
  Bye = 12,
  Ping = 13,
  Pong = 14,
  /** the positions of the next forward step */
  Step = 15,
  /** the session settings a worker needs before its plan */
  Session = 16,
  /** a worker's measured matrix x vector speed (--split auto) */
  Speed = 17,
  /** root to worker: open the links to the other workers (three nodes or more), then use or drop them */
  Mesh = 18,
  /** worker to worker: the first message of a link between two workers of one session */
  PeerHello = 19,
  /** the links are up (or why not) */
  MeshAck = 20,
}

/** What a Mesh message asks. */
export const enum MeshMode {
  /** open links to the workers of lower index, accept them from higher ones, answer MeshAck */
  Connect = 0,
  /** every worker's links are up: reductions are exchanges over them from the next step on */
  Use = 1,
  /** some link failed: close the links; reductions go through the root */
  Drop = 2,
}
export const MAX_ADDRESS_BYTES = 256;

const MESSAGE_TYPE_NAMES = [
  "?", "Hello", "HelloAck", "Challenge", "ChallengeResponse", "Plan", "PlanAck",
  "Partial", "Result", "Logits", "Stats", "Error", "Bye", "Ping", "Pong", "Step", "Session", "Speed",
  "Mesh", "PeerHello", "MeshAck",
];

export function isMessageType(t: number): t is MessageType {
  return Number.isInteger(t) && t >= MessageType.Hello && t <= MessageType.MeshAck;
}

export function messageTypeName(t: number): string {
  return isMessageType(t) ? MESSAGE_TYPE_NAMES[t]! : `type ${t}`;
}

/** Hello capability bits: the activation wire types a node can decode. */
export const enum Capability {
  Q8_0 = 1 << 0,
  F16 = 1 << 1,
  F32 = 1 << 2,
  /** in a root's Hello: the model MD5 is the full-file MD5 (--verify full), not the sample one */
  FullMd5 = 1 << 3,
  /** in a worker's HelloAck: it can compute its rows of the output projection (SESSION_LOGITS) */
  Logits = 1 << 4,
}
export const ALL_CAPABILITIES = Capability.Q8_0 | Capability.F16 | Capability.F32;

/** Activation wire types: GGML type ids. */
export type WireType = GGMLType.F32 | GGMLType.F16 | GGMLType.Q8_0;

export function isWireType(t: number): t is WireType {
  return t === GGMLType.F32 || t === GGMLType.F16 || t === GGMLType.Q8_0;
}

export function wireTypeName(t: number): string {
  return t === GGMLType.F32 ? "F32" : t === GGMLType.F16 ? "F16" : t === GGMLType.Q8_0 ? "Q8_0" : `type ${t}`;
}

/** The most compact wire type both sides decode (caps = ours & theirs), or null. */
export function pickWireType(caps: number): WireType | null {
  if (caps & Capability.Q8_0) return GGMLType.Q8_0;
  if (caps & Capability.F16) return GGMLType.F16;
  if (caps & Capability.F32) return GGMLType.F32;
  return null;
}

export const enum ErrorCode {
  Protocol = 1,
  Version = 2,
  ModelMismatch = 3,
  BadPlan = 4,
  Compute = 5,
  OutOfMemory = 6,
  Internal = 7,
  Unauthorized = 8,
  Busy = 9,
}

/** A peer broke the protocol. `field` names the offending field; the message gives its value. */
export class ProtocolError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
    this.name = "ProtocolError";
  }
}

// ---- messages -----------------------------------------------------------------------------------

export interface ModelIdentity {
  path: string;
  /** file size in bytes */
  size: number;
  /** 16-byte MD5 of the fast sample checksum */
  sampleMd5: Uint8Array;
}

export interface HelloBody {
  version: number;
  capabilities: number;
  name: string;
  model: ModelIdentity;
}

export interface ByteRange {
  offset: number;
  length: number;
}

export interface OffsetEntry {
  tensor: number;
  offset: number;
}

export interface StatEntry {
  id: number;
  value: number;
}

export interface TensorMeta {
  /** outermost first, 1..4 dims, each >= 1 */
  shape: number[];
  type: WireType;
}

export interface WireTensor extends TensorMeta {
  /** the data in the wire type (decoded: a view into the frame's payload) */
  data: Uint8Array;
}

/** One member per message type (none shared), so `m.type === MessageType.X` and `Extract<Message, { type: T }>` narrow to it. */
export type Message =
  | ({ type: MessageType.Hello } & HelloBody)
  | ({ type: MessageType.HelloAck } & HelloBody)
  | { type: MessageType.Challenge; nonce: Uint8Array; ranges: ByteRange[] }
  | { type: MessageType.ChallengeResponse; digest: Uint8Array }
  | { type: MessageType.Plan; layers: number[]; offsets: OffsetEntry[] }
  | { type: MessageType.PlanAck; layers: number[] }
  | { type: MessageType.Partial; tensor: WireTensor }
  | { type: MessageType.Result; tensor: WireTensor }
  | { type: MessageType.Logits; tensor: WireTensor }
  | { type: MessageType.Stats; stats: StatEntry[] }
  | { type: MessageType.Error; code: number; message: string }
  | { type: MessageType.Bye }
  | { type: MessageType.Ping; time: number }
  | { type: MessageType.Pong; time: number }
  | { type: MessageType.Step; pos: number; logits: number; tokens: Uint32Array }
  | { type: MessageType.Session; node: number; nodes: number; wire: WireType; nCtx: number; kvType: number; flags: number; weights: number[] }
  | { type: MessageType.Speed; weightType: number; mbPerSecond: number }
  | { type: MessageType.Mesh; mode: MeshMode; token: Uint8Array; addrs: string[] }
  | { type: MessageType.PeerHello; version: number; node: number; token: Uint8Array }
  | { type: MessageType.MeshAck; problem: string };

// ---- Reader -------------------------------------------------------------------------------------

const utf8 = new TextDecoder("utf-8", { fatal: true });
const textEncoder = new TextEncoder();

/** Bounds-checked cursor over one payload; errors are named `${what}.${field}`. */
export class Reader {
  private pos = 0;
  private readonly view: DataView;

  constructor(
    private readonly bytes: Uint8Array,
    readonly what: string,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get remaining(): number {
    return this.bytes.length - this.pos;
  }

  fail(field: string, message: string): never {
    throw new ProtocolError(`${this.what}.${field}`, `${this.what}: ${message}`);
  }

  private need(n: number, field: string): void {
    if (n > this.remaining) {
      this.fail(field, `${field} needs ${n} bytes at offset ${this.pos}, only ${this.remaining} of ${this.bytes.length} remain (truncated payload)`);
    }
  }

  u8(field: string): number {
    this.need(1, field);
    return this.view.getUint8(this.pos++);
  }

  u16(field: string): number {
    this.need(2, field);
    const v = this.view.getUint16(this.pos, true);
    this.pos += 2;
    return v;
  }

  u32(field: string): number {
    this.need(4, field);
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }

  /** A u64 that must fit a safe integer (file offsets and sizes do). */
  u64(field: string): number {
    this.need(8, field);
    const lo = this.view.getUint32(this.pos, true);
    const hi = this.view.getUint32(this.pos + 4, true);
    if (hi > 0x1fffff) this.fail(field, `${field} 0x${hi.toString(16)}${lo.toString(16).padStart(8, "0")} is above 2^53`);
    this.pos += 8;
    return hi * 0x1_0000_0000 + lo;
  }

  /** n bytes as a view into the payload. */
  bytesView(n: number, field: string): Uint8Array {
    this.need(n, field);
    const b = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  string(field: string, maxBytes: number): string {
    const len = this.u32(`${field}.length`);
    if (len > maxBytes) this.fail(`${field}.length`, `${field} length ${len} is above the maximum of ${maxBytes} bytes`);
    const b = this.bytesView(len, field);
    try {
      return utf8.decode(b);
    } catch {
      return this.fail(field, `${field} is not valid UTF-8`);
    }
  }

  /** A u32 entry count, checked against the bytes left before anything is allocated. */
  count(field: string, entryBytes: number): number {
    const n = this.u32(`${field}.count`);
    if (n * entryBytes > this.remaining) {
      this.fail(`${field}.count`, `${field} count ${n} needs ${n * entryBytes} bytes, only ${this.remaining} remain`);
    }
    return n;
  }

  done(): void {
    if (this.remaining !== 0) this.fail("length", `${this.remaining} trailing bytes after the last field (payload is ${this.bytes.length} bytes)`);
  }
}

// ---- shared pieces ------------------------------------------------------------------------------

function checkU32(what: string, v: number): void {
  if (!Number.isInteger(v) || v < 0 || v > MAX_U32) throw new RangeError(`${what} ${v} is not a u32`);
}

export function layerListBytes(n: number): number {
  return 4 + 4 * n;
}

export function offsetIndexBytes(n: number): number {
  return 4 + 12 * n;
}

export function writeLayerList(w: Writer, layers: readonly number[]): void {
  w.u32(layers.length);
  for (const l of layers) {
    if (l === NO_LAYER) throw new RangeError("layer list: 0xFFFFFFFF (NO_LAYER) is not a layer");
    w.u32(l);
  }
}

export function readLayerList(r: Reader, field = "layers"): number[] {
  const n = r.count(field, 4);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const l = r.u32(`${field}[${i}]`);
    if (l === NO_LAYER) r.fail(`${field}[${i}]`, `${field}[${i}] is 0xFFFFFFFF (NO_LAYER), not a layer`);
    out[i] = l;
  }
  return out;
}

export function writeOffsetIndex(w: Writer, entries: readonly OffsetEntry[]): void {
  w.u32(entries.length);
  for (const e of entries) w.u32(e.tensor).u64(e.offset);
}

export function readOffsetIndex(r: Reader, field = "offsets"): OffsetEntry[] {
  const n = r.count(field, 12);
  const out = new Array<OffsetEntry>(n);
  for (let i = 0; i < n; i++) out[i] = { tensor: r.u32(`${field}[${i}].tensor`), offset: r.u64(`${field}[${i}].offset`) };
  return out;
}

/** Stand-alone layer list / offset index codecs (the decoders require the bytes to be consumed exactly). */
export function encodeLayerList(w: Writer, layers: readonly number[]): Uint8Array {
  writeLayerList(w, layers);
  return w.flush();
}

export function decodeLayerList(bytes: Uint8Array): number[] {
  const r = new Reader(bytes, "LayerList");
  const out = readLayerList(r);
  r.done();
  return out;
}

export function encodeOffsetIndex(w: Writer, entries: readonly OffsetEntry[]): Uint8Array {
  writeOffsetIndex(w, entries);
  return w.flush();
}

export function decodeOffsetIndex(bytes: Uint8Array): OffsetEntry[] {
  const r = new Reader(bytes, "OffsetIndex");
  const out = readOffsetIndex(r);
  r.done();
  return out;
}

// ---- tensor metadata and the activation codec ---------------------------------------------------

export function tensorMetaBytes(nDims: number): number {
  return 1 + 4 * nDims + 4;
}

/** Bytes of n values in a wire type (Q8_0: n a multiple of 32). */
export function wireDataBytes(type: WireType, n: number): number {
  switch (type) {
    case GGMLType.F32:
      return 4 * n;
    case GGMLType.F16:
      return 2 * n;
    case GGMLType.Q8_0:
      if (n % Q8_0_BLOCK_VALUES !== 0) throw new RangeError(`Q8_0: ${n} values is not a multiple of the block size ${Q8_0_BLOCK_VALUES}`);
      return (n / Q8_0_BLOCK_VALUES) * Q8_0_BLOCK_BYTES;
  }
}

function checkShape(shape: readonly number[]): number {
  if (shape.length < 1 || shape.length > MAX_TENSOR_DIMS) throw new RangeError(`tensor: ${shape.length} dims, expected 1..${MAX_TENSOR_DIMS}`);
  let n = 1;
  for (const d of shape) {
    checkU32("tensor dim", d);
    if (d === 0) throw new RangeError(`tensor: shape [${shape.join(", ")}] has a zero dim`);
    n *= d;
  }
  return n;
}

export function writeTensorMeta(w: Writer, meta: TensorMeta): void {
  checkShape(meta.shape);
  if (!isWireType(meta.type)) throw new RangeError(`tensor: wire type ${meta.type} is not F32, F16 or Q8_0`);
  w.u8(meta.shape.length);
  for (const d of meta.shape) w.u32(d);
  w.u32(meta.type);
}

/** Tensor metadata, then exactly the data it describes (the rest of the payload). */
export function readTensor(r: Reader): WireTensor {
  const nDims = r.u8("tensor.n_dims");
  if (nDims < 1 || nDims > MAX_TENSOR_DIMS) r.fail("tensor.n_dims", `tensor n_dims ${nDims}, expected 1..${MAX_TENSOR_DIMS}`);
  const shape: number[] = [];
  let n = 1;
  for (let d = 0; d < nDims; d++) {
    const v = r.u32(`tensor.dims[${d}]`);
    if (v === 0) r.fail(`tensor.dims[${d}]`, `tensor dims[${d}] is 0`);
    shape.push(v);
    n *= v; // beyond 2^53 this is inexact, but then it is far above any payload and refused below
  }
  const type = r.u32("tensor.type");
  if (!isWireType(type)) r.fail("tensor.type", `tensor wire type ${type} is not 0 (F32), 1 (F16) or 8 (Q8_0)`);
  if (type === GGMLType.Q8_0 && shape[nDims - 1]! % Q8_0_BLOCK_VALUES !== 0) {
    r.fail("tensor.dims", `Q8_0 tensor [${shape.join(", ")}]: the last dim is not a multiple of ${Q8_0_BLOCK_VALUES}`);
  }
  const bytes = wireDataBytes(type, n);
  if (bytes !== r.remaining) {
    r.fail("tensor.data", `${wireTypeName(type)} tensor [${shape.join(", ")}] is ${bytes} bytes of data, the payload has ${r.remaining} after the metadata`);
  }
  return { shape, type, data: r.bytesView(bytes, "tensor.data") };
}

/** What an activation costs on the wire; frameBytes = header + metadata + data. */
export interface ActivationSizes {
  metaBytes: number;
  dataBytes: number;
  payloadBytes: number;
  frameBytes: number;
}

export function activationSizes(shape: readonly number[], type: WireType): ActivationSizes {
  const n = checkShape(shape);
  const metaBytes = tensorMetaBytes(shape.length);
  const dataBytes = wireDataBytes(type, n);
  return { metaBytes, dataBytes, payloadBytes: metaBytes + dataBytes, frameBytes: HEADER_SIZE + metaBytes + dataBytes };
}

export interface ActivationInfo extends ActivationSizes {
  /** the wire type used */
  type: WireType;
  requested: WireType;
  /** Q8_0 was asked for but the last dim is not a multiple of 32: sent as F16 */
  fellBack: boolean;
}

/** The wire type an activation of this shape travels as when `want` is asked for. */
export function effectiveWireType(shape: readonly number[], want: WireType): WireType {
  return want === GGMLType.Q8_0 && shape[shape.length - 1]! % Q8_0_BLOCK_VALUES !== 0 ? GGMLType.F16 : want;
}

const LITTLE_ENDIAN_HOST = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;
let f16Scratch = new Uint16Array(0);

/**
 * Writes tensor metadata + data for the first prod(shape) floats of x, converting in place into the
 * writer's buffer (Q8_0 is quantized straight into the frame; no intermediate copy).
 */
export function writeActivation(w: Writer, kernels: Kernels, x: Float32Array, shape: readonly number[], want: WireType): ActivationInfo {
  if (!LITTLE_ENDIAN_HOST) throw new Error("activation codec: big-endian hosts are not supported");
  const n = checkShape(shape);
  if (x.length < n) throw new RangeError(`activation: shape [${shape.join(", ")}] needs ${n} floats, got ${x.length}`);
  if (!isWireType(want)) throw new RangeError(`activation: wire type ${want} is not F32, F16 or Q8_0`);
  const type = effectiveWireType(shape, want);
  writeTensorMeta(w, { shape: [...shape], type });
  const dataBytes = wireDataBytes(type, n);
  switch (type) {
    case GGMLType.Q8_0:
      kernels.quantizeQ8_0(w.reserve(dataBytes), x, n);
      break;
    case GGMLType.F16: {
      const dst = w.reserve(dataBytes);
      if (dst.byteOffset % 2 === 0) {
        kernels.f32ToF16(new Uint16Array(dst.buffer, dst.byteOffset, n), x, n);
      } else {
        if (f16Scratch.length < n) f16Scratch = new Uint16Array(n);
        kernels.f32ToF16(f16Scratch, x, n);
        dst.set(new Uint8Array(f16Scratch.buffer, 0, dataBytes));
      }
      break;
    }
    case GGMLType.F32:
      w.bytes(new Uint8Array(x.buffer, x.byteOffset, dataBytes));
      break;
  }
  const metaBytes = tensorMetaBytes(shape.length);
  return {
    type,
    requested: want,
    fellBack: type !== want,
    metaBytes,
    dataBytes,
    payloadBytes: metaBytes + dataBytes,
    frameBytes: HEADER_SIZE + metaBytes + dataBytes,
  };
}

/** One whole activation frame (Partial, Result or Logits) from floats. */
export function writeActivationFrame(
  w: Writer,
  kernels: Kernels,
  type: MessageType.Partial | MessageType.Result | MessageType.Logits,
  head: { seq: number; layer?: number; flags?: number },
  x: Float32Array,
  shape: readonly number[],
  want: WireType,
): ActivationInfo {
  w.begin(type, head);
  try {
    const info = writeActivation(w, kernels, x, shape, want);
    w.end();
    return info;
  } catch (e) {
    w.abort();
    throw e;
  }
}

/**
 * What is wrong with a frame that should be the `type` (Partial or Result) of layer `layer`'s `ffn`
 * (else attention) half over n rows of dim, as "message type 8 for layer 3" or "a [1, 64] tensor,
 * expected [1, 2048]"; null when it is that frame.
 */
export function blockFrameProblem(
  r: { message: Message; layer: number; flags: number },
  type: MessageType.Partial | MessageType.Result,
  layer: number,
  ffn: boolean,
  n: number,
  dim: number,
): string | null {
  const m = r.message;
  if (m.type !== type || r.layer !== layer || ((r.flags & FLAG_FEED_FORWARD) !== 0) !== ffn) return `message type ${m.type} for layer ${r.layer}`;
  const shape = m.tensor.shape;
  if (shape.length !== 2 || shape[0] !== n || shape[1] !== dim) return `a [${shape.join(", ")}] tensor, expected [${n}, ${dim}]`;
  return null;
}

let roundTripScratch = new Uint8Array(0);

/**
 * Replaces x (of `shape`) by what a node receiving it in `want` decodes: a node adds its own partial
 * output in this form, so that it adds the same values as the nodes it sent it to. The bytes are the
 * ones writeActivation puts on the wire (same conversion kernel, same effective type).
 */
export function roundTripActivation(kernels: Kernels, x: Float32Array, shape: readonly number[], want: WireType): void {
  const n = checkShape(shape);
  if (x.length < n) throw new RangeError(`activation: shape [${shape.join(", ")}] needs ${n} floats, got ${x.length}`);
  const type = effectiveWireType(shape, want);
  if (type === GGMLType.F32) return;
  const bytes = wireDataBytes(type, n);
  if (roundTripScratch.byteLength < bytes) roundTripScratch = new Uint8Array(Math.ceil(bytes / 4) * 4);
  const buf = roundTripScratch.subarray(0, bytes);
  if (type === GGMLType.Q8_0) kernels.quantizeQ8_0(buf, x, n);
  else kernels.f32ToF16(new Uint16Array(buf.buffer, 0, n), x, n);
  kernels.dequantize(x, buf, type, n);
}

/** Floats back from a decoded tensor (into `out` when given). */
export function decodeActivation(kernels: Kernels, t: WireTensor, out?: Float32Array): Float32Array {
  let n = 1;
  for (const d of t.shape) n *= d;
  const dst = out ?? new Float32Array(n);
  if (dst.length < n) throw new RangeError(`activation: out has ${dst.length} floats, the tensor ${n}`);
  kernels.dequantize(dst, t.data, t.type, n);
  return dst;
}

// ---- message codecs -----------------------------------------------------------------------------

function truncateUtf8(s: string, maxBytes: number): string {
  const b = textEncoder.encode(s);
  if (b.length <= maxBytes) return s;
  let end = maxBytes - 3; // room for "…"
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--; // not inside a character
  return new TextDecoder().decode(b.subarray(0, end)) + "…";
}

function fixedBytes(what: string, b: Uint8Array, n: number): Uint8Array {
  if (b.length !== n) throw new RangeError(`${what} is ${b.length} bytes, expected ${n}`);
  return b;
}

function writePayload(w: Writer, m: Message): void {
  switch (m.type) {
    case MessageType.Hello:
    case MessageType.HelloAck:
      w.u16(m.version);
      w.u32(m.capabilities);
      w.string(m.name, MAX_NAME_BYTES, "node name");
      w.string(m.model.path, MAX_PATH_BYTES, "model path");
      w.u64(m.model.size);
      w.bytes(fixedBytes("model sample MD5", m.model.sampleMd5, MD5_BYTES));
      break;
    case MessageType.Challenge:
      w.bytes(fixedBytes("challenge nonce", m.nonce, NONCE_BYTES));
      w.u32(m.ranges.length);
      for (const r of m.ranges) w.u64(r.offset).u32(r.length);
      break;
    case MessageType.ChallengeResponse:
      w.bytes(fixedBytes("challenge digest", m.digest, MD5_BYTES));
      break;
    case MessageType.Plan:
      writeLayerList(w, m.layers);
      writeOffsetIndex(w, m.offsets);
      break;
    case MessageType.PlanAck:
      writeLayerList(w, m.layers);
      break;
    case MessageType.Partial:
    case MessageType.Result:
    case MessageType.Logits: {
      const t = m.tensor;
      writeTensorMeta(w, t);
      let n = 1;
      for (const d of t.shape) n *= d;
      if (t.type === GGMLType.Q8_0 && t.shape[t.shape.length - 1]! % Q8_0_BLOCK_VALUES !== 0) {
        throw new RangeError(`Q8_0 tensor [${t.shape.join(", ")}]: the last dim is not a multiple of 32`);
      }
      const bytes = wireDataBytes(t.type, n);
      if (t.data.length !== bytes) throw new RangeError(`${wireTypeName(t.type)} tensor [${t.shape.join(", ")}] needs ${bytes} bytes of data, got ${t.data.length}`);
      w.bytes(t.data);
      break;
    }
    case MessageType.Stats:
      w.u32(m.stats.length);
      for (const s of m.stats) w.u32(s.id).u64(s.value);
      break;
    case MessageType.Error:
      w.u32(m.code);
      w.string(truncateUtf8(m.message, MAX_ERROR_MESSAGE_BYTES), MAX_ERROR_MESSAGE_BYTES, "error message");
      break;
    case MessageType.Bye:
      break;
    case MessageType.Ping:
    case MessageType.Pong:
      w.u64(m.time);
      break;
    case MessageType.Step:
      if (m.tokens.length < 1 || m.logits > m.tokens.length) throw new RangeError(`Step: ${m.tokens.length} tokens, logits of ${m.logits}`);
      w.u32(m.pos).u32(m.logits).u32(m.tokens.length);
      for (const t of m.tokens) w.u32(t);
      break;
    case MessageType.Session:
      if (m.weights.length !== m.nodes) throw new RangeError(`Session: ${m.weights.length} weights for ${m.nodes} nodes`);
      w.u32(m.node).u32(m.nodes).u32(m.wire).u32(m.nCtx).u32(m.kvType).u32(m.flags);
      for (const x of m.weights) w.u32(x);
      break;
    case MessageType.Speed:
      w.u32(m.weightType).u32(m.mbPerSecond);
      break;
    case MessageType.Mesh:
      w.u32(m.mode);
      w.bytes(fixedBytes("mesh token", m.token, NONCE_BYTES));
      w.u32(m.addrs.length);
      for (const a of m.addrs) w.string(a, MAX_ADDRESS_BYTES, "worker address");
      break;
    case MessageType.PeerHello:
      w.u16(m.version).u32(m.node);
      w.bytes(fixedBytes("mesh token", m.token, NONCE_BYTES));
      break;
    case MessageType.MeshAck:
      w.string(truncateUtf8(m.problem, MAX_ERROR_MESSAGE_BYTES), MAX_ERROR_MESSAGE_BYTES, "mesh problem");
      break;
  }
}

/** Appends one frame for `m` to the writer (w.flush() then gives the bytes). */
export function writeMessage(w: Writer, m: Message, head: { seq: number; layer?: number; flags?: number }): void {
  w.begin(m.type, head);
  try {
    writePayload(w, m);
    w.end();
  } catch (e) {
    w.abort();
    throw e;
  }
}

/** The bytes of one frame (plus any frames already written to w and not flushed). */
export function encodeMessage(w: Writer, m: Message, head: { seq: number; layer?: number; flags?: number }): Uint8Array {
  writeMessage(w, m, head);
  return w.flush();
}

/** Decodes a frame's payload by its type. Tensor data stays a view into the payload. */
export function decodeMessage(frame: { type: MessageType; payload: Uint8Array }): Message {
  const type = frame.type;
  const r = new Reader(frame.payload, messageTypeName(type));
  let m: Message;
  switch (type) {
    case MessageType.Hello:
    case MessageType.HelloAck: {
      const version = r.u16("version");
      if (version !== PROTOCOL_VERSION) r.fail("version", `peer speaks protocol version ${version}, this node speaks ${PROTOCOL_VERSION}`);
      const capabilities = r.u32("capabilities");
      const name = r.string("name", MAX_NAME_BYTES);
      const path = r.string("model.path", MAX_PATH_BYTES);
      const size = r.u64("model.size");
      const sampleMd5 = r.bytesView(MD5_BYTES, "model.sampleMd5").slice();
      m = { type, version, capabilities, name, model: { path, size, sampleMd5 } };
      break;
    }
    case MessageType.Challenge: {
      const nonce = r.bytesView(NONCE_BYTES, "nonce").slice();
      const n = r.count("ranges", 12);
      const ranges: ByteRange[] = new Array(n);
      for (let i = 0; i < n; i++) ranges[i] = { offset: r.u64(`ranges[${i}].offset`), length: r.u32(`ranges[${i}].length`) };
      m = { type, nonce, ranges };
      break;
    }
    case MessageType.ChallengeResponse:
      m = { type, digest: r.bytesView(MD5_BYTES, "digest").slice() };
      break;
    case MessageType.Plan: {
      const layers = readLayerList(r);
      m = { type, layers, offsets: readOffsetIndex(r) };
      break;
    }
    case MessageType.PlanAck:
      m = { type, layers: readLayerList(r) };
      break;
    case MessageType.Partial:
    case MessageType.Result:
    case MessageType.Logits:
      m = { type, tensor: readTensor(r) };
      break;
    case MessageType.Stats: {
      const n = r.count("stats", 12);
      const stats: StatEntry[] = new Array(n);
      for (let i = 0; i < n; i++) stats[i] = { id: r.u32(`stats[${i}].id`), value: r.u64(`stats[${i}].value`) };
      m = { type, stats };
      break;
    }
    case MessageType.Error: {
      const code = r.u32("code");
      m = { type, code, message: r.string("message", MAX_ERROR_MESSAGE_BYTES) };
      break;
    }
    case MessageType.Bye:
      m = { type };
      break;
    case MessageType.Ping:
    case MessageType.Pong:
      m = { type, time: r.u64("time") };
      break;
    case MessageType.Step: {
      const pos = r.u32("pos"), logits = r.u32("logits"), n = r.count("tokens", 4);
      if (n < 1) throw new ProtocolError("Step.tokens", "Step: no tokens");
      if (logits > n) throw new ProtocolError("Step.logits", `Step: logits of ${logits} tokens, the step has ${n}`);
      const tokens = new Uint32Array(n);
      for (let i = 0; i < n; i++) tokens[i] = r.u32(`tokens[${i}]`);
      m = { type, pos, logits, tokens };
      break;
    }
    case MessageType.Session: {
      const node = r.u32("node"), nodes = r.u32("nodes"), wire = r.u32("wire");
      if (!isWireType(wire)) throw new ProtocolError("Session.wire", `Session: wire type ${wire} is not 0 (F32), 1 (F16) or 8 (Q8_0)`);
      if (nodes < 1 || node >= nodes) throw new ProtocolError("Session.node", `Session: node ${node} of ${nodes}`);
      const nCtx = r.u32("n_ctx"), kvType = r.u32("kv_type"), flags = r.u32("flags");
      const n = r.remaining / 4;
      if (n !== nodes) throw new ProtocolError("Session.weights", `Session: ${r.remaining} bytes of node weights, expected ${nodes} x 4 for ${nodes} nodes`);
      const weights: number[] = new Array(n);
      for (let i = 0; i < n; i++) {
        weights[i] = r.u32(`weights[${i}]`);
        if (weights[i]! < 1 || weights[i]! > MAX_SPLIT_WEIGHT) throw new ProtocolError("Session.weights", `Session: node ${i}'s weight ${weights[i]} is not in 1..${MAX_SPLIT_WEIGHT}`);
      }
      m = { type, node, nodes, wire, nCtx, kvType, flags, weights };
      break;
    }
    case MessageType.Speed:
      m = { type, weightType: r.u32("weight_type"), mbPerSecond: r.u32("mb_per_second") };
      break;
    case MessageType.Mesh: {
      const mode = r.u32("mode");
      if (mode > MeshMode.Drop) r.fail("mode", `mesh mode ${mode} is not 0 (connect), 1 (use) or 2 (drop)`);
      const token = r.bytesView(NONCE_BYTES, "token").slice();
      const n = r.count("addrs", 4);
      const addrs: string[] = new Array(n);
      for (let i = 0; i < n; i++) addrs[i] = r.string(`addrs[${i}]`, MAX_ADDRESS_BYTES);
      m = { type, mode: mode as MeshMode, token, addrs };
      break;
    }
    case MessageType.PeerHello: {
      const version = r.u16("version");
      if (version !== PROTOCOL_VERSION) r.fail("version", `peer speaks protocol version ${version}, this node speaks ${PROTOCOL_VERSION}`);
      m = { type, version, node: r.u32("node"), token: r.bytesView(NONCE_BYTES, "token").slice() };
      break;
    }
    case MessageType.MeshAck:
      m = { type, problem: r.string("problem", MAX_ERROR_MESSAGE_BYTES) };
      break;
    default:
      throw new ProtocolError("type", `type ${type as number} is not a message type (1..${MessageType.MeshAck})`);
  }
  r.done();
  return m;
}
