// `dairllm-worker profile`: per-node tables whose rows add up to the measured wall time, on one node
// and on a root with two workers; the --json shape pinned; worker Stats decoded defensively.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { countersFromStats, nodeProfile, Op, OP_COUNT, OPS, Profiler, STAT_ELAPSED_NS } from "../src/profile/profiler";
import type { ProfileReport } from "../src/profile/report";

const ROOT = join(import.meta.dir, "..");
const MAIN = join(ROOT, "src", "main.ts");
const DEMO = join(import.meta.dir, "fixtures", "demo", "dairllm-demo-13m-q4_0.gguf");
const running: Subprocess[] = [];
const dir = mkdtempSync(join(tmpdir(), "dairllm-profile-"));
afterAll(() => {
  running.forEach((p) => p.kill("SIGKILL"));
  rmSync(dir, { recursive: true, force: true });
});

async function startWorker(): Promise<string> {
  const proc = Bun.spawn([process.execPath, MAIN, "--port", "0", "--host", "127.0.0.1", "--model", DEMO, "--threads", "1"], { cwd: ROOT, stdout: "ignore", stderr: "pipe" });
  running.push(proc);
  const reader = proc.stderr.getReader();
  let text = "";
  const t0 = Date.now();
  while (!/listening on ([\d.]+:\d+)/.test(text)) {
    if (Date.now() - t0 > 10_000) throw new Error(`worker did not start: ${text}`);
    const { value, done } = await reader.read();
    if (done) throw new Error(`worker exited: ${text}`);
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return /listening on ([\d.]+:\d+)/.exec(text)![1]!;
}

function profile(...args: string[]) {
  const p = Bun.spawnSync([process.execPath, MAIN, "profile", "--model", DEMO, "--threads", "1", ...args], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

const NODE_KEYS = ["groups", "name", "ops", "role", "wallMsPerToken"];
const ROW_KEYS = ["callsPerToken", "gbPerSecond", "group", "label", "msPerToken", "op", "share"];
const OP_IDS = [...OPS.map((o) => o.id), "unaccounted"];

/** The shape of --json, pinned: changing it breaks users' scripts. */
function checkShape(r: ProfileReport, nodes: number): void {
  expect(Object.keys(r).sort()).toEqual(["balance", "decode", "kernels", "model", "nodes", "overhead", "perNode", "prompt", "promptNodes", "schema", "threads", "wire"]);
  if (nodes === 1) expect(r.balance).toBeNull();
  else {
    expect(Object.keys(r.balance!).sort()).toEqual(["nodes", "predictedMs", "spread", "suggestedSplit"]);
    expect(r.balance!.predictedMs!.suggested).toBeLessThanOrEqual(r.balance!.predictedMs!.current + 1e-9);
    expect(r.balance!.nodes.map((n) => n.name)).toEqual(r.perNode.map((n) => n.name));
    for (const n of r.balance!.nodes) {
      expect(Object.keys(n).sort()).toEqual(["mbPerSecond", "name", "weightMB", "weightMs"]);
      expect(n.weightMB).toBeGreaterThan(0);
      expect(n.mbPerSecond).toBeGreaterThan(0);
    }
    expect(r.balance!.spread).toBeGreaterThanOrEqual(1);
    expect(r.balance!.suggestedSplit.length).toBe(nodes);
    for (const w of r.balance!.suggestedSplit) expect(Number.isInteger(w) && w >= 1).toBe(true);
  }
  expect(r.schema).toBe("dairllm.profile/1");
  expect(Object.keys(r.model).sort()).toEqual(["arch", "bytes", "dim", "layers", "params", "path", "type"]);
  expect(Object.keys(r.prompt).sort()).toEqual(["seconds", "tokens", "tokensPerSecond"]);
  expect(Object.keys(r.decode).sort()).toEqual(["msPerToken", "seconds", "tokens", "tokensPerSecond"]);
  expect(Object.keys(r.overhead).sort()).toEqual(["nsPerTimer", "share", "timersPerToken"]);
  expect(r.nodes).toBe(nodes);
  expect(r.perNode.length).toBe(nodes);
  expect(r.promptNodes.map((n) => n.name)).toEqual(r.perNode.map((n) => n.name));
  for (const n of [...r.perNode, ...r.promptNodes]) {
    expect(Object.keys(n).sort()).toEqual(NODE_KEYS);
    expect(Object.keys(n.groups).sort()).toEqual(["compression", "compute", "io", "network", "typescript", "unaccounted"]);
    expect(n.ops.map((o) => o.op)).toEqual(OP_IDS);
    for (const row of n.ops) expect(Object.keys(row).sort()).toEqual(ROW_KEYS);
  }
}

/** The timed rows (all but "unaccounted") cover the node's wall time within 5 %. */
function checkSums(n: ProfileReport["perNode"][number]): void {
  const timed = n.ops.filter((o) => o.op !== "unaccounted").reduce((a, o) => a + o.msPerToken, 0);
  expect(Math.abs(timed - n.wallMsPerToken) / n.wallMsPerToken).toBeLessThan(0.05);
  const shares = n.ops.reduce((a, o) => a + o.share, 0);
  expect(shares).toBeCloseTo(1, 6);
  const groups = Object.values(n.groups).reduce((a, b) => a + b, 0);
  expect(groups).toBeCloseTo(n.wallMsPerToken, 6);
}

const row = (n: ProfileReport["perNode"][number], op: string) => n.ops.find((o) => o.op === op)!;

describe("profile command", () => {
  test("one node: a table per operation, rows summing to the wall time, JSON shape pinned", () => {
    const r = profile("-n", "12", "--json");
    expect(r.code).toBe(0);
    const report = JSON.parse(r.out) as ProfileReport;
    checkShape(report, 1);
    const root = report.perNode[0]!;
    expect(root.name).toBe("root");
    expect(root.wallMsPerToken).toBeCloseTo(report.decode.msPerToken, 6);
    checkSums(root);
    // the demo model: 6 layers, one token per step
    expect(row(root, "attn_q").callsPerToken).toBe(6);
    expect(row(root, "ffn_down").callsPerToken).toBe(6);
    expect(row(root, "rms_norm").callsPerToken).toBe(13);
    expect(row(root, "logits").callsPerToken).toBe(1);
    expect(row(root, "sampling").callsPerToken).toBe(1);
    expect(row(root, "embedding").callsPerToken).toBe(1);
    expect(row(root, "network_wait").callsPerToken).toBe(0);
    expect(row(root, "attn_q").gbPerSecond).toBeGreaterThan(0);
    expect(row(root, "rope").gbPerSecond).toBeNull();
    expect(report.wire).toBeNull();
    expect(report.overhead.share).toBeLessThan(0.05);
    // the prompt, one batch: each layer's operations once for all its tokens, its rows summing to
    // the prompt's time, the same time as the report's prompt figure
    const prompt = report.promptNodes[0]!;
    checkSums(prompt);
    expect(prompt.wallMsPerToken).toBeCloseTo((report.prompt.seconds * 1000) / report.prompt.tokens, 6);
    expect(row(prompt, "attn_q").callsPerToken).toBeCloseTo(6 / report.prompt.tokens, 9);
    expect(row(prompt, "logits").callsPerToken).toBeCloseTo(1 / report.prompt.tokens, 9);
    expect(row(prompt, "sampling").callsPerToken).toBe(0);
    expect(row(prompt, "ffn_down").msPerToken).toBeGreaterThan(0);
    // the tables went to stderr
    expect(r.err).toContain("root:");
    expect(r.err).toContain("feed-forward gate");
    expect(r.err).toMatch(/the prompt \(\d+ tokens as one batch\), per prompt token:/);
  });

  test("root + 2 workers: one table per node, each worker's own operations, network vs compute", async () => {
    const addrs = await Promise.all([startWorker(), startWorker()]);
    const html = join(dir, "report.html");
    const r = profile("-n", "16", "--workers", addrs.join(","), "--json", "--html", html);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.out) as ProfileReport;
    checkShape(report, 3);
    expect(report.wire).toBe("q8_0");
    expect(report.perNode.map((n) => n.role)).toEqual(["root", "worker", "worker"]);
    expect(report.perNode.slice(1).map((n) => n.name)).toEqual(addrs.map((a) => `worker ${a}`));
    for (const n of report.promptNodes) {
      checkSums(n);
      expect(row(n, "ffn_up").callsPerToken).toBeCloseTo(6 / report.prompt.tokens, 9);
      expect(row(n, "network_wait").callsPerToken).toBeGreaterThan(0);
    }
    for (const n of report.perNode) {
      checkSums(n);
      expect(row(n, "attn_q").callsPerToken).toBe(6);
      expect(row(n, "ffn_up").callsPerToken).toBe(6);
      expect(row(n, "wire_compress").callsPerToken).toBeGreaterThan(0);
      expect(row(n, "wire_decompress").callsPerToken).toBeGreaterThan(0);
      expect(row(n, "network_wait").msPerToken).toBeGreaterThan(0);
      expect(n.groups.network).toBeGreaterThan(0);
    }
    // only the root samples; each worker computes its share of the logits (SESSION_LOGITS) from its
    // own copy of the residual stream, which the 12 reductions per token keep equal: the workers are
    // linked (the mesh), so each decodes the root's partial and the other worker's, 2 x 12 per token
    for (const w of report.perNode.slice(1)) {
      expect(row(w, "logits").callsPerToken).toBe(1);
      expect(row(w, "sampling").callsPerToken).toBe(0);
      expect(row(w, "wire_decompress").callsPerToken).toBe(24);
      expect(row(w, "wire_compress").callsPerToken).toBe(24); // its partial to the root and to the other worker
      expect(row(w, "rms_norm").callsPerToken).toBe(13);
      // a worker's window is the root's, give or take a round trip
      expect(Math.abs(w.wallMsPerToken - report.decode.msPerToken) / report.decode.msPerToken).toBeLessThan(0.05);
    }
    expect(r.err).toContain(`worker ${addrs[0]}:`);
    expect(r.err).toContain("network vs compute per token:");
    expect(r.err).toMatch(/balance: every reduction waits for the node that finishes last/);
    expect(r.err).toMatch(/the split fits these machines|--split \d+,\d+,\d+ is predicted to take/);
    const page = readFileSync(html, "utf8");
    expect(page).toContain("<html");
    expect(page).not.toMatch(/<script[^>]+src=|<link[^>]+href=|https?:\/\//);
  }, 60_000);

  test("usage errors are named", () => {
    expect(profile("-n", "0").err).toContain("-n");
    const r = profile("--html", "");
    expect(r.code).toBe(2);
    expect(r.err).toContain("--html");
    const big = profile("-n", "5000", "--ctx", "64");
    expect(big.code).toBe(1);
    expect(big.err).toContain("do not fit the context of 64");
  });
});

describe("profiler counters", () => {
  test("Stats round trip: a worker's counters decode to the same table", () => {
    const p = new Profiler();
    const t = p.start();
    for (let i = 0; i < 1e5; i++);
    p.stop(Op.FfnDown, t, 1000);
    p.idle(Op.NetworkWait);
    const c = countersFromStats(p.toStats(), "worker x");
    expect(c.calls[Op.FfnDown]).toBe(1);
    expect(c.bytes[Op.FfnDown]).toBe(1000);
    expect(c.ns[Op.FfnDown]).toBe(Math.round(p.ns[Op.FfnDown]!));
    expect(c.calls[Op.NetworkWait]).toBe(1);
    expect(c.elapsedNs).toBeGreaterThan(0);
    const table = nodeProfile("worker x", "worker", c, c.elapsedNs, 1);
    expect(table.ops.length).toBe(OP_COUNT + 1);
    expect(table.ops.reduce((a, o) => a + o.share, 0)).toBeCloseTo(1, 9);
  });

  test("hostile Stats: unknown ids ignored, negative or non-finite values refused", () => {
    const c = countersFromStats([{ id: 9999, value: 5 }, { id: OP_COUNT * 4 + 1, value: 3 }, { id: STAT_ELAPSED_NS, value: 10 }], "worker y");
    expect(c.elapsedNs).toBe(10);
    expect([...c.ns, ...c.calls, ...c.bytes].every((v) => v === 0)).toBe(true);
    expect(() => countersFromStats([{ id: 0, value: -1 }], "worker y")).toThrow("worker y sent a bad profile value -1");
    expect(() => countersFromStats([{ id: 0, value: Number.NaN }], "worker y")).toThrow("bad profile value");
  });
});
