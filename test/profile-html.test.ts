// The profile page: escaped, self-contained, and (in headless Chromium, over the DevTools protocol)
// one bar per node whose segments are as wide as their shares, with no errors and no fetches.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { renderHtml } from "../src/profile/html";
import { formatProfile } from "../src/profile/run";
import { balanceOf, type ModelShape } from "../src/profile/balance";
import { GGMLType } from "../src/native/types";
import type { ModelConfig } from "../src/model/config";
import type { NodeProfile, OpGroup, OpRow, ProfileReport } from "../src/profile/report";
import { type Browser, findChromium, launchChromium, type Params } from "./helpers/cdp";

const HOSTILE = "<script>alert(1)</script>";
const PATH = `/models/"tiny"&<img src=x>.gguf`;

/** op id, label, group, ms per token, calls per token, GB/s (ids and labels as src/profile/profiler.ts has them) */
type Spec = [string, string, OpGroup, number, number, number | null];

/** One node's rows; `root` adds embedding, logits and sampling, `disk` the wait for streamed weights. */
function specs(root: boolean, wait: number, disk: number): Spec[] {
  return [
    ["embedding", "token embedding", "compute", root ? 0.02 : 0, root ? 1 : 0, root ? 1.1 : null],
    ["rms_norm", "RMS norm", "compute", 0.21, 45, null],
    ["attn_q", "attention q projection", "compute", 3.1, 22, 9.8],
    ["attn_k", "attention k projection", "compute", 0.42, 22, 9.1],
    ["attn_v", "attention v projection", "compute", 0.41, 22, 9.2],
    ["rope", "RoPE", "compute", 0.18, 44, null],
    ["attention", "attention (scores, softmax, values)", "compute", 1.3, 22, null],
    ["attn_o", "attention output projection", "compute", 3.0, 22, 9.9],
    ["ffn_gate", "feed-forward gate", "compute", 8.1, 22, 10.2],
    ["ffn_up", "feed-forward up", "compute", 8.0, 22, 10.3],
    ["ffn_down", "feed-forward down", "compute", 8.3, 22, 10.0],
    ["activation", "activation (SwiGLU)", "compute", 0.25, 22, null],
    ["add", "residual and bias adds", "compute", 0.08, 44, null],
    ["convert", "matmul input to Q8_0/F16, F16 KV", "compute", 0.6, 110, null],
    ["logits", "output projection (logits)", "compute", root ? 6.2 : 0, root ? 1 : 0, root ? 11.1 : null],
    ["sampling", "sampling", "compute", root ? 0.3 : 0, root ? 1 : 0, null],
    ["wire_compress", "wire compression (Q8_0)", "compression", 0.35, 45, null],
    ["wire_decompress", "wire decompression", "compression", root ? 0.52 : 0.2, root ? 90 : 45, null],
    ["network_send", "network send", "network", root ? 0.6 : 0.4, root ? 90 : 45, null],
    ["network_wait", "network wait", "network", wait, 45, null],
    ["stream_wait", "waiting for weights from disk", "io", disk, disk > 0 ? 22 : 0, null],
    ["typescript", "TypeScript between native calls", "typescript", root ? 1.9 : 1.1, 1, null],
    ["other", "other kernels", "compute", 0.05, 3, null],
    ["unaccounted", "unaccounted", "unaccounted", root ? 0.5 : 0.3, 1, null],
  ];
}

/** A node whose rows sum to 1 and whose groups sum to its wall time, like the profiler's. */
function node(name: string, role: "root" | "worker", rows: Spec[]): NodeProfile {
  const wall = rows.reduce((s, r) => s + r[3], 0);
  const ops: OpRow[] = rows.map(([op, label, group, ms, calls, gb]) => ({ op, label, group, share: ms / wall, msPerToken: ms, callsPerToken: calls, gbPerSecond: gb }));
  const groups: Record<OpGroup, number> = { compute: 0, compression: 0, network: 0, io: 0, typescript: 0, unaccounted: 0 };
  for (const r of ops) groups[r.group] += r.msPerToken;
  return { name, role, wallMsPerToken: wall, ops, groups };
}

function report(): ProfileReport {
  const perNode = [node("root", "root", specs(true, 7.4, 0)), node("worker 10.0.0.2:9998", "worker", specs(false, 13.9, 0)), node(HOSTILE, "worker", specs(false, 9.6, 5.0))];
  return {
    schema: "dairllm.profile/1",
    model: { path: PATH, arch: "llama", type: "Q4_0", layers: 22, dim: 2048, params: 1_100_048_384, bytes: 637_699_456 },
    kernels: "avx2",
    threads: 4,
    nodes: perNode.length,
    wire: "q8_0",
    prompt: { tokens: 12, seconds: 0.41, tokensPerSecond: 29.3 },
    decode: { tokens: 64, seconds: 3.14, tokensPerSecond: 20.4, msPerToken: 49.1 },
    overhead: { nsPerTimer: 38, timersPerToken: 1300, share: 0.001 },
    perNode,
    promptNodes: [node("root", "root", specs(true, 0.2, 0)), node("worker 10.0.0.2:9998", "worker", specs(false, 0.3, 0)), node(HOSTILE, "worker", specs(false, 0.3, 0))],
    balance: balanceOf(perNode),
  };
}

test("balance: per node the MB its matmuls read per token, in how many ms, and --split weights from those speeds", () => {
  // the root's matmuls: 3.1 ms at 9.8 GB/s, ..., its logits 6.2 ms at 11.1 GB/s and the embedding row
  const root = node("root", "root", specs(true, 1, 0));
  // a worker whose matmuls take twice as long for the same bytes (half the GB/s)
  const slow = node("worker 10.0.0.2:9998", "worker", specs(false, 1, 0).map(([op, l, g, ms, c, gb]) => [op, l, g, gb === null ? ms : 2 * ms, c, gb === null ? null : gb / 2] as Spec));
  const b = balanceOf([root, slow]);
  const mb = 3.1 * 9.8 + 0.42 * 9.1 + 0.41 * 9.2 + 3.0 * 9.9 + 8.1 * 10.2 + 8.0 * 10.3 + 8.3 * 10.0;
  const ms = 3.1 + 0.42 + 0.41 + 3.0 + 8.1 + 8.0 + 8.3;
  expect(b.nodes[0]!.weightMB).toBeCloseTo(mb + 0.02 * 1.1 + 6.2 * 11.1, 6);
  expect(b.nodes[0]!.weightMs).toBeCloseTo(ms + 0.02 + 6.2, 6);
  expect(b.nodes[1]!.weightMB).toBeCloseTo(mb, 6);
  expect(b.nodes[1]!.weightMs).toBeCloseTo(2 * ms, 6);
  expect(b.nodes[1]!.mbPerSecond).toBeCloseTo((mb / (2 * ms)) * 1000, 6);
  expect(b.spread).toBeCloseTo((2 * ms) / (ms + 6.22), 6);
  // shares in proportion to the speeds: the worker's weight about half the root's
  expect(b.suggestedSplit).toEqual([Math.round(b.nodes[0]!.mbPerSecond), Math.round(b.nodes[1]!.mbPerSecond)]);
  expect(b.suggestedSplit[0]! / b.suggestedSplit[1]!).toBeGreaterThan(1.9);
  const text = formatProfile({ ...report(), nodes: 2, perNode: [root, slow], balance: b });
  expect(text).toContain(`--split ${b.suggestedSplit.join(",")} (shares in proportion to these speeds) would even them out`);
  // equal nodes: nothing to change
  const even = balanceOf([root, node("worker 10.0.0.2:9998", "worker", specs(true, 1, 0))]);
  expect(even.spread).toBeCloseTo(1, 9);
  expect(even.predictedMs).toBeNull();
  expect(formatProfile({ ...report(), nodes: 2, perNode: [root, root], balance: even })).toContain("the split fits these machines");

  // with the model's shape: the split predicted fastest, per phase (whole KV heads for attention)
  const q4 = { type: GGMLType.Q4_0 };
  const shape: ModelShape = {
    config: { dim: 2048, nHeads: 32, nKvHeads: 4, headDim: 64, hiddenDim: 5632, nLayers: 22, vocabSize: 32000 } as ModelConfig,
    weights: { layers: [{ wq: q4, wk: q4, wv: q4, wo: q4, wGate: q4, wUp: q4, wDown: q4 }], output: q4 } as unknown as ModelShape["weights"],
    align: 32,
  };
  const [rootW, slowW] = [node("root", "root", specs(true, 1, 0)), slow];
  // the worker computes logits too (its rows at half the root's speed)
  slowW.ops.find((o) => o.op === "logits")!.msPerToken = 12.4;
  slowW.ops.find((o) => o.op === "logits")!.gbPerSecond = 5.55;
  const p = balanceOf([rootW, slowW], shape, [1, 1]);
  expect(p.predictedMs).not.toBeNull();
  // about twice the root's share for the root, and much less time than the even split
  expect(p.suggestedSplit[0]! / p.suggestedSplit[1]!).toBeGreaterThan(1.5);
  expect(p.suggestedSplit[0]! / p.suggestedSplit[1]!).toBeLessThan(3);
  expect(p.predictedMs!.suggested).toBeLessThan(p.predictedMs!.current * 0.8);
  expect(formatProfile({ ...report(), nodes: 2, perNode: [rootW, slowW], balance: p })).toMatch(/--split \d+,\d+ is predicted to take [\d.]+ ms of matmuls per token instead of [\d.]+ \(\d+ % less/);
  // equal speeds: the even split is already the best
  const fits = balanceOf([rootW, node("worker 10.0.0.2:9998", "worker", specs(true, 1, 0))], shape, [1, 1]);
  expect(fits.predictedMs!.suggested).toBeGreaterThan(fits.predictedMs!.current * 0.97);
  expect(formatProfile({ ...report(), nodes: 2, perNode: [rootW, rootW], balance: fits })).toContain("the split fits these machines: none is predicted more than 3 % faster");
  // three nodes, one slow: it gets the smallest weight; the search never leaves the model's limits
  const three = balanceOf([rootW, rootW, slowW], shape, [1, 1, 1]);
  expect(three.suggestedSplit.length).toBe(3);
  expect(three.suggestedSplit[2]!).toBeLessThan(Math.min(three.suggestedSplit[0]!, three.suggestedSplit[1]!));
  expect(three.predictedMs!.suggested).toBeLessThan(three.predictedMs!.current);
});

describe("renderHtml", () => {
  const r = report();
  const html = renderHtml(r);

  test("the synthetic report is like the profiler's: each node's rows sum to 1", () => {
    for (const n of [...r.perNode, ...r.promptNodes]) expect(n.ops.reduce((s, o) => s + o.share, 0)).toBeCloseTo(1, 9);
  });

  test("every string from the report is escaped", () => {
    expect(html).not.toContain(HOSTILE);
    expect(html).not.toMatch(/<script/i);
    expect(html).toContain("&lt;script&gt;alert(1)&lt;/script&gt;");
    expect(html).toContain(`data-node="&lt;script&gt;alert(1)&lt;/script&gt;"`);
    expect(html).toContain("/models/&quot;tiny&quot;&amp;&lt;img src=x&gt;.gguf");
    expect(html).not.toContain("<img");
  });

  test("self-contained: nothing to fetch", () => {
    expect(html).not.toMatch(/<[^>]*\b(src|href)\s*=|url\(|@import|<link|https?:/i);
  });

  test("the balance section, escaped", () => {
    expect(html).toContain("<h2>Balance</h2>");
    expect(html).toMatch(/root +[\d.]+ MB of weights in +[\d.]+ ms = +\d+ MB\/s/);
    expect(html).toContain("&lt;script&gt;alert(1)&lt;/script&gt;");
    expect(html).toMatch(/the split fits these machines|--split \d+,\d+,\d+/);
  });

  test("title, facts and speeds", () => {
    expect(html).toContain("<h1>dairllm profile: &quot;tiny&quot;&amp;&lt;img src=x&gt;.gguf</h1>");
    for (const s of ["llama · Q4_0 · 1.10B params · 22 layers", "kernels avx2 · 4 threads · 3 nodes · wire q8_0", "prompt <b>29.3</b> tokens/s", "decode <b>20.4</b> tokens/s (<b>49.1</b> ms/token)"]) expect(html).toContain(s);
  });

  test("one bar per node for a decoded token and one for the prompt, one segment per non-zero row, with tooltips", () => {
    expect(html.match(/class="bar"/g)?.length).toBe(6);
    expect(html).toContain("<h2>The prompt: 12 tokens as one batch <small>per prompt token</small></h2>");
    const segs = [...r.perNode, ...r.promptNodes].reduce((s, n) => s + n.ops.filter((o) => o.share > 0).length, 0);
    expect(html.match(/class="seg"/g)?.length).toBe(segs);
    const q = r.perNode[0]?.ops.find((o) => o.op === "attn_q");
    expect(q).toBeDefined();
    expect(html).toContain(`title="attention q projection: 3.10 ms/token (${((q?.share ?? 0) * 100).toFixed(1)} %)"`);
  });

  test("a table and a network-vs-compute line per node", () => {
    expect(html.match(/<table>/g)?.length).toBe(3);
    const lines = [...html.matchAll(/network ([\d.]+) ms\/token vs compute ([\d.]+) ms\/token/g)];
    expect(lines.map((m) => [Number(m[1]), Number(m[2])])).toEqual(r.perNode.map((n) => [expect.closeTo(n.groups.network, 1), expect.closeTo(n.groups.compute, 1)]));
    expect(html.match(/, waiting for disk [\d.]+ ms\/token/g)).toEqual([", waiting for disk 5.00 ms/token"]);
    expect(html).toMatch(/feed-forward gate<\/td><td>\d+\.\d %<\/td><td>8\.10<\/td><td>22<\/td><td>10\.2<\/td>/);
    expect(html).toMatch(/network wait<\/td><td>\d+\.\d %<\/td><td>7\.40<\/td><td>45<\/td><td><\/td>/);
  });
});

describe("in headless Chromium", () => {
  let browser: Browser | undefined;
  const dir = mkdtempSync(join(tmpdir(), "dairllm-profile-html-"));
  afterAll(async () => {
    await browser?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test("renders one bar per node, segments as wide as their shares, no errors, no fetches", async () => {
    const chromium = findChromium();
    if (!chromium) {
      if (process.env.CI) throw new Error("chromium is required for the profile page test (.ci/run installs it with apt)");
      console.warn("note: chromium not found on PATH: skipping the browser check of the profile page");
      return;
    }
    const t0 = performance.now();
    const r = report();
    const file = join(dir, "profile.html");
    writeFileSync(file, renderHtml(r));
    const url = pathToFileURL(file).href;

    browser = await launchChromium(chromium);
    const page = await browser.newPage();
    const errors: string[] = [];
    const requests: string[] = [];
    page.on("Runtime.exceptionThrown", (p) => errors.push(`exception: ${JSON.stringify(p.exceptionDetails)}`));
    page.on("Runtime.consoleAPICalled", (p) => p.type === "error" && errors.push(`console.error: ${JSON.stringify(p.args)}`));
    page.on("Log.entryAdded", (p) => (p.entry as Params).level === "error" && errors.push(`log: ${JSON.stringify(p.entry)}`));
    page.on("Page.javascriptDialogOpening", (p) => errors.push(`dialog: ${String(p.message)}`));
    page.on("Network.requestWillBeSent", (p) => requests.push(String((p.request as Params).url)));
    for (const domain of ["Runtime", "Log", "Network", "Page"]) await page.send(`${domain}.enable`);

    const loaded = page.waitFor("Page.loadEventFired", 10_000);
    const nav = await page.send<{ errorText?: string }>("Page.navigate", { url });
    expect(nav.errorText).toBeUndefined();
    await loaded;

    const measure = `JSON.stringify({
      scripts: document.querySelectorAll("script").length,
      bars: [...document.querySelectorAll(".bar")].map((bar) => ({
        node: bar.dataset.node,
        width: bar.getBoundingClientRect().width,
        segs: [...bar.querySelectorAll(".seg")].map((s) => ({ op: s.dataset.op, width: s.getBoundingClientRect().width })),
      })),
    })`;
    const res = await page.send<{ result: { value: string }; exceptionDetails?: unknown }>("Runtime.evaluate", { expression: measure, returnByValue: true });
    expect(res.exceptionDetails).toBeUndefined();
    const got = JSON.parse(res.result.value) as { scripts: number; bars: { node: string; width: number; segs: { op: string; width: number }[] }[] };

    expect(got.scripts).toBe(0);
    const nodes = [...r.perNode, ...r.promptNodes]; // the decode bars, then the prompt's
    expect(got.bars.map((b) => b.node)).toEqual(nodes.map((n) => n.name));
    let maxdiff = 0;
    for (const [i, bar] of got.bars.entries()) {
      const ops = nodes[i]?.ops.filter((o) => o.share > 0) ?? [];
      expect(bar.width).toBeGreaterThan(200);
      expect(bar.segs.map((s) => s.op)).toEqual(ops.map((o) => o.op));
      for (const [j, seg] of bar.segs.entries()) {
        const share = ops[j]?.share ?? 0;
        expect(seg.width).toBeGreaterThan(0);
        maxdiff = Math.max(maxdiff, Math.abs(seg.width / bar.width - share));
        expect(Math.abs(seg.width / bar.width - share)).toBeLessThan(0.03 * share + 0.002);
      }
    }
    expect(errors).toEqual([]);
    expect(requests).toEqual([url]);
    console.log(`chromium: ${got.bars.length} bars, ${got.bars.reduce((s, b) => s + b.segs.length, 0)} segments, max |width/bar - share| ${maxdiff.toExponential(2)}, requests ${JSON.stringify(requests)}, ${(performance.now() - t0).toFixed(0)} ms`);
  }, 60_000);
});
