// A small strict command-line parser: every flag is declared with its type; an unknown flag, a
// missing value or a bad number is a UsageError (exit code 2) that names the flag.

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

export type FlagType = "string" | "int" | "float" | "bool" | "size";

export interface FlagSpec {
  name: string; //   long name without dashes
  short?: string; // one letter
  type: FlagType;
  value?: string; // placeholder in help, e.g. "N"
  help: string;
  min?: number;
  max?: number;
}

export type ParsedFlags = Record<string, string | number | boolean | undefined>;

/** Parses argv into flags and positional arguments. `--flag=value` and `--flag value` both work. */
export function parseArgs(argv: readonly string[], specs: readonly FlagSpec[]): { flags: ParsedFlags; positional: string[] } {
  const byName = new Map(specs.map((s) => [s.name, s]));
  const byShort = new Map(specs.filter((s) => s.short).map((s) => [s.short!, s]));
  const flags: ParsedFlags = {};
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith("-") || arg === "-" || /^-\d/.test(arg)) {
      positional.push(arg);
      continue;
    }
    let name: string;
    let inline: string | undefined;
    let spec: FlagSpec | undefined;
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
      inline = eq >= 0 ? arg.slice(eq + 1) : undefined;
      spec = byName.get(name);
    } else {
      name = arg.slice(1);
      spec = byShort.get(name);
    }
    if (!spec) {
      const close = specs.find((s) => editDistance(s.name, name) <= 2);
      throw new UsageError(`unknown option ${arg}${close ? ` (did you mean --${close.name}?)` : ""}`);
    }
    const label = `--${spec.name}`;
    if (spec.type === "bool") {
      if (inline !== undefined) throw new UsageError(`${label} takes no value`);
      flags[spec.name] = true;
      continue;
    }
    const raw = inline ?? argv[++i];
    if (raw === undefined) throw new UsageError(`${label} needs a value${spec.value ? ` (${spec.value})` : ""}`);
    flags[spec.name] = convert(label, spec, raw);
  }
  return { flags, positional };
}

function convert(label: string, spec: FlagSpec, raw: string): string | number {
  if (spec.type === "string") return raw;
  let v: number;
  if (spec.type === "size") {
    const m = /^(\d+(?:\.\d+)?)([kKmMgGtT]?)i?[bB]?$/.exec(raw.trim());
    if (!m) throw new UsageError(`${label}: "${raw}" is not a size (e.g. 512M, 2G)`);
    const unit = { "": 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2]!.toLowerCase()]!;
    v = Math.round(Number(m[1]) * unit);
  } else {
    v = raw.trim() === "" ? NaN : Number(raw);
    if (!Number.isFinite(v)) throw new UsageError(`${label}: "${raw}" is not a number`);
    if (spec.type === "int" && !Number.isInteger(v)) throw new UsageError(`${label}: "${raw}" is not a whole number`);
  }
  if (spec.min !== undefined && v < spec.min) throw new UsageError(`${label}: ${raw} is below the minimum ${spec.min}`);
  if (spec.max !== undefined && v > spec.max) throw new UsageError(`${label}: ${raw} is above the maximum ${spec.max}`);
  return v;
}

export function formatHelp(specs: readonly FlagSpec[]): string {
  const rows = specs.map((s) => {
    const left = `${s.short ? `-${s.short}, ` : "    "}--${s.name}${s.type === "bool" ? "" : ` ${s.value ?? s.type.toUpperCase()}`}`;
    return [left, s.help] as const;
  });
  const w = Math.max(...rows.map(([l]) => l.length)) + 2;
  return rows.map(([l, h]) => `  ${l.padEnd(w)}${h}`).join("\n");
}

/** Levenshtein distance, for "did you mean" hints. */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}
