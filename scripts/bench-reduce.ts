// Reduction benchmark: what one all-reduce of a partial output costs, through the root (the star:
// workers send their partials to the root, it sends back the sum: two crossings) against the workers
// linked to each other (the mesh: every node sends its partial to every other: one crossing), for 3
// and 4 nodes on 127.0.0.1, with the real frames, codec and connections of the cluster.
//
//   bun scripts/bench-reduce.ts [--nodes 3,4] [--reductions 1500] [--compute-us 300] [--dim 2048] [--rounds 3]
//
// Between two reductions each node "computes" by blocking its thread for --compute-us (Atomics.wait:
// the thread sleeps, as a node computing on its own machine leaves the others' CPUs alone), so on a
// machine with fewer cores than nodes this measures the network path, not the CPU contention of
// nodes sharing cores (which bench:cluster shows). Per reduction: wall time over the reductions minus
// the same number of bare waits, timed in the same process. The modes alternate, round by round.
import { join } from "node:path";
import { Conn, connect, connHandlers } from "../src/cluster/conn";
import { decodeActivation, MessageType, PROTOCOL_VERSION, writeActivationFrame } from "../src/cluster/protocol";
import { loadKernels } from "../src/native/index";
import { GGMLType } from "../src/native/types";

const args = process.argv.slice(2);
const arg = (name: string, def: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1]! : def;
};

if (args[0] === "--node") {
  await node(Number(args[1]), Number(args[2]), args[3] as "star" | "mesh", Number(args[4]), Number(args[5]), Number(args[6]), Number(args[7]));
  process.exit(0);
}

const nodesList = arg("--nodes", "3,4").split(",").map(Number);
const reductions = Number(arg("--reductions", "1500"));
const computeUs = Number(arg("--compute-us", "300"));
const dim = Number(arg("--dim", "2048"));
const rounds = Number(arg("--rounds", "3"));
for (const n of nodesList) if (!(n >= 3 && n <= 16)) throw new Error(`--nodes: ${n} is not in 3..16`);

console.log(`reductions of a [1, ${dim}] Q8_0 partial, ${reductions} per run, ${computeUs} µs of blocked "compute" before each, ${navigator.hardwareConcurrency} CPUs`);
console.log(`command: bun scripts/bench-reduce.ts ${args.join(" ")}`.trimEnd());
let port = 19400 + Math.floor(Math.random() * 500) * 16;
for (const n of nodesList) {
  const per: Record<string, number[]> = { star: [], mesh: [] };
  for (let r = 0; r < rounds; r++) {
    for (const mode of ["star", "mesh"] as const) {
      port += 16;
      const procs = Array.from({ length: n }, (_, i) =>
        Bun.spawn([process.execPath, join(import.meta.dir, "bench-reduce.ts"), "--node", String(i), String(n), mode, String(port), String(reductions), String(computeUs), String(dim)], { stdout: "pipe", stderr: "inherit" }),
      );
      const out = await new Response(procs[0]!.stdout).text();
      for (const p of procs) await p.exited;
      const us = Number(/overhead_us (\S+)/.exec(out)?.[1]);
      if (!Number.isFinite(us)) throw new Error(`node 0 printed no figure: ${out}`);
      per[mode]!.push(us);
    }
  }
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
  const ratios = per.star!.map((s, i) => per.mesh![i]! / s);
  console.log(`${n} nodes: through the root ${med(per.star!).toFixed(0)} µs per reduction [${per.star!.map((x) => x.toFixed(0)).join(", ")}], linked ${med(per.mesh!).toFixed(0)} µs [${per.mesh!.map((x) => x.toFixed(0)).join(", ")}]; linked / through the root, paired median ${med(ratios).toFixed(2)}`);
}

/** One node: node 0 is the root. Listens on port + index; links as the mode needs; runs the reductions. */
async function node(index: number, nodes: number, mode: "star" | "mesh", port: number, count: number, computeUs: number, dim: number): Promise<void> {
  const k = await loadKernels({ threads: 1 });
  const links: (Conn | null)[] = new Array(nodes).fill(null);
  const accepted = new Set<Conn>();
  const server = Bun.listen<{ conn: Conn }>({
    hostname: "127.0.0.1",
    port: port + index,
    socket: {
      ...connHandlers,
      open(socket) {
        const conn = new Conn(socket, `node ? (${socket.remoteAddress})`);
        socket.data = { conn };
        accepted.add(conn);
      },
    },
  });
  // who links to whom: the star, every worker to the root; the mesh, every node to the lower ones
  const targets = mode === "star" ? (index === 0 ? [] : [0]) : Array.from({ length: index }, (_, j) => j);
  const expected = mode === "star" ? (index === 0 ? nodes - 1 : 0) : nodes - 1 - index;
  await Bun.sleep(300); // every node listening
  for (const j of targets) {
    const c = await connect("127.0.0.1", port + j, `node ${j}`, 5000);
    c.send({ type: MessageType.PeerHello, version: PROTOCOL_VERSION, node: index, token: new Uint8Array(16) });
    links[j] = c;
  }
  const deadline = Date.now() + 10_000;
  let named = 0;
  while (named < expected) {
    if (Date.now() > deadline) throw new Error(`node ${index}: ${named} of ${expected} links`);
    for (const c of accepted) {
      const r = await c.next(10_000, "the hello");
      if (r.message.type !== MessageType.PeerHello) throw new Error("expected PeerHello");
      links[r.message.node] = c;
      accepted.delete(c);
      named++;
    }
    if (named < expected) await Bun.sleep(5);
  }
  const x = new Float32Array(dim).map((_, i) => Math.sin(i + index)), acc = new Float32Array(dim), tmp = new Float32Array(dim);
  const wait = new Int32Array(new SharedArrayBuffer(4));
  const compute = () => Atomics.wait(wait, 0, 0, computeUs / 1000);
  const send = (c: Conn, seq: number) => {
    writeActivationFrame(c.writer, k, MessageType.Partial, { seq: c.nextSeq(), layer: seq % 1000 }, x, [1, dim], GGMLType.Q8_0);
    c.flushWriter();
  };
  const receive = async (c: Conn) => {
    const r = await c.next(10_000, "a partial");
    if (r.message.type !== MessageType.Partial) throw new Error("expected Partial");
    decodeActivation(k, r.message.tensor, tmp);
    c.recycle(r);
    k.add(acc, acc, tmp, dim);
  };
  const peers = links.map((l, j) => (j === index ? null : l));
  // warm-up, then the timed run; node 0 also times bare waits for the baseline
  const run = async (n: number) => {
    for (let s = 0; s < n; s++) {
      compute();
      acc.set(x);
      if (mode === "mesh") {
        for (const c of peers) if (c) send(c, s);
        for (const c of peers) if (c) await receive(c);
      } else if (index === 0) {
        for (const c of peers) if (c) await receive(c);
        for (const c of peers) if (c) send(c, s);
      } else {
        send(links[0]!, s);
        await receive(links[0]!);
      }
    }
  };
  await run(100);
  const t0 = performance.now();
  await run(count);
  const wall = performance.now() - t0;
  if (index === 0) {
    const b0 = performance.now();
    for (let s = 0; s < count; s++) compute();
    const bare = performance.now() - b0;
    console.log(`overhead_us ${((1000 * (wall - bare)) / count).toFixed(1)}`);
  }
  await Bun.sleep(200); // the others finish their last receive
  for (const l of links) l?.fail(new Error("done"));
  server.stop(true);
}
