// The profile report: what `dairllm-worker profile --json` prints and what `--html` draws. The shape
// is stable (schema "dairllm.profile/1"; test/profile.test.ts pins it): add fields, never rename.

/** Where an operation's time goes, for the stacked bars and the network-vs-compute summary. */
export type OpGroup = "compute" | "compression" | "network" | "io" | "typescript" | "unaccounted";
// "io": waiting for weights read from disk (layer streaming, --max-memory)

export interface OpRow {
  /** stable id, e.g. "attn_q", "ffn_down", "network_wait", "typescript", "unaccounted" */
  op: string;
  /** human label, e.g. "attention projection q" */
  label: string;
  group: OpGroup;
  /** share of the node's wall time per token, 0..1 (the rows of a node sum to 1) */
  share: number;
  msPerToken: number;
  callsPerToken: number;
  /** weight bytes read per second for ops that read weights, else null */
  gbPerSecond: number | null;
}

export interface NodeProfile {
  /** "root", or "worker 10.0.0.2:9998" */
  name: string;
  role: "root" | "worker";
  /** the node's measured wall time per decoded token (per prompt token in promptNodes) */
  wallMsPerToken: number;
  /** rows in a fixed order, zero rows included; the last row is "unaccounted" */
  ops: OpRow[];
  /** ms per token by group (sums to wallMsPerToken) */
  groups: Record<OpGroup, number>;
}

export interface ProfileReport {
  schema: "dairllm.profile/1";
  model: { path: string; arch: string; type: string; layers: number; dim: number; params: number; bytes: number };
  kernels: string;
  threads: number;
  nodes: number;
  wire: string | null;
  prompt: { tokens: number; seconds: number; tokensPerSecond: number };
  decode: { tokens: number; seconds: number; tokensPerSecond: number; msPerToken: number };
  /** the profiler's own cost: ns per timed call, calls per token, and the share of a token it adds */
  overhead: { nsPerTimer: number; timersPerToken: number; share: number };
  perNode: NodeProfile[];
  /** the prompt, evaluated as one batch before the decoded tokens: the same rows per node, per prompt
   *  token (wallMsPerToken = the node's prompt time / prompt tokens) */
  promptNodes: NodeProfile[];
  /** a cluster's balance (null on one node): how fast each node read its weights, and the --split
   *  weights that would make their weight reading take equally long */
  balance: BalanceReport | null;
}

export interface BalanceReport {
  /** per node, in perNode's order: MB of weights its matmuls read per token, in how many ms, and
   *  the speed (MB/s) */
  nodes: { name: string; weightMB: number; weightMs: number; mbPerSecond: number }[];
  /** the slowest node's weight time over the fastest's (1 = balanced) */
  spread: number;
  /** --split weights, the root first: the split predicted fastest from each node's measured speed
   *  per phase (attention projections, feed-forward, logits), or in proportion to the nodes' overall
   *  speeds when the model's shape was not given */
  suggestedSplit: number[];
  /** predicted matmul ms per token (per phase, the slowest node) of the split that ran and of the
   *  suggested one; null when not predicted */
  predictedMs: { current: number; suggested: number } | null;
}
