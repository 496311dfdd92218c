// One TCP connection carrying frames: a streaming Framer on the way in (whole frames only, bad
// frames close the connection with a reason), a queue with backpressure on the way out, and
// `next()` to await the next message with a deadline.
import type { Socket } from "bun";
import { Framer, Writer } from "./framer";
import { type Spinner } from "./spin";
import { type Warmer, warmWhile } from "./warm";
import { decodeMessage, type Message, MessageType, messageTypeName, ProtocolError, writeMessage } from "./protocol";

export interface Received {
  message: Message;
  layer: number;
  flags: number;
  seq: number;
  /** the frame's payload, which the message's data views (Conn.recycle) */
  payload: Uint8Array;
}

export class ConnectionClosed extends Error {}

/** Nothing came within the deadline of `next()`. */
export class Silent extends Error {}

export class Conn {
  readonly writer = new Writer();
  private readonly framer = new Framer();
  private readonly inbox: Received[] = [];
  private waiter: { resolve: (r: Received) => void; reject: (e: Error) => void } | null = null;
  private pending: Uint8Array[] = [];
  private closedWith: Error | null = null;
  private seq = 0;

  constructor(
    readonly socket: Socket<unknown>,
    /** who is at the other end, for messages ("worker 127.0.0.1:9998"); a worker renames a link from
     *  another worker once that one has said who it is */
    public peer: string,
  ) {}

  /** Feed bytes from the socket's data handler. A protocol violation closes the connection. */
  onData(chunk: Uint8Array): void {
    if (this.closedWith) return;
    let frames;
    try {
      frames = this.framer.push(chunk);
    } catch (e) {
      this.fail(e instanceof ProtocolError ? new Error(`${this.peer}: bad frame: ${e.message}`) : (e as Error));
      return;
    }
    for (const f of frames) {
      let message: Message;
      try {
        message = decodeMessage(f);
      } catch (e) {
        this.fail(new Error(`${this.peer}: bad ${messageTypeName(f.type)} message: ${(e as Error).message}`));
        return;
      }
      const r = { message, layer: f.layer, flags: f.flags, seq: f.seq, payload: f.payload };
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = null;
        w.resolve(r);
      } else this.inbox.push(r);
    }
  }

  onDrain(): void {
    while (this.pending.length) {
      const b = this.pending[0]!;
      const n = this.socket.write(b);
      if (n < b.length) {
        this.pending[0] = b.subarray(n);
        return;
      }
      this.pending.shift();
    }
  }

  onClose(reason?: Error): void {
    this.fail(reason ?? new ConnectionClosed(`${this.peer} closed the connection`));
  }

  /** Closes with a reason: pending and future next() calls reject with it. */
  fail(reason: Error): void {
    if (this.closedWith) return;
    this.closedWith = reason;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.reject(reason);
    }
    try {
      this.socket.end();
    } catch {
      // already closed
    }
  }

  get closed(): Error | null {
    return this.closedWith;
  }

  /** Sends one message. */
  send(m: Message, head: { layer?: number; flags?: number } = {}): void {
    writeMessage(this.writer, m, { seq: this.seq++, ...head });
    this.flushWriter();
  }

  /** Writes what the writer holds (frames built directly with writeActivationFrame and friends). */
  flushWriter(): void {
    if (this.closedWith) throw this.closedWith;
    if (this.pending.length) {
      this.pending.push(this.writer.flush());
      return;
    }
    // the frames straight from the writer's buffer (no copy per frame); only what the socket did not
    // take is copied, as the buffer is reused by the next frame
    const bytes = this.writer.flushView();
    const n = this.socket.write(bytes);
    if (n >= 0 && n < bytes.length) this.pending.push(bytes.slice(n)); // -1: closed, the close handler reports it
    // send now: the root computes its own slice right after sending, and a write left in Bun's
    // buffer until the next event-loop turn would make the worker wait for that computation
    this.socket.flush();
  }

  /** A received message has been read (activations decoded): its frame's memory may take the next
   *  frame of its size (Framer.recycle). Neither the message nor views of its data may be used after. */
  recycle(r: Received): void {
    this.framer.recycle(r.payload);
  }

  nextSeq(): number {
    return this.seq++;
  }

  /**
   * The next message, or an error when the connection closes or nothing comes within `timeoutMs`.
   * With a `warmer`, the weights read next are read into the cache while it is awaited (warm.ts);
   * with a `spinner`, a message due soon is busy-polled for (spin.ts) before the process sleeps.
   */
  next(timeoutMs: number, what: string, spinner: Spinner | null = null, warmer: Warmer | null = null): Promise<Received> {
    const r = this.inbox.shift();
    if (r) return Promise.resolve(r);
    if (this.closedWith) return Promise.reject(this.closedWith);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new Silent(`${this.peer} did not answer ${what} within ${(timeoutMs / 1000).toFixed(1)} s`));
      }, timeoutMs);
      const waiter = {
        resolve: (x: Received) => {
          clearTimeout(timer);
          resolve(x);
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.waiter = waiter;
      const done = () => this.waiter !== waiter;
      if (warmer) warmWhile(warmer, done, spinner);
      else spinner?.spin(done);
    });
  }

  /** The next message, which must be of `type` (an Error message from the peer becomes an Error). */
  async expect<T extends MessageType>(type: T, timeoutMs: number, what: string): Promise<Received & { message: Extract<Message, { type: T }> }> {
    const r = await this.next(timeoutMs, what);
    if (r.message.type === MessageType.Error) throw new Error(`${this.peer}: ${r.message.message}`);
    if (r.message.type !== type) throw new Error(`${this.peer}: expected ${messageTypeName(type)} (${what}), got ${messageTypeName(r.message.type)}`);
    return r as Received & { message: Extract<Message, { type: T }> };
  }
}

/** The socket handlers of a connection carried as `socket.data.conn`: bytes in, drain, close. */
export const connHandlers = {
  data(socket: Socket<{ conn: Conn }>, chunk: Uint8Array): void {
    socket.data.conn.onData(chunk);
  },
  drain(socket: Socket<{ conn: Conn }>): void {
    socket.data.conn.onDrain();
  },
  close(socket: Socket<{ conn: Conn }>): void {
    socket.data?.conn.onClose();
  },
  error(socket: Socket<{ conn: Conn }>, err: Error): void {
    socket.data?.conn.onClose(err);
  },
};

export function parseWorkerList(list: string): { host: string; port: number; addr: string }[] {
  return list.split(",").map((s) => s.trim()).filter(Boolean).map((addr) => {
    const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(addr);
    const port = m?.[2] ? Number(m[2]) : 9998;
    if (!m || !(port > 0 && port < 65536)) throw new Error(`--workers: "${addr}" is not host:port`);
    return { host: m[1]!.replace(/^\[|\]$/g, ""), port, addr: `${m[1]}:${port}` };
  });
}

/** Opens a connection to `host:port`; `label` names the peer in errors and in Conn.peer ("worker pi1:9998"). */
export function connect(host: string, port: number, label: string, timeoutMs: number): Promise<Conn> {
  return new Promise((resolve, reject) => {
    let done = false;
    const timer = setTimeout(() => {
      if (!done) {
        done = true;
        reject(new Error(`${label}: no connection within ${(timeoutMs / 1000).toFixed(1)} s (is it running and reachable?)`));
      }
    }, timeoutMs);
    Bun.connect<{ conn: Conn }>({
      hostname: host,
      port,
      socket: {
        ...connHandlers,
        open(socket) {
          const conn = new Conn(socket, label);
          socket.data = { conn };
          if (done) {
            socket.end();
            return;
          }
          done = true;
          clearTimeout(timer);
          resolve(conn);
        },
        connectError(_socket, err) {
          if (done) return;
          done = true;
          clearTimeout(timer);
          reject(new Error(`${label}: cannot connect (${(err as NodeJS.ErrnoException).code ?? err.message})`));
        },
      },
    }).catch((err: Error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      reject(new Error(`${label}: cannot connect (${(err as NodeJS.ErrnoException).code ?? err.message})`));
    });
  });
}
