// The profile report as one self-contained HTML page: a title with the model and the speeds, one
// stacked bar per node (where a token's time goes), a legend, a table per node, and a bar per node for
// the prompt's batch. Static HTML and
// CSS only (no script, nothing fetched), so it reads the same with JavaScript off. Every string from
// the report is escaped: node names and paths are user input.
import { balanceLines } from "./balance";
import { basename } from "node:path";
import type { NodeProfile, OpGroup, OpRow, ProfileReport } from "./report";

/** Colour family per group: hue at the middle of the family, hue spread across its ops, saturation, lightness. */
const FAMILIES: Record<OpGroup, { hue: number; spread: number; sat: number; light: number }> = {
  compute: { hue: 212, spread: 44, sat: 62, light: 34 },
  compression: { hue: 32, spread: 24, sat: 85, light: 40 },
  network: { hue: 350, spread: 24, sat: 62, light: 40 },
  io: { hue: 140, spread: 20, sat: 50, light: 34 },
  typescript: { hue: 0, spread: 0, sat: 0, light: 50 },
  unaccounted: { hue: 0, spread: 0, sat: 0, light: 78 },
};
const GROUP_ORDER: OpGroup[] = ["compute", "compression", "network", "io", "typescript", "unaccounted"];
/** A segment at least this share of its bar shows its label inside. */
const LABEL_MIN_SHARE = 0.06;

interface Colour {
  background: string;
  text: string;
}
/** op id -> a row naming it (label, group) and its colour */
type Palette = Map<string, { row: OpRow; colour: Colour }>;

export function renderHtml(report: ProfileReport): string {
  const colours = colourOps([...report.perNode, ...report.promptNodes]);
  const { model, prompt, decode, overhead } = report;
  const name = basename(model.path);
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dairllm profile: ${esc(name)}</title>
<style>${CSS}</style>
</head>
<body>
<h1>dairllm profile: ${esc(name)}</h1>
<p class="facts">${esc([model.arch, model.type, `${count(model.params)} params`, `${model.layers} layers`, `dim ${model.dim}`, size(model.bytes)].join(" · "))}</p>
<p class="facts">${esc([`kernels ${report.kernels}`, `${report.threads} threads`, `${report.nodes} ${report.nodes === 1 ? "node" : "nodes"}`, `wire ${report.wire ?? "none"}`].join(" · "))}</p>
<p class="speed">prompt <b>${fixed(prompt.tokensPerSecond, 1)}</b> tokens/s · decode <b>${fixed(decode.tokensPerSecond, 1)}</b> tokens/s (<b>${ms(decode.msPerToken)}</b> ms/token)</p>
<section class="bars">
${report.perNode.map((node) => bar(node, colours)).join("\n")}
</section>
${legend(colours)}
${report.perNode.map((node) => table(node, colours)).join("\n")}
<h2>The prompt: ${prompt.tokens} tokens as one batch <small>per prompt token</small></h2>
<section class="bars">
${report.promptNodes.map((node) => bar(node, colours)).join("\n")}
</section>
${report.balance ? `<h2>Balance</h2>\n<pre class="balance">${esc(balanceLines(report.balance).slice(1).join("\n"))}</pre>` : ""}
<p class="note">${esc(`Model ${model.path}. ${prompt.tokens} prompt tokens in ${fixed(prompt.seconds, 2)} s, ${decode.tokens} decoded in ${fixed(decode.seconds, 2)} s. Profiler overhead: ${fixed(overhead.nsPerTimer, 0)} ns per timer × ${fixed(overhead.timersPerToken, 0)} timers per token = ${pct(overhead.share)} % of a token.`)}</p>
</body>
</html>
`;
}

/** One colour per op id, the same on every node: each group's ops spread over its family, neighbours alternating light and dark. */
function colourOps(nodes: NodeProfile[]): Palette {
  const byGroup = new Map<OpGroup, OpRow[]>(GROUP_ORDER.map((g) => [g, []]));
  const seen = new Set<string>();
  for (const row of nodes.flatMap((n) => n.ops)) {
    if (width(row.share) === 0 || seen.has(row.op)) continue;
    seen.add(row.op);
    byGroup.get(row.group)?.push(row);
  }
  const colours: Palette = new Map();
  for (const [group, rows] of byGroup) {
    const f = FAMILIES[group];
    rows.forEach((row, i) => {
      const hue = f.hue + (rows.length > 1 ? f.spread * (i / (rows.length - 1) - 0.5) : 0);
      const light = f.light + (i % 2) * 12;
      colours.set(row.op, { row, colour: { background: `hsl(${((hue + 360) % 360).toFixed(0)} ${f.sat}% ${light}%)`, text: light < 50 ? "#fff" : "#222" } });
    });
  }
  return colours;
}

function bar(node: NodeProfile, colours: Palette): string {
  const segs = node.ops.filter((row) => width(row.share) > 0).map((row) => {
    const c = colours.get(row.op)?.colour ?? { background: "#999", text: "#fff" };
    const tip = `${row.label}: ${ms(row.msPerToken)} ms/token (${pct(row.share)} %)`;
    const label = row.share >= LABEL_MIN_SHARE ? esc(row.label) : "";
    return `<div class="seg" data-op="${esc(row.op)}" title="${esc(tip)}" style="width:${(width(row.share) * 100).toFixed(3)}%;background:${c.background};color:${c.text}">${label}</div>`;
  });
  return `<div class="row"><div class="who">${esc(node.name)}<small>${ms(node.wallMsPerToken)} ms/token</small></div><div class="bar" data-node="${esc(node.name)}">${segs.join("")}</div></div>`;
}

function legend(colours: Palette): string {
  const groups = GROUP_ORDER.map((group) => {
    const items = [...colours.values()].filter((c) => c.row.group === group);
    if (items.length === 0) return "";
    return `<div class="group"><b>${group}</b>${items.map((c) => `<span class="item"><i class="sw" style="background:${c.colour.background}"></i>${esc(c.row.label)}</span>`).join("")}</div>`;
  });
  return `<div class="legend">${groups.join("")}</div>`;
}

function table(node: NodeProfile, colours: Palette): string {
  const rows = node.ops.map((row) => {
    const sw = colours.get(row.op)?.colour.background ?? "transparent";
    const gb = row.gbPerSecond === null ? "" : fixed(row.gbPerSecond, row.gbPerSecond < 10 ? 2 : 1);
    const calls = Number.isInteger(row.callsPerToken) ? String(row.callsPerToken) : fixed(row.callsPerToken, 1);
    return `<tr${row.share > 0 ? "" : ' class="zero"'}><td><i class="sw" style="background:${sw}"></i>${esc(row.label)}</td><td>${pct(row.share)} %</td><td>${ms(row.msPerToken)}</td><td>${calls}</td><td>${gb}</td></tr>`;
  });
  return `<section class="node">
<h2>${esc(node.name)} <small>${esc(node.role)} · ${ms(node.wallMsPerToken)} ms/token</small></h2>
<p class="summary">network ${ms(node.groups.network)} ms/token vs compute ${ms(node.groups.compute)} ms/token${node.groups.io > 0 ? `, waiting for disk ${ms(node.groups.io)} ms/token` : ""}</p>
<table><thead><tr><th>op</th><th>share</th><th>ms/token</th><th>calls/token</th><th>GB/s</th></tr></thead>
<tbody>${rows.join("\n")}</tbody></table>
</section>`;
}

const ENTITIES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ENTITIES[c] ?? c);
}

/** A share as a bar width in 0..1 (NaN and out-of-range values cannot break the layout). */
function width(share: number): number {
  return Number.isFinite(share) ? Math.min(1, Math.max(0, share)) : 0;
}

function fixed(x: number, digits: number): string {
  return Number.isFinite(x) ? x.toFixed(digits) : "–";
}

const pct = (share: number) => fixed(share * 100, 1);
const ms = (x: number) => fixed(x, x < 1 ? 3 : x < 10 ? 2 : x < 100 ? 1 : 0);

function count(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(n);
}

function size(bytes: number): string {
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(2)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

const CSS = `
body { font: 14px/1.4 system-ui, sans-serif; color: #222; background: #fff; max-width: 1100px; margin: 1.5em auto; padding: 0 1em; }
h1 { font-size: 1.4em; margin: 0 0 .2em; overflow-wrap: anywhere; }
h2 { font-size: 1.1em; margin: 1.6em 0 .2em; overflow-wrap: anywhere; }
h2 small, .who small { color: #666; font-weight: normal; }
.facts { margin: 0; color: #444; overflow-wrap: anywhere; }
.speed { margin: .4em 0 1.2em; font-size: 1.1em; }
.row { display: grid; grid-template-columns: 12em 1fr; gap: .8em; align-items: center; margin: .35em 0; }
.who { overflow-wrap: anywhere; }
.who small { display: block; }
.bar { display: flex; height: 2.2em; border-radius: 3px; overflow: hidden; background: #eee; }
.seg { flex: none; height: 100%; box-shadow: inset -1px 0 0 #fff; overflow: hidden; white-space: nowrap; text-overflow: ellipsis; font-size: 12px; line-height: 2.2em; text-indent: 4px; }
.legend { margin: 1em 0; font-size: 13px; }
.legend .group { margin: .2em 0; }
.legend b { display: inline-block; width: 7.5em; font-weight: 600; }
.legend .item { display: inline-block; margin-right: 1em; }
.sw { display: inline-block; width: .9em; height: .9em; border-radius: 2px; margin-right: .35em; vertical-align: -.1em; }
.summary { margin: 0 0 .4em; color: #444; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: .15em .7em; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { font-weight: 600; border-bottom: 1px solid #ccc; }
tr.zero { color: #aaa; }
.note { margin-top: 2em; color: #666; font-size: 12px; }
`;
