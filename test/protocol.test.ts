// The cluster wire protocol: golden bytes written by hand from the layout (not from the encoder),
// round trips, every split offset through the streaming Framer, named ProtocolErrors for bad peers,
// bounds checks against lying counts, the activation codec's real sizes and error, and a size
// comparison with JSON for the same control messages.
import { describe, expect, test } from "bun:test";
import { type Frame, Framer, Writer } from "../src/cluster/framer";
import {
  activationSizes,
  ALL_CAPABILITIES,
  Capability,
  DEFAULT_MAX_PAYLOAD,
  decodeActivation,
  decodeLayerList,
  decodeMessage,
  decodeOffsetIndex,
  encodeLayerList,
  encodeMessage,
  encodeOffsetIndex,
  ErrorCode,
  FLAG_LAST_OF_STEP,
  HEADER_SIZE,
  MAGIC,
  MAX_ERROR_MESSAGE_BYTES,
  type Message,
  MeshMode,
  MessageType,
  NO_LAYER,
  type OffsetEntry,
  pickWireType,
  PROTOCOL_VERSION,
  ProtocolError,
  SESSION_EXCHANGE,
  SESSION_LOGITS,
  SESSION_PROFILE,
  writeActivationFrame,
  writeMessage,
} from "../src/cluster/protocol";
import { GGMLType } from "../src/native/types";
import { createTsKernels } from "../src/native/ts-kernels";
import { mulberry32 } from "../src/model/sampler";
import { MAX_SPLIT_WEIGHT } from "../src/cluster/partition";

/** A u32 as little-endian hex bytes. */
const hex32 = (v: number) => Array.from(new Uint8Array(Uint32Array.of(v).buffer), (b) => b.toString(16).padStart(2, "0")).join(" ");

const kernels = createTsKernels();

/** Hex with whitespace and `# comments` ignored. */
function hex(s: string): Uint8Array {
  const h = s.replace(/#[^\n]*/g, "").replace(/\s+/g, "");
  if (h.length % 2 !== 0 || /[^0-9a-f]/i.test(h)) throw new Error(`bad hex: ${h}`);
  return Uint8Array.from(h.match(/../g) ?? [], (b) => parseInt(b, 16));
}

function toHex(b: Uint8Array): string {
  return Buffer.from(b).toString("hex");
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error("expected a throw");
}

function expectProtocolError(fn: () => unknown, field: string, message: string | RegExp): ProtocolError {
  const e = caught(fn);
  expect(e).toBeInstanceOf(ProtocolError);
  const pe = e as ProtocolError;
  expect(pe.field).toBe(field);
  if (typeof message === "string") expect(pe.message).toBe(message);
  else expect(pe.message).toMatch(message);
  return pe;
}

/** A header built field by field with a DataView (independent of the Writer). */
function rawHeader(f: { magic?: number; version?: number; type?: number; flags?: number; reserved?: number; seq?: number; length?: number; layer?: number }): Uint8Array {
  const b = new Uint8Array(24);
  const v = new DataView(b.buffer);
  v.setUint32(0, f.magic ?? 0x4d4c4c44, true);
  v.setUint16(4, f.version ?? PROTOCOL_VERSION, true);
  v.setUint16(6, f.type ?? 13, true);
  v.setUint16(8, f.flags ?? 0, true);
  v.setUint16(10, f.reserved ?? 0, true);
  v.setUint32(12, f.seq ?? 0, true);
  v.setUint32(16, f.length ?? 0, true);
  v.setUint32(20, f.layer ?? 0xffffffff, true);
  return b;
}

/** Decodes a payload as if it had arrived in a frame of this type. */
function decodePayload(type: MessageType, payload: Uint8Array): Message {
  return decodeMessage({ type, payload });
}


function standardNormal(n: number, seed: number): Float32Array {
  const rnd = mulberry32(seed);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = 1 - rnd();
    const v = rnd();
    const r = Math.sqrt(-2 * Math.log(u));
    x[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) x[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return x;
}

const MD5 = hex("00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f");

// ---- golden vectors -----------------------------------------------------------------------------

interface Golden {
  name: string;
  msg: Message;
  head: { seq: number; layer?: number; flags?: number };
  bytes: string;
}

// header: magic "DLLM" | version u16 | type u16 | flags u16 | reserved u16 | seq u32 | length u32 | layer u32
const GOLDEN: Golden[] = [
  {
    name: "Hello",
    msg: { type: MessageType.Hello, version: 4, capabilities: 7, name: "w1", model: { path: "m.gguf", size: 0x1_2345_6789, sampleMd5: MD5 } },
    head: { seq: 1 },
    bytes: `
      44 4c 4c 4d  04 00  01 00  00 00  00 00  01 00 00 00  2e 00 00 00  ff ff ff ff   # header, length 46
      04 00                                   # version 4
      07 00 00 00                             # capabilities q8_0 | f16 | f32
      02 00 00 00  77 31                      # name "w1"
      06 00 00 00  6d 2e 67 67 75 66          # path "m.gguf"
      89 67 45 23 01 00 00 00                 # size 0x123456789
      00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f   # sample MD5`,
  },
  {
    name: "HelloAck",
    msg: { type: MessageType.HelloAck, version: 4, capabilities: 5, name: "r", model: { path: "m.gguf", size: 0x1_2345_6789, sampleMd5: MD5 } },
    head: { seq: 2 },
    bytes: `
      44 4c 4c 4d  04 00  02 00  00 00  00 00  02 00 00 00  2d 00 00 00  ff ff ff ff   # length 45
      04 00  05 00 00 00                      # version 4, capabilities q8_0 | f32
      01 00 00 00  72                         # name "r"
      06 00 00 00  6d 2e 67 67 75 66
      89 67 45 23 01 00 00 00
      00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f`,
  },
  {
    name: "Challenge",
    msg: {
      type: MessageType.Challenge,
      nonce: hex("a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af"),
      ranges: [
        { offset: 0x1_0000_0000, length: 4096 },
        { offset: 16, length: 1 },
      ],
    },
    head: { seq: 3 },
    bytes: `
      44 4c 4c 4d  04 00  03 00  00 00  00 00  03 00 00 00  2c 00 00 00  ff ff ff ff   # length 44
      a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af   # nonce
      02 00 00 00                                       # 2 ranges
      00 00 00 00 01 00 00 00  00 10 00 00              # offset 2^32, length 4096
      10 00 00 00 00 00 00 00  01 00 00 00              # offset 16, length 1`,
  },
  {
    name: "ChallengeResponse",
    msg: { type: MessageType.ChallengeResponse, digest: hex("ff ee dd cc bb aa 99 88 77 66 55 44 33 22 11 00") },
    head: { seq: 3 },
    bytes: `
      44 4c 4c 4d  04 00  04 00  00 00  00 00  03 00 00 00  10 00 00 00  ff ff ff ff
      ff ee dd cc bb aa 99 88 77 66 55 44 33 22 11 00`,
  },
  {
    name: "Plan",
    msg: {
      type: MessageType.Plan,
      layers: [2, 3],
      offsets: [
        { tensor: 5, offset: 0x1000 },
        { tensor: 0x102, offset: 0x1_0000_0020 },
      ],
    },
    head: { seq: 4 },
    bytes: `
      44 4c 4c 4d  04 00  05 00  00 00  00 00  04 00 00 00  28 00 00 00  ff ff ff ff   # length 40
      02 00 00 00  02 00 00 00  03 00 00 00             # layers [2, 3]
      02 00 00 00                                       # 2 offset entries
      05 00 00 00  00 10 00 00 00 00 00 00              # tensor 5 at 0x1000
      02 01 00 00  20 00 00 00 01 00 00 00              # tensor 0x102 at 0x100000020`,
  },
  {
    name: "PlanAck",
    msg: { type: MessageType.PlanAck, layers: [2, 3] },
    head: { seq: 4 },
    bytes: `
      44 4c 4c 4d  04 00  06 00  00 00  00 00  04 00 00 00  0c 00 00 00  ff ff ff ff
      02 00 00 00  02 00 00 00  03 00 00 00`,
  },
  {
    name: "Partial (F32)",
    msg: { type: MessageType.Partial, tensor: { shape: [1, 2], type: GGMLType.F32, data: hex("00 00 80 3f  00 00 00 c0") } },
    head: { seq: 5, layer: 2 },
    bytes: `
      44 4c 4c 4d  04 00  07 00  00 00  00 00  05 00 00 00  15 00 00 00  02 00 00 00   # length 21, layer 2
      02  01 00 00 00  02 00 00 00  00 00 00 00         # 2 dims: 1 x 2, F32
      00 00 80 3f  00 00 00 c0                          # 1.0, -2.0`,
  },
  {
    name: "Result (F16, last of step)",
    msg: { type: MessageType.Result, tensor: { shape: [2], type: GGMLType.F16, data: hex("00 3c  00 c0") } },
    head: { seq: 5, layer: 3, flags: FLAG_LAST_OF_STEP },
    bytes: `
      44 4c 4c 4d  04 00  08 00  01 00  00 00  05 00 00 00  0d 00 00 00  03 00 00 00   # flags 1, length 13, layer 3
      01  02 00 00 00  01 00 00 00                      # 1 dim: 2, F16
      00 3c  00 c0                                      # 1.0, -2.0`,
  },
  {
    name: "Logits",
    msg: { type: MessageType.Logits, tensor: { shape: [3], type: GGMLType.F32, data: hex("00 00 00 00  00 00 00 3f  00 00 80 bf") } },
    head: { seq: 6 },
    bytes: `
      44 4c 4c 4d  04 00  09 00  00 00  00 00  06 00 00 00  15 00 00 00  ff ff ff ff   # length 21
      01  03 00 00 00  00 00 00 00
      00 00 00 00  00 00 00 3f  00 00 80 bf             # 0, 0.5, -1`,
  },
  {
    name: "Stats",
    msg: {
      type: MessageType.Stats,
      stats: [
        { id: 4 * 10, value: 0x59682f00 }, // Op 10 (ffn_down), field 0: ns
        { id: 0x10000, value: 0x1_0000_0005 }, // STAT_ELAPSED_NS
      ],
    },
    head: { seq: 7 },
    bytes: `
      44 4c 4c 4d  04 00  0a 00  00 00  00 00  07 00 00 00  1c 00 00 00  ff ff ff ff   # length 28
      02 00 00 00
      28 00 00 00  00 2f 68 59 00 00 00 00
      00 00 01 00  05 00 00 00 01 00 00 00`,
  },
  {
    name: "Error",
    msg: { type: MessageType.Error, code: ErrorCode.ModelMismatch, message: "bad md5" },
    head: { seq: 8 },
    bytes: `
      44 4c 4c 4d  04 00  0b 00  00 00  00 00  08 00 00 00  0f 00 00 00  ff ff ff ff   # length 15
      03 00 00 00                                       # code 3
      07 00 00 00  62 61 64 20 6d 64 35                 # "bad md5"`,
  },
  {
    name: "HelloAck (a worker that computes its share of the logits)",
    msg: { type: MessageType.HelloAck, version: 4, capabilities: 0x17, name: "r", model: { path: "m.gguf", size: 0x1_2345_6789, sampleMd5: MD5 } },
    head: { seq: 2 },
    bytes: `
      44 4c 4c 4d  04 00  02 00  00 00  00 00  02 00 00 00  2d 00 00 00  ff ff ff ff   # length 45
      04 00  17 00 00 00                      # version 4, capabilities q8_0 | f16 | f32 | logits (bit 4)
      01 00 00 00  72                         # name "r"
      06 00 00 00  6d 2e 67 67 75 66
      89 67 45 23 01 00 00 00
      00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f`,
  },
  {
    name: "Session (profile, logits, exchange)",
    msg: { type: MessageType.Session, node: 1, nodes: 2, wire: GGMLType.Q8_0, nCtx: 2048, kvType: GGMLType.F16, flags: 7, weights: [3, 1000] },
    head: { seq: 3 },
    bytes: `
      44 4c 4c 4d  04 00  10 00  00 00  00 00  03 00 00 00  20 00 00 00  ff ff ff ff   # type 16, length 32
      01 00 00 00  02 00 00 00                # node 1 of 2
      08 00 00 00                             # wire Q8_0
      00 08 00 00                             # n_ctx 2048
      01 00 00 00                             # KV cache F16
      07 00 00 00                             # flags: SESSION_PROFILE | SESSION_LOGITS | SESSION_EXCHANGE
      03 00 00 00  e8 03 00 00                # weights of the shares: root 3, worker 1000`,
  },
  {
    name: "Speed (a worker's answer)",
    msg: { type: MessageType.Speed, weightType: GGMLType.Q4_0, mbPerSecond: 12345 },
    head: { seq: 4 },
    bytes: `
      44 4c 4c 4d  04 00  11 00  00 00  00 00  04 00 00 00  08 00 00 00  ff ff ff ff   # type 17, length 8
      02 00 00 00                             # weight type Q4_0
      39 30 00 00                             # 12345 MB/s`,
  },
  {
    name: "Step (3 tokens, logits of the last)",
    msg: { type: MessageType.Step, pos: 7, logits: 1, tokens: Uint32Array.of(1, 0x1234, 31999) },
    head: { seq: 10 },
    bytes: `
      44 4c 4c 4d  04 00  0f 00  00 00  00 00  0a 00 00 00  18 00 00 00  ff ff ff ff   # type 15, length 24
      07 00 00 00                             # first position 7
      01 00 00 00                             # logits of the last token
      03 00 00 00                             # 3 tokens:
      01 00 00 00  34 12 00 00  ff 7c 00 00    # 1, 0x1234, 31999`,
  },
  {
    name: "Mesh (connect: the workers' addresses)",
    msg: { type: MessageType.Mesh, mode: MeshMode.Connect, token: hex("a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af"), addrs: ["h1:9998", "10.0.0.2:1"] },
    head: { seq: 5 },
    bytes: `
      44 4c 4c 4d  04 00  12 00  00 00  00 00  05 00 00 00  31 00 00 00  ff ff ff ff   # type 18, length 49
      00 00 00 00                                       # mode 0: connect
      a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af   # session token
      02 00 00 00                                       # 2 addresses:
      07 00 00 00  68 31 3a 39 39 39 38                 # "h1:9998" (node 1)
      0a 00 00 00  31 30 2e 30 2e 30 2e 32 3a 31        # "10.0.0.2:1" (node 2)`,
  },
  {
    name: "PeerHello",
    msg: { type: MessageType.PeerHello, version: 4, node: 2, token: hex("a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af") },
    head: { seq: 0 },
    bytes: `
      44 4c 4c 4d  04 00  13 00  00 00  00 00  00 00 00 00  16 00 00 00  ff ff ff ff   # type 19, length 22
      04 00  02 00 00 00                                # version 4, from node 2
      a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af   # session token`,
  },
  {
    name: "MeshAck",
    msg: { type: MessageType.MeshAck, problem: "no" },
    head: { seq: 1 },
    bytes: `
      44 4c 4c 4d  04 00  14 00  00 00  00 00  01 00 00 00  06 00 00 00  ff ff ff ff   # type 20, length 6
      02 00 00 00  6e 6f                                # problem "no" (empty: every link up)`,
  },
  {
    name: "Bye",
    msg: { type: MessageType.Bye },
    head: { seq: 9 },
    bytes: `44 4c 4c 4d  04 00  0c 00  00 00  00 00  09 00 00 00  00 00 00 00  ff ff ff ff`,
  },
  {
    name: "Ping",
    msg: { type: MessageType.Ping, time: 0x0001_0203_0405_0607 },
    head: { seq: 0xdeadbeef },
    bytes: `
      44 4c 4c 4d  04 00  0d 00  00 00  00 00  ef be ad de  08 00 00 00  ff ff ff ff
      07 06 05 04 03 02 01 00`,
  },
  {
    name: "Pong",
    msg: { type: MessageType.Pong, time: 0x0001_0203_0405_0607 },
    head: { seq: 0xdeadbeef },
    bytes: `
      44 4c 4c 4d  04 00  0e 00  00 00  00 00  ef be ad de  08 00 00 00  ff ff ff ff
      07 06 05 04 03 02 01 00`,
  },
];

describe("golden bytes", () => {
  test("header constants", () => {
    expect(HEADER_SIZE).toBe(4 + 2 + 2 + 2 + 2 + 4 + 4 + 4);
    expect(Array.from(new Uint8Array(Uint32Array.of(MAGIC).buffer))).toEqual([..."DLLM"].map((c) => c.charCodeAt(0)));
    expect(PROTOCOL_VERSION).toBe(4);
    expect(NO_LAYER).toBe(0xffffffff);
    expect(DEFAULT_MAX_PAYLOAD).toBe(64 * 1024 * 1024);
  });

  test("capability and session flag values", () => {
    expect([Capability.Q8_0, Capability.F16, Capability.F32, Capability.FullMd5, Capability.Logits]).toEqual([1, 2, 4, 8, 16]);
    expect(ALL_CAPABILITIES & Capability.Logits).toBe(0); // negotiated by a worker, not implied
    expect([SESSION_PROFILE, SESSION_LOGITS, SESSION_EXCHANGE]).toEqual([1, 2, 4]);
  });

  test("every message type has a golden vector", () => {
    const types = new Set(GOLDEN.map((g) => g.msg.type));
    for (let t = MessageType.Hello; t <= MessageType.MeshAck; t++) expect(types.has(t)).toBe(true);
  });

  const w = new Writer({ initialSize: 16 }); // one writer for all, growing from 16 bytes
  for (const g of GOLDEN) {
    test(g.name, () => {
      const want = hex(g.bytes);
      expect(toHex(encodeMessage(w, g.msg, g.head))).toBe(toHex(want));
      const frames = new Framer().push(want);
      expect(frames.length).toBe(1);
      const f = frames[0]!;
      expect(f.seq).toBe(g.head.seq);
      expect(f.layer).toBe(g.head.layer ?? NO_LAYER);
      expect(f.flags).toBe(g.head.flags ?? 0);
      expect(decodeMessage(f)).toEqual(g.msg);
    });
  }

  test("Partial Q8_0 from floats: round half to even, fp16 scale", () => {
    // amax 127 -> d = 1.0 (fp16 3c00), id = 1: q = rint(x); 0.5 -> 0, 1.5 -> 2, -2.5 -> -2
    const x = new Float32Array(32);
    x.set([127, -127, 0.5, 1.5, -2.5, 3]);
    const want = hex(`
      44 4c 4c 4d  04 00  07 00  00 00  00 00  0a 00 00 00  2f 00 00 00  04 00 00 00   # length 47, layer 4
      02  01 00 00 00  20 00 00 00  08 00 00 00         # 1 x 32, Q8_0
      00 3c                                             # d = 1.0
      7f 81 00 02 fe 03 00 00  00 00 00 00 00 00 00 00  # 127 -127 0 2 -2 3 0...
      00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00`);
    const info = writeActivationFrame(w, kernels, MessageType.Partial, { seq: 10, layer: 4 }, x, [1, 32], GGMLType.Q8_0);
    expect(toHex(w.flush())).toBe(toHex(want));
    expect(info).toEqual({ type: GGMLType.Q8_0, requested: GGMLType.Q8_0, fellBack: false, metaBytes: 13, dataBytes: 34, payloadBytes: 47, frameBytes: 71 });
  });

  test("Q8_0 with cols not a multiple of 32 falls back to F16 and says so", () => {
    const want = hex(`
      44 4c 4c 4d  04 00  07 00  00 00  00 00  0b 00 00 00  13 00 00 00  00 00 00 00   # length 19, layer 0
      02  01 00 00 00  03 00 00 00  01 00 00 00         # 1 x 3, F16
      00 3c  00 c0  00 38                               # 1, -2, 0.5`);
    const info = writeActivationFrame(w, kernels, MessageType.Partial, { seq: 11, layer: 0 }, Float32Array.of(1, -2, 0.5), [1, 3], GGMLType.Q8_0);
    expect(toHex(w.flush())).toBe(toHex(want));
    expect(info.type).toBe(GGMLType.F16);
    expect(info.requested).toBe(GGMLType.Q8_0);
    expect(info.fellBack).toBe(true);
  });

  test("layer list and offset index on their own", () => {
    expect(toHex(encodeLayerList(w, [0, 0x01020304]))).toBe(toHex(hex("02 00 00 00  00 00 00 00  04 03 02 01")));
    expect(toHex(encodeOffsetIndex(w, [{ tensor: 7, offset: 0x0102_0304_0506 }]))).toBe(toHex(hex("01 00 00 00  07 00 00 00  06 05 04 03 02 01 00 00")));
    expect(decodeLayerList(hex("00 00 00 00"))).toEqual([]);
    expect(decodeOffsetIndex(hex("01 00 00 00  07 00 00 00  06 05 04 03 02 01 00 00"))).toEqual([{ tensor: 7, offset: 0x0102_0304_0506 }]);
  });
});

// ---- round trips and the Writer -----------------------------------------------------------------

describe("round trips", () => {
  test("Writer.flushView: the same bytes as flush, in the reused buffer (valid until the next write)", () => {
    const a = new Writer(), b = new Writer();
    const head = { seq: 3, layer: 1 };
    writeMessage(a, { type: MessageType.Ping, time: 12345 }, head);
    writeMessage(b, { type: MessageType.Ping, time: 12345 }, head);
    const view = a.flushView();
    expect(toHex(view)).toBe(toHex(b.flush()));
    expect(a.length).toBe(0);
    writeMessage(a, { type: MessageType.Pong, time: 777 }, { seq: 4 });
    expect(toHex(a.flushView())).toBe(toHex(encodeMessage(b, { type: MessageType.Pong, time: 777 }, { seq: 4 })));
    expect(view[6]).toBe(MessageType.Pong); // the first view now shows the second frame: the buffer is reused
    a.begin(MessageType.Bye, { seq: 5 });
    expect(() => a.flushView()).toThrow(/while a frame is open/);
  });

  test("random control messages survive encode -> Framer -> decode", () => {
    const rnd = mulberry32(99);
    const int = (n: number) => Math.floor(rnd() * n);
    const u64 = () => int(2 ** 21) * 2 ** 32 + int(2 ** 32);
    const w = new Writer();
    const sent: Message[] = [];
    for (let i = 0; i < 300; i++) {
      const pick = int(7);
      let m: Message;
      if (pick === 0) {
        m = {
          type: MessageType.Hello,
          version: 4,
          capabilities: int(8),
          name: `wörker-${int(1000)}-☃`,
          model: { path: "/models/" + "x".repeat(int(200)) + ".gguf", size: u64(), sampleMd5: Uint8Array.from({ length: 16 }, () => int(256)) },
        };
      } else if (pick === 1) {
        m = { type: MessageType.Plan, layers: Array.from({ length: int(40) }, () => int(200)), offsets: Array.from({ length: int(60) }, () => ({ tensor: int(2 ** 32), offset: u64() })) };
      } else if (pick === 2) {
        m = { type: MessageType.Stats, stats: Array.from({ length: int(8) }, () => ({ id: int(7), value: u64() })) };
      } else if (pick === 3) {
        m = { type: MessageType.Error, code: int(8), message: "é".repeat(int(100)) };
      } else if (pick === 4) {
        m = { type: MessageType.Challenge, nonce: Uint8Array.from({ length: 16 }, () => int(256)), ranges: Array.from({ length: int(5) }, () => ({ offset: u64(), length: int(2 ** 32) })) };
      } else if (pick === 5) {
        m = { type: MessageType.Mesh, mode: int(3) as MeshMode, token: Uint8Array.from({ length: 16 }, () => int(256)), addrs: Array.from({ length: int(5) }, () => `ñode-${int(1000)}:${int(65536)}`) };
      } else {
        m = { type: MessageType.Ping, time: u64() };
      }
      sent.push(m);
      writeMessage(w, m, { seq: i, layer: int(2) ? NO_LAYER : int(80), flags: int(2) });
    }
    const frames = new Framer().push(w.flush());
    expect(frames.length).toBe(sent.length);
    frames.forEach((f, i) => {
      expect(f.seq).toBe(i);
      expect(decodeMessage(f)).toEqual(sent[i]!);
    });
  });

  test("activations: F32 exact, F16 as f16 rounding, Q8_0 close", () => {
    const x = standardNormal(4 * 64, 5);
    const w = new Writer();
    for (const type of [GGMLType.F32, GGMLType.F16, GGMLType.Q8_0] as const) {
      writeActivationFrame(w, kernels, MessageType.Result, { seq: 1, layer: 7 }, x, [4, 64], type);
      const [f] = new Framer().push(w.flush());
      const m = decodeMessage(f!);
      if (m.type !== MessageType.Result) throw new Error("not a Result");
      expect(m.tensor.shape).toEqual([4, 64]);
      expect(m.tensor.type).toBe(type);
      const y = decodeActivation(kernels, m.tensor);
      if (type === GGMLType.F32) expect(y).toEqual(x);
      if (type === GGMLType.F16) {
        const h = new Uint16Array(x.length);
        kernels.f32ToF16(h, x, x.length);
        const ref = new Float32Array(x.length);
        kernels.f16ToF32(ref, h, x.length);
        expect(y).toEqual(ref);
      }
      for (let i = 0; i < x.length; i++) expect(Math.abs(y[i]! - x[i]!)).toBeLessThan(0.05);
    }
  });

  test("Writer: reused across frames, grows, abort drops only the failed frame, refuses oversized payloads", () => {
    const w = new Writer({ initialSize: 8, maxPayload: 100 });
    writeMessage(w, { type: MessageType.Bye }, { seq: 1 });
    expect(() => writeMessage(w, { type: MessageType.Hello, version: 1, capabilities: 7, name: "n".repeat(5000), model: { path: "p", size: 1, sampleMd5: MD5 } }, { seq: 2 })).toThrow(
      "node name is 5000 bytes of UTF-8, above the maximum of 4096",
    );
    expect(() => writeMessage(w, { type: MessageType.PlanAck, layers: Array.from({ length: 30 }, (_, i) => i) }, { seq: 3 })).toThrow(
      "Writer: PlanAck payload of 124 bytes is above the limit of 100",
    );
    writeMessage(w, { type: MessageType.Ping, time: 5 }, { seq: 4 });
    const frames = new Framer().push(w.flush());
    expect(frames.map((f) => [f.type, f.seq])).toEqual([
      [MessageType.Bye, 1],
      [MessageType.Ping, 4],
    ]);
    expect(w.length).toBe(0);
    expect(() => w.begin(MessageType.Ping, { seq: 1, flags: 8 })).toThrow("reserved bits");
    expect(() => w.begin(0 as MessageType, { seq: 1 })).toThrow("not a message type");
  });

  test("Error messages above 4096 bytes are truncated at a character boundary, not refused", () => {
    const w = new Writer();
    const long = "€".repeat(3000); // 9000 bytes
    const [f] = new Framer().push(encodeMessage(w, { type: MessageType.Error, code: ErrorCode.Internal, message: long }, { seq: 1 }));
    const m = decodeMessage(f!);
    if (m.type !== MessageType.Error) throw new Error("not an Error");
    expect(new TextEncoder().encode(m.message).length).toBeLessThanOrEqual(MAX_ERROR_MESSAGE_BYTES);
    expect(m.message.endsWith("€…")).toBe(true);
  });

  test("capabilities pick the most compact common wire type", () => {
    expect(pickWireType(ALL_CAPABILITIES)).toBe(GGMLType.Q8_0);
    expect(pickWireType(ALL_CAPABILITIES & (Capability.F16 | Capability.F32))).toBe(GGMLType.F16);
    expect(pickWireType(Capability.F32)).toBe(GGMLType.F32);
    expect(pickWireType(0)).toBeNull();
  });
});

// ---- streaming: every split offset --------------------------------------------------------------

describe("Framer streaming", () => {
  // Every golden frame, plus bigger activation frames, in one stream.
  const w = new Writer();
  for (const g of GOLDEN) writeMessage(w, g.msg, g.head);
  writeActivationFrame(w, kernels, MessageType.Partial, { seq: 20, layer: 1 }, standardNormal(3 * 64, 1), [3, 64], GGMLType.Q8_0);
  writeActivationFrame(w, kernels, MessageType.Result, { seq: 20, layer: 2, flags: FLAG_LAST_OF_STEP }, standardNormal(50, 2), [2, 25], GGMLType.Q8_0);
  writeActivationFrame(w, kernels, MessageType.Logits, { seq: 21 }, standardNormal(100, 3), [100], GGMLType.F32);
  writeMessage(w, { type: MessageType.Bye }, { seq: 22 }); // empty payload last
  const stream = w.flush();
  const reference = new Framer().push(stream);

  test("the reference parse has every frame", () => {
    expect(reference.length).toBe(GOLDEN.length + 4);
    expect(reference.map((f) => f.type)).toContain(MessageType.Logits);
  });

  test("split at every byte offset gives the same frames", () => {
    for (let k = 0; k <= stream.length; k++) {
      const f = new Framer();
      const got = [...f.push(stream.subarray(0, k)), ...f.push(stream.subarray(k))];
      expect(got).toEqual(reference);
      expect(f.pending).toBe(0);
      f.end();
    }
  });

  test("fed one byte at a time: a frame is emitted exactly when its last byte arrives", () => {
    const f = new Framer();
    const got: Frame[] = [];
    let frameEnd = 0;
    const ends = reference.map((r) => (frameEnd += HEADER_SIZE + r.payload.length));
    for (let i = 0; i < stream.length; i++) {
      const out = f.push(stream.subarray(i, i + 1));
      if (ends.includes(i + 1)) expect(out.length).toBe(1);
      else expect(out.length).toBe(0);
      got.push(...out);
    }
    expect(got).toEqual(reference);
  });

  test("random chunkings, and chunks whose buffers are overwritten after push", () => {
    const rnd = mulberry32(7);
    for (let trial = 0; trial < 200; trial++) {
      const f = new Framer();
      const got: Frame[] = [];
      const scratch = new Uint8Array(64); // one reused socket buffer
      for (let i = 0; i < stream.length; ) {
        const n = Math.min(1 + Math.floor(rnd() * 64), stream.length - i);
        scratch.set(stream.subarray(i, i + n));
        got.push(...f.push(scratch.subarray(0, n)));
        scratch.fill(0xaa);
        i += n;
      }
      expect(got).toEqual(reference);
    }
  });

  test("the whole stream in one chunk and empty chunks", () => {
    const f = new Framer();
    expect(f.push(new Uint8Array(0))).toEqual([]);
    expect(f.push(stream)).toEqual(reference);
    expect(f.push(new Uint8Array(0))).toEqual([]);
    expect(f.frames).toBe(reference.length);
  });

  test("recycled payloads: reused for the next frame of their exact length only, split anywhere", () => {
    const frame = (seq: number, seed: number, cols: number) => {
      const w = new Writer();
      writeActivationFrame(w, kernels, MessageType.Partial, { seq, layer: 3 }, standardNormal(cols, seed), [1, cols], GGMLType.Q8_0);
      return w.flush();
    };
    const a1 = frame(1, 11, 64), a2 = frame(2, 12, 64), b = frame(3, 13, 96);
    const f = new Framer();
    const [first] = f.push(a1);
    const firstBytes = first!.payload.slice();
    expect(new Framer().push(a1)[0]).toEqual(first!);
    f.recycle(first!.payload);
    // a frame of another length does not take it, and leaves it for later
    const [other] = f.push(b);
    expect(other!.payload).not.toBe(first!.payload);
    expect(other!.payload).toEqual(new Framer().push(b)[0]!.payload);
    // the next frame of the same length is read into it, across a split inside its payload
    const mid = HEADER_SIZE + 40;
    expect(f.push(a2.subarray(0, mid))).toEqual([]);
    const [second] = f.push(a2.subarray(mid));
    expect(second!.payload).toBe(first!.payload);
    expect(second!).toEqual(new Framer().push(a2)[0]!);
    expect(second!.payload).not.toEqual(firstBytes);
    // not recycled: a fresh array, the recycled one untouched
    const [third] = f.push(a1);
    expect(third!.payload).not.toBe(second!.payload);
    expect(third!.payload).toEqual(firstBytes);
    // handing back the same array twice, or an empty payload, keeps one copy: two frames get two arrays
    f.recycle(third!.payload);
    f.recycle(third!.payload);
    f.recycle(new Uint8Array(0));
    const [x, y] = f.push(new Uint8Array([...a1, ...a2]));
    expect(x!.payload).toBe(third!.payload);
    expect(y!.payload).not.toBe(third!.payload);
    expect(x!.payload).toEqual(firstBytes);
    expect(y!).toEqual(new Framer().push(a2)[0]!);
  });

  test("recycled payloads: at most a few kept, the oldest dropped first", () => {
    const w = new Writer();
    for (let i = 0; i < 8; i++) writeActivationFrame(w, kernels, MessageType.Partial, { seq: i }, standardNormal(32, i), [1, 32], GGMLType.Q8_0);
    const bytes = w.flush();
    const f = new Framer();
    const frames = f.push(bytes);
    for (const fr of frames) f.recycle(fr.payload);
    const again = f.push(bytes);
    const reused = again.filter((fr) => frames.some((o) => o.payload === fr.payload));
    expect(reused.length).toBe(4);
    // the four handed back last are the ones kept
    for (const fr of reused) expect(frames.indexOf(frames.find((o) => o.payload === fr.payload)!)).toBeGreaterThanOrEqual(4);
    expect(again.map((fr) => fr.seq)).toEqual(frames.map((fr) => fr.seq));
  });
});

// ---- bad peers ----------------------------------------------------------------------------------

describe("ProtocolError on bad frames", () => {
  const ping = hex(GOLDEN.find((g) => g.name === "Ping")!.bytes);

  test("wrong magic, refused after 4 bytes, naming the value", () => {
    expectProtocolError(() => new Framer().push(new TextEncoder().encode("GET / HTTP/1.1\r\n")), "magic", 'magic is 0x20544547 ("GET "), expected 0x4d4c4c44 ("DLLM"): not a dairllm peer');
    expectProtocolError(() => new Framer().push(rawHeader({ magic: 0x4d4c4c45 })), "magic", /magic is 0x4d4c4c45/);
    // the first wrong byte is enough
    expectProtocolError(() => new Framer().push(hex("16 03")), "magic", /magic is bytes "\\x16\\x03"/);
  });

  test("garbage: random bytes never produce a frame", () => {
    const rnd = mulberry32(3);
    for (let t = 0; t < 100; t++) {
      const junk = Uint8Array.from({ length: 100 }, () => Math.floor(rnd() * 256));
      if (junk[0] === 0x44) junk[0] = 0;
      expectProtocolError(() => new Framer().push(junk), "magic", /not a dairllm peer/);
    }
  });

  test("wrong version, refused by name as soon as the version bytes arrive", () => {
    // versions 1 (before the residual stream lived on every node), 2 (before weighted shares) and 3
    // (before links between workers) are refused like any other
    expectProtocolError(() => new Framer().push(rawHeader({ version: 1 }).subarray(0, 6)), "version", "peer speaks protocol version 1, this node speaks 4");
    expectProtocolError(() => new Framer().push(rawHeader({ version: 2 }).subarray(0, 6)), "version", "peer speaks protocol version 2, this node speaks 4");
    expectProtocolError(() => new Framer().push(rawHeader({ version: 3 }).subarray(0, 6)), "version", "peer speaks protocol version 3, this node speaks 4");
    expectProtocolError(() => new Framer().push(rawHeader({ version: 5 }).subarray(0, 6)), "version", "peer speaks protocol version 5, this node speaks 4");
    expectProtocolError(() => new Framer().push(rawHeader({ version: 0 })), "version", "peer speaks protocol version 0, this node speaks 4");
    // and in a Hello payload
    const hello = hex(GOLDEN[0]!.bytes).subarray(24).slice();
    hello[0] = 1;
    expectProtocolError(() => decodePayload(MessageType.Hello, hello), "Hello.version", "Hello: peer speaks protocol version 1, this node speaks 4");
  });

  test("nonzero reserved, reserved flag bits, unknown type", () => {
    expectProtocolError(() => new Framer().push(rawHeader({ reserved: 1 })), "reserved", "reserved is 0x0001, must be 0");
    expectProtocolError(() => new Framer().push(rawHeader({ flags: 0x8001 })), "flags", "flags 0x8001 has reserved bits set (only 0x7 are defined)");
    expectProtocolError(() => new Framer().push(rawHeader({ type: 0 })), "type", "type 0 is not a message type (1..20)");
    expectProtocolError(() => new Framer().push(rawHeader({ type: 21 })), "type", "type 21 is not a message type (1..20)");
  });

  test("oversized payload refused from the header alone, before buffering", () => {
    const f = new Framer();
    expectProtocolError(() => f.push(rawHeader({ type: MessageType.Partial, length: DEFAULT_MAX_PAYLOAD + 1 })), "length", "Partial payload length 67108865 is above the limit of 67108864 bytes");
    expectProtocolError(() => new Framer().push(rawHeader({ length: 0xffffffff })), "length", /length 4294967295 is above the limit/);
    const small = new Framer({ maxPayload: 100 });
    expectProtocolError(() => small.push(rawHeader({ length: 101 })), "length", "Ping payload length 101 is above the limit of 100 bytes");
    const ok = new Framer({ maxPayload: 100 });
    expect(ok.push(rawHeader({ length: 100 }))).toEqual([]);
    expect(ok.pending).toBe(24);
  });

  test("truncated: the connection closes inside a frame", () => {
    const f1 = new Framer();
    f1.push(ping.subarray(0, 10));
    expectProtocolError(() => f1.end(), "header", "connection closed inside a frame header: 10 of 24 bytes received");
    const f2 = new Framer();
    f2.push(ping.subarray(0, 28));
    expectProtocolError(() => f2.end(), "length", "connection closed inside a Ping frame: 4 of 8 payload bytes received");
    const f3 = new Framer();
    f3.push(ping);
    f3.end(); // between frames: fine
  });

  test("truncated and padded payloads inside a whole frame", () => {
    const hello = hex(GOLDEN[0]!.bytes).subarray(24);
    for (let k = 0; k < hello.length; k++) {
      const e = caught(() => decodePayload(MessageType.Hello, hello.subarray(0, k)));
      expect(e).toBeInstanceOf(ProtocolError);
      expect((e as ProtocolError).message).toMatch(/^Hello: .*(truncated payload|needs)/);
    }
    expectProtocolError(() => decodePayload(MessageType.Ping, hex("01 02 03 04 05 06 07")), "Ping.time", "Ping: time needs 8 bytes at offset 0, only 7 of 7 remain (truncated payload)");
    expectProtocolError(() => decodePayload(MessageType.Bye, hex("00")), "Bye.length", "Bye: 1 trailing bytes after the last field (payload is 1 bytes)");
    expectProtocolError(() => decodePayload(MessageType.Ping, hex("00 00 00 00 00 00 20 00")), "Ping.time", /above 2\^53/);
  });

  test("a failed framer stays failed", () => {
    const f = new Framer();
    expect(() => f.push(rawHeader({ reserved: 9 }))).toThrow(ProtocolError);
    expectProtocolError(() => f.push(ping), "reserved", "reserved is 0x0009, must be 0");
  });

  test("strings: over the maximum, invalid UTF-8", () => {
    expectProtocolError(
      () => decodePayload(MessageType.Error, hex("01 00 00 00  01 10 00 00")),
      "Error.message.length",
      "Error: message length 4097 is above the maximum of 4096 bytes",
    );
    expectProtocolError(() => decodePayload(MessageType.Error, hex("01 00 00 00  02 00 00 00  c3 28")), "Error.message", "Error: message is not valid UTF-8");
    expectProtocolError(() => decodePayload(MessageType.Error, hex("01 00 00 00  05 00 00 00  61")), "Error.message", /message needs 5 bytes at offset 8, only 1 of 9 remain/);
  });
});

describe("bounds checks against lying counts", () => {
  test("layer list", () => {
    expectProtocolError(() => decodeLayerList(hex("ff ff ff ff  01 00 00 00  02 00 00 00")), "LayerList.layers.count", "LayerList: layers count 4294967295 needs 17179869180 bytes, only 8 remain");
    expectProtocolError(() => decodeLayerList(hex("03 00 00 00  01 00 00 00  02 00 00 00")), "LayerList.layers.count", "LayerList: layers count 3 needs 12 bytes, only 8 remain");
    expectProtocolError(() => decodeLayerList(hex("01 00 00 00  01 00 00 00  02 00 00 00")), "LayerList.length", /4 trailing bytes/);
    expectProtocolError(() => decodeLayerList(hex("01 00 00 00  ff ff ff ff")), "LayerList.layers[0]", /NO_LAYER/);
    expectProtocolError(() => decodeLayerList(hex("00 00")), "LayerList.layers.count", /needs 4 bytes at offset 0, only 2/);
  });

  test("offset index", () => {
    const one = "07 00 00 00  00 10 00 00 00 00 00 00";
    expectProtocolError(() => decodeOffsetIndex(hex(`00 00 00 80  ${one}`)), "OffsetIndex.offsets.count", "OffsetIndex: offsets count 2147483648 needs 25769803776 bytes, only 12 remain");
    expectProtocolError(() => decodeOffsetIndex(hex(`02 00 00 00  ${one}`)), "OffsetIndex.offsets.count", "OffsetIndex: offsets count 2 needs 24 bytes, only 12 remain");
    expectProtocolError(() => decodeOffsetIndex(hex(`01 00 00 00  ${one} 00`)), "OffsetIndex.length", /1 trailing bytes/);
    expectProtocolError(() => decodeOffsetIndex(hex("01 00 00 00  07 00 00 00  00 00 00 00 00 00 40 00")), "OffsetIndex.offsets[0].offset", /above 2\^53/);
  });

  test("Plan, Stats and Challenge with lying counts", () => {
    // Plan: honest layer list, offset index claiming 1000 entries with 1 present
    expectProtocolError(
      () => decodePayload(MessageType.Plan, hex("01 00 00 00  05 00 00 00  e8 03 00 00  07 00 00 00  00 10 00 00 00 00 00 00")),
      "Plan.offsets.count",
      "Plan: offsets count 1000 needs 12000 bytes, only 12 remain",
    );
    // Plan: a layer count that swallows the offset index's count leaves none for it
    expectProtocolError(() => decodePayload(MessageType.Plan, hex("02 00 00 00  05 00 00 00  00 00 00 00")), "Plan.offsets.count", "Plan: offsets.count needs 4 bytes at offset 12, only 0 of 12 remain (truncated payload)");
    expectProtocolError(() => decodePayload(MessageType.Plan, hex("03 00 00 00  05 00 00 00  00 00 00 00")), "Plan.layers.count", "Plan: layers count 3 needs 12 bytes, only 8 remain");
    expectProtocolError(() => decodePayload(MessageType.Stats, hex("02 00 00 00  01 00 00 00  00 00 00 00 00 00 00 00")), "Stats.stats.count", "Stats: stats count 2 needs 24 bytes, only 12 remain");
    const S = MessageType.Step;
    expectProtocolError(() => decodePayload(S, hex("00 00 00 00  00 00 00 00  00 00 00 00")), "Step.tokens", "Step: no tokens");
    expectProtocolError(() => decodePayload(S, hex("00 00 00 00  02 00 00 00  01 00 00 00  05 00 00 00")), "Step.logits", "Step: logits of 2 tokens, the step has 1");
    expectProtocolError(() => decodePayload(S, hex("00 00 00 00  01 00 00 00  ff ff ff ff  05 00 00 00")), "Step.tokens.count", /tokens count 4294967295 needs 17179869180 bytes, only 4 remain/);
    expectProtocolError(() => decodePayload(S, hex("00 00 00 00  01 00 00 00  01 00 00 00  05 00 00 00  06")), "Step.length", /1 trailing bytes/);
    expect(() => writeMessage(new Writer(), { type: S, pos: 0, logits: 2, tokens: Uint32Array.of(1) }, { seq: 1 })).toThrow("Step: 1 tokens, logits of 2");
    expectProtocolError(() => decodePayload(MessageType.Challenge, concat([new Uint8Array(16), hex("09 00 00 00")])), "Challenge.ranges.count", "Challenge: ranges count 9 needs 108 bytes, only 0 remain");
  });

  test("Session: one weight per node, each in 1..MAX_SPLIT_WEIGHT, and Speed", () => {
    const head = (node: number, nodes: number) => `${hex32(node)} ${hex32(nodes)}  08 00 00 00  00 08 00 00  00 00 00 00  00 00 00 00`;
    const Se = MessageType.Session;
    expect(decodePayload(Se, hex(`${head(2, 3)}  01 00 00 00  02 00 00 00  03 00 00 00`))).toMatchObject({ node: 2, nodes: 3, weights: [1, 2, 3] });
    expectProtocolError(() => decodePayload(Se, hex(`${head(0, 3)}  01 00 00 00  02 00 00 00`)), "Session.weights", "Session: 8 bytes of node weights, expected 3 x 4 for 3 nodes");
    expectProtocolError(() => decodePayload(Se, hex(`${head(0, 2)}  01 00 00 00  02 00 00 00  03`)), "Session.weights", "Session: 9 bytes of node weights, expected 2 x 4 for 2 nodes");
    // a node count far beyond the payload is refused without allocating for it
    expectProtocolError(() => decodePayload(Se, hex(`${head(0, 0xffffffff)}  01 00 00 00`)), "Session.weights", "Session: 4 bytes of node weights, expected 4294967295 x 4 for 4294967295 nodes");
    expectProtocolError(() => decodePayload(Se, hex(`${head(0, 2)}  01 00 00 00  00 00 00 00`)), "Session.weights", `Session: node 1's weight 0 is not in 1..${MAX_SPLIT_WEIGHT}`);
    expectProtocolError(() => decodePayload(Se, hex(`${head(0, 1)}  41 42 0f 00`)), "Session.weights", `Session: node 0's weight 1000001 is not in 1..${MAX_SPLIT_WEIGHT}`);
    expect(() => writeMessage(new Writer(), { type: Se, node: 0, nodes: 2, wire: GGMLType.F32, nCtx: 8, kvType: 0, flags: 0, weights: [1] }, { seq: 1 })).toThrow("Session: 1 weights for 2 nodes");
    expectProtocolError(() => decodePayload(MessageType.Speed, hex("02 00 00 00  10 00")), "Speed.mb_per_second", /truncated payload/);
  });

  test("Mesh, PeerHello and MeshAck: mode, address count and lengths, token, version", () => {
    const M = MessageType.Mesh, token = "a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af";
    expect(decodePayload(M, hex(`01 00 00 00  ${token}  00 00 00 00`))).toMatchObject({ mode: MeshMode.Use, addrs: [] });
    expectProtocolError(() => decodePayload(M, hex(`03 00 00 00  ${token}  00 00 00 00`)), "Mesh.mode", "Mesh: mesh mode 3 is not 0 (connect), 1 (use) or 2 (drop)");
    expectProtocolError(() => decodePayload(M, hex(`00 00 00 00  a0 a1 a2`)), "Mesh.token", /truncated payload/);
    // an address count far beyond the payload is refused before anything is allocated
    expectProtocolError(() => decodePayload(M, hex(`00 00 00 00  ${token}  ff ff ff ff  01 00 00 00  61`)), "Mesh.addrs.count", "Mesh: addrs count 4294967295 needs 17179869180 bytes, only 5 remain");
    expectProtocolError(() => decodePayload(M, hex(`00 00 00 00  ${token}  01 00 00 00  01 01 00 00`)), "Mesh.addrs[0].length", "Mesh: addrs[0] length 257 is above the maximum of 256 bytes");
    expectProtocolError(() => decodePayload(M, hex(`00 00 00 00  ${token}  01 00 00 00  05 00 00 00  61 62`)), "Mesh.addrs[0]", /truncated payload/);
    expectProtocolError(() => decodePayload(M, hex(`00 00 00 00  ${token}  00 00 00 00  00`)), "Mesh.length", /1 trailing bytes/);
    expect(() => writeMessage(new Writer(), { type: M, mode: MeshMode.Connect, token: new Uint8Array(15), addrs: [] }, { seq: 1 })).toThrow("mesh token is 15 bytes, expected 16");
    expect(() => writeMessage(new Writer(), { type: M, mode: MeshMode.Connect, token: new Uint8Array(16), addrs: ["x".repeat(257)] }, { seq: 1 })).toThrow(/worker address/);
    expectProtocolError(() => decodePayload(MessageType.PeerHello, hex(`03 00  01 00 00 00  ${token}`)), "PeerHello.version", "PeerHello: peer speaks protocol version 3, this node speaks 4");
    expectProtocolError(() => decodePayload(MessageType.PeerHello, hex(`04 00  01 00 00 00  a0`)), "PeerHello.token", /truncated payload/);
    expectProtocolError(() => decodePayload(MessageType.MeshAck, hex(`01 10 00 00`)), "MeshAck.problem.length", "MeshAck: problem length 4097 is above the maximum of 4096 bytes");
  });

  test("tensor metadata", () => {
    const F = MessageType.Partial;
    expectProtocolError(() => decodePayload(F, hex("05  01 00 00 00 01 00 00 00 01 00 00 00 01 00 00 00 01 00 00 00  00 00 00 00")), "Partial.tensor.n_dims", "Partial: tensor n_dims 5, expected 1..4");
    expectProtocolError(() => decodePayload(F, hex("00  00 00 00 00")), "Partial.tensor.n_dims", "Partial: tensor n_dims 0, expected 1..4");
    expectProtocolError(() => decodePayload(F, hex("01  00 00 00 00  00 00 00 00")), "Partial.tensor.dims[0]", "Partial: tensor dims[0] is 0");
    expectProtocolError(() => decodePayload(F, hex("01  01 00 00 00  02 00 00 00  00 00")), "Partial.tensor.type", "Partial: tensor wire type 2 is not 0 (F32), 1 (F16) or 8 (Q8_0)");
    expectProtocolError(() => decodePayload(F, hex("01  10 00 00 00  08 00 00 00")), "Partial.tensor.dims", "Partial: Q8_0 tensor [16]: the last dim is not a multiple of 32");
    // 1 x 2 F32 claims 8 bytes of data, 4 present; and one byte too many
    expectProtocolError(() => decodePayload(F, hex("02  01 00 00 00 02 00 00 00  00 00 00 00  00 00 80 3f")), "Partial.tensor.data", "Partial: F32 tensor [1, 2] is 8 bytes of data, the payload has 4 after the metadata");
    expectProtocolError(() => decodePayload(F, hex("01  01 00 00 00  00 00 00 00  00 00 80 3f 00")), "Partial.tensor.data", /is 4 bytes of data, the payload has 5/);
    // dims whose product is far beyond any payload
    expectProtocolError(() => decodePayload(F, hex("04  ff ff ff ff ff ff ff ff ff ff ff ff 00 ff ff ff  08 00 00 00")), "Partial.tensor.data", /Q8_0 tensor \[4294967295, 4294967295, 4294967295, 4294967040\] is .* bytes of data, the payload has 0/);
    expectProtocolError(() => decodePayload(F, hex("02  01 00 00")), "Partial.tensor.dims[0]", /truncated payload/);
  });
});

// ---- the activation codec: real sizes ------------------------------------------------------------

describe("activation codec sizes", () => {
  test("(1, 4096) and (128, 4096): the real figures", () => {
    // The design promised "16384 bytes as F32, 4360 bytes as Q8_0" for (1, 4096). 4360 = 4352 bytes of
    // Q8_0 data (128 blocks x 34) + 8 bytes: metadata counted as two u32 dims with no n_dims byte and
    // no type field, and no frame header. Our honest total is data + metadata (1 + 4 x dims + 4 = 13
    // bytes for 2 dims) + the 24-byte header: 4352 + 13 + 24 = 4389 bytes.
    const w = new Writer();
    const rows: string[] = [];
    for (const shape of [
      [1, 4096],
      [128, 4096],
    ]) {
      const n = shape[0]! * shape[1]!;
      const x = standardNormal(n, n);
      const f32 = activationSizes(shape, GGMLType.F32);
      for (const type of [GGMLType.F32, GGMLType.F16, GGMLType.Q8_0] as const) {
        const info = writeActivationFrame(w, kernels, MessageType.Partial, { seq: 1, layer: 0 }, x, shape, type);
        const bytes = w.flush();
        expect(bytes.length).toBe(info.frameBytes);
        expect(info).toMatchObject(activationSizes(shape, type));
        const [f] = new Framer().push(bytes);
        const m = decodeMessage(f!);
        if (m.type !== MessageType.Partial) throw new Error("not a Partial");
        const y = decodeActivation(kernels, m.tensor);
        let se = 0;
        for (let i = 0; i < n; i++) se += (y[i]! - x[i]!) ** 2;
        const mse = se / n;
        if (type === GGMLType.Q8_0) {
          expect(info.dataBytes).toBe((n / 32) * 34);
          if (n === 4096) expect(info.dataBytes).toBe(4352);
          expect(mse).toBeLessThan(1e-4);
        }
        if (type === GGMLType.F32) expect(mse).toBe(0);
        const name = type === GGMLType.F32 ? "F32" : type === GGMLType.F16 ? "F16" : "Q8_0";
        rows.push(
          `(${shape.join(", ")}) ${name.padEnd(4)} data ${String(info.dataBytes).padStart(7)}  meta ${info.metaBytes}  frame ${String(info.frameBytes).padStart(7)}` +
            `  data/F32 ${(info.dataBytes / f32.dataBytes).toFixed(4)}  frame/F32 frame ${(info.frameBytes / f32.frameBytes).toFixed(4)}  MSE ${mse.toExponential(2)}`,
        );
      }
    }
    console.log("activation sizes (standard-normal data):\n  " + rows.join("\n  "));
    expect(activationSizes([1, 4096], GGMLType.Q8_0)).toEqual({ metaBytes: 13, dataBytes: 4352, payloadBytes: 4365, frameBytes: 4389 });
    expect(activationSizes([1, 4096], GGMLType.F32).frameBytes).toBe(16384 + 13 + 24);
  });
});

// ---- binary vs JSON -----------------------------------------------------------------------------

describe("binary vs JSON for the same control messages", () => {
  test("Plan with a layer list and ~50 offsets, Hello, Partial metadata", () => {
    const w = new Writer();
    const te = new TextEncoder();
    // A worker serving layers 20..25 of a ~40 GB file, 9 tensors per layer = 54 offset entries.
    const layers = [20, 21, 22, 23, 24, 25];
    const offsets: OffsetEntry[] = [];
    let off = 9_876_543_232;
    for (const l of layers) {
      for (let k = 0; k < 9; k++) {
        offsets.push({ tensor: 3 + l * 9 + k, offset: off });
        off += k < 4 ? 37_748_736 : 132_120_576; // attention vs FFN tensor sizes, 32-byte aligned
      }
    }
    const planBin = encodeMessage(w, { type: MessageType.Plan, layers, offsets }, { seq: 4 }).length;
    const planJson = te.encode(JSON.stringify({ type: "Plan", version: 1, seq: 4, layers, offsets })).length;
    const planJsonTuples = te.encode(JSON.stringify({ type: "Plan", version: 1, seq: 4, layers, offsets: offsets.map((o) => [o.tensor, o.offset]) })).length;
    // proto3's JSON mapping sends 64-bit integers as strings (JSON numbers lose precision above 2^53)
    const planJsonU64Strings = te.encode(JSON.stringify({ type: "Plan", version: 1, seq: 4, layers, offsets: offsets.map((o) => ({ tensor: o.tensor, offset: String(o.offset) })) })).length;

    const md5 = Uint8Array.from({ length: 16 }, (_, i) => i * 17);
    const model = { path: "/models/llama-3-70b-instruct-q4_0.gguf", size: 39_969_732_928, sampleMd5: md5 };
    const helloBin = encodeMessage(w, { type: MessageType.Hello, version: 1, capabilities: ALL_CAPABILITIES, name: "worker-03", model }, { seq: 1 }).length;
    const helloJson = te.encode(
      JSON.stringify({ type: "Hello", version: 1, seq: 1, capabilities: ["q8_0", "f16", "f32"], name: "worker-03", model: { path: model.path, size: model.size, sampleMd5: Buffer.from(md5).toString("hex") } }),
    ).length;

    const forwardBin = HEADER_SIZE + activationSizes([1, 4096], GGMLType.Q8_0).metaBytes;
    const forwardJson = te.encode(JSON.stringify({ type: "Partial", version: 2, seq: 5, layer: 20, last: false, shape: [1, 4096], dtype: "q8_0" })).length;
    const base64Data = Math.ceil(4352 / 3) * 4;

    console.log(
      [
        "binary vs JSON (binary counts the 24-byte header):",
        `  Plan (6 layers, ${offsets.length} offsets)  binary ${planBin} (payload ${planBin - HEADER_SIZE})`,
        `    JSON {tensor, offset} objects      ${planJson} (${(planJson / planBin).toFixed(2)}x)`,
        `    JSON objects, u64 as strings       ${planJsonU64Strings} (${(planJsonU64Strings / planBin).toFixed(2)}x)`,
        `    JSON [tensor, offset] tuples       ${planJsonTuples} (${(planJsonTuples / planBin).toFixed(2)}x)`,
        `  Hello                        binary ${helloBin}  JSON ${helloJson} (${(helloJson / helloBin).toFixed(2)}x)`,
        `  Partial metadata (1, 4096)   binary ${forwardBin}  JSON ${forwardJson} (${(forwardJson / forwardBin).toFixed(2)}x); its Q8_0 data: 4352 bytes raw, ${base64Data} as base64 in JSON`,
      ].join("\n"),
    );
    expect(planBin).toBe(24 + 4 + 4 * 6 + 4 + 12 * 54);
    // The brief asked for >= 3x. Measured: 2.86x against keyed JSON objects, 3.02x when the u64
    // offsets are strings, only 1.48x against [id, offset] tuples; 3x is not a property of the
    // format, it depends on how the JSON is written. The assertions pin what holds.
    expect(planJson).toBeGreaterThanOrEqual(2.5 * planBin);
    expect(planJsonTuples).toBeGreaterThanOrEqual(1.4 * planBin);
    expect(helloJson).toBeGreaterThan(helloBin);
    expect(forwardJson).toBeGreaterThan(forwardBin);
  });
});
