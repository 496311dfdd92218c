// A small Chrome DevTools Protocol client for tests: launch headless Chromium, open a page, send
// commands, wait for events. One WebSocket to the browser; each page is a flattened session on it.
// Every wait has a timeout whose error says what was awaited.
import type { Subprocess } from "bun";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export type Params = Record<string, unknown>;

interface Message {
  id?: number;
  method?: string;
  params?: Params;
  result?: Params;
  error?: { code: number; message: string };
  sessionId?: string;
}

/** The chromium binary on PATH, or null. */
export function findChromium(): string | null {
  return Bun.which("chromium");
}

/** Resolves like `p`, or rejects with "timed out after N ms waiting for <what>". */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: Timer | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** A page: commands and events scoped to its session. */
export interface Page {
  send<T = Params>(method: string, params?: Params): Promise<T>;
  /** Calls `listener` for every `method` event of this page; returns a function that stops it. */
  on(method: string, listener: (params: Params) => void): () => void;
  /** The next `method` event of this page (subscribe before triggering it). */
  waitFor(method: string, timeoutMs: number): Promise<Params>;
}

export interface Browser extends AsyncDisposable {
  newPage(): Promise<Page>;
  /** Kills chromium and removes its profile directory; safe to call twice. */
  close(): Promise<void>;
}

/** Starts headless chromium on a free debugging port and connects to it. */
export async function launchChromium(binary: string, timeoutMs = 15_000): Promise<Browser> {
  const profile = mkdtempSync(join(tmpdir(), "dairllm-chromium-"));
  const proc = Bun.spawn([binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0", `--user-data-dir=${profile}`, "about:blank"], {
    stdin: "ignore",
    stdout: "ignore",
    stderr: "pipe",
  });
  let ws: WebSocket | undefined;
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    ws?.close();
    proc.kill("SIGTERM");
    const exited = await Promise.race([proc.exited.then(() => true), Bun.sleep(5_000).then(() => false)]);
    if (!exited) proc.kill("SIGKILL");
    await proc.exited;
    rmSync(profile, { recursive: true, force: true });
  };
  try {
    const url = await withTimeout(devtoolsUrl(proc), timeoutMs, "chromium's \"DevTools listening on ws://...\" line");
    ws = new WebSocket(url);
    const cdp = new Connection(ws);
    await withTimeout(new Promise((resolve, reject) => {
      ws?.addEventListener("open", resolve, { once: true });
      ws?.addEventListener("error", () => reject(new Error(`cannot connect to ${url}`)), { once: true });
    }), timeoutMs, `the DevTools WebSocket ${url} to open`);
    return {
      async newPage() {
        const { targetId } = await cdp.send<{ targetId: string }>("Target.createTarget", { url: "about:blank" });
        const { sessionId } = await cdp.send<{ sessionId: string }>("Target.attachToTarget", { targetId, flatten: true });
        return {
          send: (method, params) => cdp.send(method, params, sessionId),
          on: (method, listener) => cdp.on(sessionId, method, listener),
          waitFor(method, ms) {
            let stop = () => {};
            const event = new Promise<Params>((resolve) => {
              stop = cdp.on(sessionId, method, resolve);
            });
            return withTimeout(event, ms, `the page's ${method} event`).finally(stop);
          },
        };
      },
      close,
      [Symbol.asyncDispose]: close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

/** Reads chromium's stderr until the DevTools URL appears; keeps draining it after (a full pipe would stall chromium). */
async function devtoolsUrl(proc: Subprocess<"ignore", "ignore", "pipe">): Promise<string> {
  const reader = proc.stderr.getReader();
  const decoder = new TextDecoder();
  let text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`chromium exited (code ${await proc.exited}) before listening:\n${text.slice(-2000)}`);
    text += decoder.decode(value, { stream: true });
    const m = /DevTools listening on (ws:\/\/\S+)/.exec(text);
    if (m?.[1]) {
      (async () => {
        while (!(await reader.read()).done);
      })().catch(() => {});
      return m[1];
    }
  }
}

/** Request/response over the browser WebSocket, with events routed by session and method. */
class Connection {
  #next = 1;
  #pending = new Map<number, { method: string; resolve: (r: Params) => void; reject: (e: Error) => void }>();
  #listeners = new Set<{ sessionId: string; method: string; listener: (params: Params) => void }>();

  constructor(private ws: WebSocket) {
    ws.addEventListener("message", (ev) => this.#receive(JSON.parse(String(ev.data)) as Message));
    ws.addEventListener("close", () => {
      for (const p of this.#pending.values()) p.reject(new Error(`${p.method}: the DevTools connection closed`));
      this.#pending.clear();
    });
  }

  send<T = Params>(method: string, params: Params = {}, sessionId?: string, timeoutMs = 10_000): Promise<T> {
    const id = this.#next++;
    const reply = new Promise<Params>((resolve, reject) => this.#pending.set(id, { method, resolve, reject }));
    this.ws.send(JSON.stringify({ id, method, params, sessionId }));
    return withTimeout(reply, timeoutMs, `the reply to ${method}`).finally(() => this.#pending.delete(id)) as Promise<T>;
  }

  on(sessionId: string, method: string, listener: (params: Params) => void): () => void {
    const entry = { sessionId, method, listener };
    this.#listeners.add(entry);
    return () => this.#listeners.delete(entry);
  }

  #receive(msg: Message) {
    if (msg.id !== undefined) {
      const p = this.#pending.get(msg.id);
      if (msg.error) p?.reject(new Error(`${p.method}: ${msg.error.message}`));
      else p?.resolve(msg.result ?? {});
      return;
    }
    for (const l of this.#listeners) if (l.method === msg.method && l.sessionId === msg.sessionId) l.listener(msg.params ?? {});
  }
}
