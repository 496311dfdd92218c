// The README's first command: two local workers and a root completing Python code with the demo model
// trained for this project (test/fixtures/demo). Only activations cross the (loopback) network.
//   bun scripts/demo.ts ["prompt"]
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..");
const MAIN = join(ROOT, "src", "main.ts");
const MODEL = join(ROOT, "test", "fixtures", "demo", "dairllm-demo-13m-q4_0.gguf");
const prompt = process.argv[2] ?? "class Stack:\n    def __init__(self):";

async function worker() {
  const proc = Bun.spawn([process.execPath, MAIN, "--port", "0", "--host", "127.0.0.1", "--model", MODEL, "--threads", "1"], { stdout: "ignore", stderr: "pipe" });
  let text = "";
  const reader = proc.stderr.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`a worker did not start:\n${text}`);
    text += new TextDecoder().decode(value);
    const m = /listening on ([\d.]+:\d+)/.exec(text);
    if (m) return { proc, addr: m[1]! };
  }
}

const workers = await Promise.all([worker(), worker()]);
console.error(`two workers listening on ${workers.map((w) => w.addr).join(" and ")}; the root computes the third share`);
try {
  process.stdout.write(prompt);
  const root = Bun.spawn([process.execPath, MAIN, "--root", "--model", MODEL, "--prompt", prompt, "-n", "96", "--temp", "0.6", "--seed", "3", "--workers", workers.map((w) => w.addr).join(",")], { stdout: "inherit", stderr: "inherit" });
  process.exitCode = await root.exited;
} finally {
  for (const w of workers) w.proc.kill();
}
