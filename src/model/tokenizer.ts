// Tokenizer: llama.cpp's SPM ("llama") and byte-level BPE ("gpt2") tokenizers, read from GGUF metadata.
//
// The goal is token-for-token agreement with llama_tokenize / llama_detokenize of llama.cpp (c392e509):
//  - special-token partitioning first (longest token text first; CONTROL/UNKNOWN tokens only with
//    parseSpecial, USER_DEFINED tokens always), then per raw-text fragment:
//  - SPM: spaces escaped to U+2581, a space prefix before the first fragment and after every special
//    token, bigram merging by best score (ties: leftmost), unknown pieces spelled as <0xXX> byte tokens;
//  - BPE: the pre-tokenizer regexes of tokenizer.ggml.pre (each regex splits every fragment of the
//    previous one, text between matches is kept as its own fragment), GPT-2 byte-to-unicode mapping,
//    merges by rank (ties: leftmost).
// A GGUF is untrusted: inconsistent tokenizer metadata is refused with an Error naming the key.
import type { GGUFArray, GGUFFile } from "./gguf.ts";

/** llama.cpp token attributes (llama_token_attr). */
export const TokenAttr = {
  UNDEFINED: 0,
  UNKNOWN: 1 << 0,
  UNUSED: 1 << 1,
  NORMAL: 1 << 2,
  CONTROL: 1 << 3,
  USER_DEFINED: 1 << 4,
  BYTE: 1 << 5,
  NORMALIZED: 1 << 6,
  LSTRIP: 1 << 7,
  RSTRIP: 1 << 8,
  SINGLE_WORD: 1 << 9,
} as const;

export class TokenizerError extends Error {
  constructor(path: string, message: string) {
    super(`${path}: ${message}`);
    this.name = "TokenizerError";
  }
}

export interface EncodeOptions {
  /** add BOS/EOS as the vocabulary asks (tokenizer.ggml.add_bos_token / add_eos_token) */
  addSpecial: boolean;
  /** match CONTROL and UNKNOWN token texts in the input (USER_DEFINED ones are always matched) */
  parseSpecial: boolean;
}

export interface DecodeOptions {
  /** render CONTROL/UNKNOWN tokens as their text (llama.cpp's unparse_special); default false = empty */
  special?: boolean;
  /** drop a leading BOS and a trailing EOS when the vocab adds them (llama.cpp's remove_special) */
  removeSpecial?: boolean;
  /** apply llama.cpp's clean_spaces passes (" ?" -> "?", " 's" -> "'s", ...); default: the vocab's setting */
  cleanSpaces?: boolean;
}

export interface StreamDecoderOptions {
  /** render CONTROL/UNKNOWN tokens as their text; default false */
  special?: boolean;
  /**
   * Treat the first pushed token as the start of a llama_detokenize call: with add_space_prefix
   * one leading space of its piece is dropped (a leading BOS consumes this). Default false, which is
   * what llama.cpp prints while generating (common_token_to_piece, no stripping).
   */
  atStart?: boolean;
}

export interface StreamDecoder {
  /** text completed by this token (never a partial UTF-8 character) */
  push(id: number): string;
  /** whatever is still buffered (an incomplete UTF-8 sequence becomes U+FFFD) */
  flush(): string;
}

type VocabType = "spm" | "bpe";

// ---------------------------------------------------------------------------------------------
// Unicode helpers

/** llama.cpp's whitespace set (unicode.cpp): JS \s differs (it has U+FEFF and lacks U+0085). */
const WS = "\\t-\\r \\x85\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000";
const S = `[${WS}]`;
const NS = `[^${WS}]`;
/** non-ASCII whitespace, replaced by \x0B before llama.cpp's std::wregex fallback regexes */
const NON_ASCII_WS = /[\x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]/gu;

/** GPT-2 byte <-> unicode tables */
const BYTE_TO_CHAR: string[] = new Array(256);
const CHAR_TO_BYTE = new Map<number, number>();
{
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    const cp = printable ? b : 256 + n++;
    BYTE_TO_CHAR[b] = String.fromCodePoint(cp);
    CHAR_TO_BYTE.set(cp, b);
  }
}

const utf8Encoder = new TextEncoder();

function utf8(s: string): Uint8Array {
  return utf8Encoder.encode(s);
}

function concatBytes(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** C isspace in the "C" locale */
function isCSpace(c: number): boolean {
  return c === 0x20 || (c >= 0x09 && c <= 0x0d);
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers (llm_tokenizer_bpe's regex_exprs per pre-type)

interface PreRegex {
  re: RegExp;
  /** llama.cpp runs this one through std::wregex on text whose non-ASCII whitespace became \x0B */
  wide: boolean;
}

const RE_GPT2 = `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^${WS}\\p{L}\\p{N}]+|${S}+(?!${NS})`;
const RE_LLAMA3 =
  `(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}` +
  `| ?[^${WS}\\p{L}\\p{N}]+[\\r\\n]*|${S}*[\\r\\n]+|${S}+(?!${NS})|${S}+`;
const RE_QWEN2 =
  `(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}` +
  `| ?[^${WS}\\p{L}\\p{N}]+[\\r\\n]*|${S}*[\\r\\n]+|${S}+(?!${NS})|${S}+`;
// DeepSeek LLM's cased-letter class (Lu/Ll/Lt ranges of its tokenizer.json), written as escapes
const DEEPSEEK_LETTERS =
  "A-Za-z\\xB5\\xC0-\\xD6\\xD8-\\xF6\\xF8-\\u01BA\\u01BC-\\u01BF\\u01C4-\\u0293\\u0295-\\u02AF\\u0370-\\u0373" +
  "\\u0376\\u0377\\u037B-\\u037D\\u037F\\u0386\\u0388-\\u038A\\u038C\\u038E-\\u03A1\\u03A3-\\u03F5\\u03F7-\\u0481" +
  "\\u048A-\\u052F\\u0531-\\u0556\\u10A0-\\u10C5\\u13A0-\\u13F5\\u13F8-\\u13FD\\u1C90-\\u1CBA\\u1CBD-\\u1CBF" +
  "\\u1D00-\\u1D2B\\u1D6B-\\u1D77\\u1D79-\\u1D9A\\u1E00-\\u1F15\\u1F18-\\u1F1D\\u1F20-\\u1F45\\u1F48-\\u1F4D" +
  "\\u1F50-\\u1F57\\u1F59\\u1F5B\\u1F5D\\u1F5F-\\u1F7D\\u1F80-\\u1FB4\\u1FB6-\\u1FBC\\u1FBE\\u1FC2-\\u1FC4" +
  "\\u1FC6-\\u1FCC\\u1FD0-\\u1FD3\\u1FD6-\\u1FDB\\u1FE0-\\u1FEC\\u1FF2-\\u1FF4\\u1FF6-\\u1FFC\\u2102\\u2107" +
  "\\u210A-\\u2113\\u2115\\u2119-\\u211D\\u2124\\u2126\\u2128\\u212A-\\u212D\\u212F-\\u2134\\u2139\\u213C-\\u213F" +
  "\\u2145-\\u2149\\u214E\\u2183\\u2184\\u2C00-\\u2C7B\\u2C7E-\\u2CE4\\u2CEB-\\u2CEE\\u2CF2\\u2CF3\\uA640-\\uA66D" +
  "\\uA680-\\uA69B\\uA722-\\uA76F\\uA771-\\uA787\\uA78B-\\uA78E\\uAB70-\\uABBF\\uFB00-\\uFB06\\uFB13-\\uFB17" +
  "\\uFF21-\\uFF3A\\uFF41-\\uFF5A\\u{10400}-\\u{1044F}\\u{104B0}-\\u{104D3}\\u{104D8}-\\u{104FB}" +
  "\\u{10C80}-\\u{10CB2}\\u{10CC0}-\\u{10CF2}\\u{118A0}-\\u{118DF}\\u{1E900}-\\u{1E943}";
const CJK_RUN = "[\\u4E00-\\u9FA5\\u0800-\\u4E00\\uAC00-\\uD7FF]+";
// \s inside a std::wregex: ASCII whitespace (non-ASCII whitespace was turned into \x0B)
const WS_WIDE = "[\\t-\\r ]";

function pre(source: string, wide = false): PreRegex {
  return { re: new RegExp(source, "gu"), wide };
}

const PRE_TOKENIZERS: Record<string, () => PreRegex[]> = {
  default: () => [pre("[\\p{P}$+<=>^~|]+"), pre(RE_GPT2), pre("\\p{N}+"), pre("[0-9][0-9][0-9]", true)],
  llama3: () => [pre(RE_LLAMA3)],
  qwen2: () => [pre(RE_QWEN2)],
  gpt2: () => [pre(RE_GPT2)],
  falcon: () => [pre("[\\p{P}$+<=>^~|`]+"), pre(RE_GPT2), pre("[0-9][0-9][0-9]", true)],
  starcoder: () => [pre("\\p{N}"), pre(RE_GPT2)],
  "deepseek-llm": () => [
    pre("[\\r\\n]", true),
    pre(`${WS_WIDE}?[${DEEPSEEK_LETTERS}]+`, true),
    pre(`${WS_WIDE}?[!-/:-~\\uFF01-\\uFF0F\\uFF1A-\\uFF5E\\u2018-\\u201F\\u3000-\\u3002]+`, true),
    pre(`${WS_WIDE}+$`, true),
    pre(CJK_RUN, true),
    pre("\\p{N}+"),
  ],
  "deepseek-coder": () => [pre("[\\r\\n]", true), pre(`${S}?\\p{L}+`), pre(`${S}?\\p{P}+`), pre(CJK_RUN, true), pre("\\p{N}")],
  bloom: () => [pre(" ?[^(\\s|.,!?…。，、।۔،)]+".replace("\\s", WS), false)],
  viking: () => [pre(" ?[^(\\s|.,!?…。，、।۔،)]+".replace("\\s", WS), false), pre("\\p{N}")],
};

interface PreConfig {
  regexes: string;
  ignoreMerges?: boolean;
  addBos?: boolean;
  cleanSpaces?: boolean;
}

/** tokenizer.ggml.pre -> llama.cpp's pre-type settings (llama_vocab::impl::load, c392e509) */
function preConfig(name: string): PreConfig | undefined {
  switch (name) {
    case "":
    case "default":
      return { regexes: "default" };
    case "llama3":
    case "llama-v3":
    case "llama-bpe":
    case "falcon3":
      return { regexes: "llama3", ignoreMerges: true, addBos: true };
    case "dbrx":
    case "smaug-bpe":
      return { regexes: "llama3" };
    case "deepseek-llm":
      return { regexes: "deepseek-llm", cleanSpaces: false };
    case "deepseek-coder":
      return { regexes: "deepseek-coder", cleanSpaces: false };
    case "falcon":
      return { regexes: "falcon" };
    case "mpt":
    case "olmo":
    case "jais":
    case "gpt-2":
    case "phi-2":
    case "jina-es":
    case "jina-de":
    case "gigachat":
    case "jina-v1-en":
    case "jina-v2-es":
    case "jina-v2-de":
    case "jina-v2-code":
    case "roberta-bpe":
      return { regexes: "gpt2" };
    case "starcoder":
    case "refact":
    case "codeshell":
    case "exaone":
    case "minerva-7b":
      return { regexes: "starcoder" };
    case "command-r":
    case "smollm":
      return { regexes: "starcoder", cleanSpaces: false };
    case "qwen2":
    case "deepseek-r1-qwen":
      return { regexes: "qwen2", cleanSpaces: false };
    case "megrez":
    case "stablelm2":
      return { regexes: "qwen2" };
    case "chatglm-bpe":
      return { regexes: "llama3" };
    case "poro-chat":
      return { regexes: "bloom", cleanSpaces: false };
    case "bloom":
    case "gpt3-finnish":
      return { regexes: "bloom" };
    case "viking":
      return { regexes: "viking", cleanSpaces: false };
    default:
      return undefined;
  }
}

/**
 * unicode_regex_split: every regex splits every fragment left by the previous one; matches and the
 * text between them both become fragments. Each fragment is searched on its own (lookarounds and $
 * see the fragment's ends).
 */
function regexSplit(text: string, regexes: PreRegex[]): string[] {
  let frags = [text];
  let wideText: string | undefined; // same UTF-16 offsets (all replaced characters are BMP)
  let offsets = [0];
  for (const { re, wide } of regexes) {
    const nextFrags: string[] = [];
    const nextOffsets: number[] = [];
    if (wide && wideText === undefined) wideText = text.replace(NON_ASCII_WS, "\x0B");
    for (let f = 0; f < frags.length; f++) {
      const frag = frags[f]!;
      const base = offsets[f]!;
      const subject = wide ? wideText!.slice(base, base + frag.length) : frag;
      let last = 0;
      re.lastIndex = 0;
      for (let m = re.exec(subject); m !== null; m = re.exec(subject)) {
        const len = m[0].length;
        if (len === 0) {
          re.lastIndex++;
          continue;
        }
        if (m.index > last) {
          nextFrags.push(frag.slice(last, m.index));
          nextOffsets.push(base + last);
        }
        nextFrags.push(frag.slice(m.index, m.index + len));
        nextOffsets.push(base + m.index);
        last = m.index + len;
      }
      if (last < frag.length) {
        nextFrags.push(frag.slice(last));
        nextOffsets.push(base + last);
      }
    }
    frags = nextFrags;
    offsets = nextOffsets;
  }
  return frags;
}

// ---------------------------------------------------------------------------------------------
// A binary heap over parallel number arrays (merge candidates)

class CandidateHeap {
  // key1 is minimized, then left (position) is minimized
  private k: number[] = [];
  private l: number[] = [];
  private r: number[] = [];
  private nl: number[] = [];
  private nr: number[] = [];
  get size(): number {
    return this.k.length;
  }
  private less(i: number, j: number): boolean {
    return this.k[i]! < this.k[j]! || (this.k[i] === this.k[j] && this.l[i]! < this.l[j]!);
  }
  private swap(i: number, j: number): void {
    for (const a of [this.k, this.l, this.r, this.nl, this.nr]) {
      const t = a[i]!;
      a[i] = a[j]!;
      a[j] = t;
    }
  }
  push(key: number, left: number, right: number, lenL: number, lenR: number): void {
    let i = this.k.length;
    this.k.push(key);
    this.l.push(left);
    this.r.push(right);
    this.nl.push(lenL);
    this.nr.push(lenR);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }
  /** removes the top; returns [left, right, lenL, lenR] */
  pop(out: number[]): void {
    out[0] = this.l[0]!;
    out[1] = this.r[0]!;
    out[2] = this.nl[0]!;
    out[3] = this.nr[0]!;
    const last = this.k.length - 1;
    if (last > 0) this.swap(0, last);
    this.k.pop();
    this.l.pop();
    this.r.pop();
    this.nl.pop();
    this.nr.pop();
    const n = this.k.length;
    let i = 0;
    for (;;) {
      const a = 2 * i + 1;
      const b = a + 1;
      let m = i;
      if (a < n && this.less(a, m)) m = a;
      if (b < n && this.less(b, m)) m = b;
      if (m === i) break;
      this.swap(i, m);
      i = m;
    }
  }
}

/**
 * Symbols of a word as a doubly linked list over its UTF-16 string; `len[i]` is 0 once merged away.
 * Splits on code points (llama.cpp splits on UTF-8 characters: the same boundaries).
 */
function splitSymbols(word: string): { start: Int32Array; len: Int32Array; prev: Int32Array; next: Int32Array } {
  const n0 = word.length;
  const start = new Int32Array(n0);
  const len = new Int32Array(n0);
  let n = 0;
  for (let i = 0; i < n0; ) {
    const c = word.charCodeAt(i);
    const w = c >= 0xd800 && c <= 0xdbff && i + 1 < n0 && (word.charCodeAt(i + 1) & 0xfc00) === 0xdc00 ? 2 : 1;
    start[n] = i;
    len[n] = w;
    n++;
    i += w;
  }
  const prev = new Int32Array(n);
  const next = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  return { start: start.subarray(0, n), len: len.subarray(0, n), prev, next };
}

// ---------------------------------------------------------------------------------------------

/**
 * Token text -> id, an open-addressing table looked up by a range of a string (no substring is
 * made: JS Map lookups of fresh substrings cost ~0.5 us each, too slow for 280k merges).
 */
class TextTable {
  private readonly slots: Int32Array; // id + 1, 0 = empty
  private readonly mask: number;
  duplicates = 0;
  constructor(private readonly texts: readonly string[]) {
    let size = 1024;
    while (size < texts.length * 2) size *= 2;
    this.slots = new Int32Array(size);
    this.mask = size - 1;
    for (let id = 0; id < texts.length; id++) this.insert(id);
  }
  private static hash(s: string, a0: number, a1: number, b0: number, b1: number): number {
    let h = 0x811c9dc5;
    for (let i = a0; i < a1; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
    for (let i = b0; i < b1; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
    return (h ^ (h >>> 15)) >>> 0;
  }
  private insert(id: number): void {
    const t = this.texts[id]!;
    let i = TextTable.hash(t, 0, t.length, 0, 0) & this.mask;
    for (;;) {
      const v = this.slots[i]!;
      if (v === 0) {
        this.slots[i] = id + 1;
        return;
      }
      if (this.texts[v - 1] === t) {
        this.slots[i] = id + 1; // the last id wins, as llama.cpp's token_to_id map
        this.duplicates++;
        return;
      }
      i = (i + 1) & this.mask;
    }
  }
  /** id of the text s[a0, a1) + s[b0, b1), or -1 */
  find2(s: string, a0: number, a1: number, b0: number, b1: number): number {
    const n = a1 - a0 + (b1 - b0);
    let i = TextTable.hash(s, a0, a1, b0, b1) & this.mask;
    for (;;) {
      const v = this.slots[i]!;
      if (v === 0) return -1;
      const t = this.texts[v - 1]!;
      if (t.length === n) {
        let k = 0;
        let j = a0;
        for (; j < a1; j++, k++) if (t.charCodeAt(k) !== s.charCodeAt(j)) break;
        if (j === a1) {
          let j2 = b0;
          for (; j2 < b1; j2++, k++) if (t.charCodeAt(k) !== s.charCodeAt(j2)) break;
          if (j2 === b1) return v - 1;
        }
      }
      i = (i + 1) & this.mask;
    }
  }
  /** id of s[start, start + len), or -1 */
  find(s: string, start = 0, len = s.length - start): number {
    return this.find2(s, start, start + len, 0, 0);
  }
}

/** merge (left id, right id) -> rank and merged id; the first rank of a pair wins */
class MergeTable {
  private readonly left: Int32Array;
  private readonly right: Int32Array;
  readonly rank: Int32Array;
  readonly merged: Int32Array;
  private readonly mask: number;
  constructor(capacity: number) {
    let size = 1024;
    while (size < capacity * 2) size *= 2;
    this.left = new Int32Array(size).fill(-1);
    this.right = new Int32Array(size);
    this.rank = new Int32Array(size);
    this.merged = new Int32Array(size);
    this.mask = size - 1;
  }
  private static hash(l: number, r: number): number {
    const h = Math.imul(l, 0x9e3779b1) ^ Math.imul(r + 0x7f4a7c15, 0x85ebca77);
    return (h ^ (h >>> 16)) >>> 0;
  }
  add(l: number, r: number, rank: number, merged: number): void {
    let i = MergeTable.hash(l, r) & this.mask;
    for (;;) {
      if (this.left[i] === -1) {
        this.left[i] = l;
        this.right[i] = r;
        this.rank[i] = rank;
        this.merged[i] = merged;
        return;
      }
      if (this.left[i] === l && this.right[i] === r) return;
      i = (i + 1) & this.mask;
    }
  }
  /** slot index of the pair, or -1 */
  find(l: number, r: number): number {
    let i = MergeTable.hash(l, r) & this.mask;
    for (;;) {
      const v = this.left[i]!;
      if (v === -1) return -1;
      if (v === l && this.right[i] === r) return i;
      i = (i + 1) & this.mask;
    }
  }
}

interface Fragment {
  /** token id, or -1 for raw text [start, start + len) of the input */
  id: number;
  start: number;
  len: number;
}

const EOT_TEXTS = ["<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>", "<｜end▁of▁sentence｜>"];
const EOG_TEXTS = ["<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>"];
const FIM_TEXTS: Record<string, string[]> = {
  pre: ["<|fim_prefix|>", "<fim-prefix>", "<｜fim▁begin｜>", "<PRE>"],
  suf: ["<|fim_suffix|>", "<fim-suffix>", "<｜fim▁hole｜>", "<SUF>"],
  mid: ["<|fim_middle|>", "<fim-middle>", "<｜fim▁end｜>", "<MID>"],
  pad: ["<|fim_pad|>", "<fim-pad>", "<PAD>"],
  rep: ["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>"],
  sep: ["<|file_sep|>"],
};

export class Tokenizer {
  readonly type: VocabType;
  /** tokenizer.ggml.pre as given ("" when the key is missing) */
  readonly pre: string;
  readonly addBos: boolean;
  readonly addEos: boolean;
  readonly addSpacePrefix: boolean;
  readonly cleanSpaces: boolean;
  readonly ignoreMerges: boolean;
  /** token ids, -1 when the vocabulary has none */
  readonly bos: number;
  readonly eos: number;
  readonly eot: number;
  readonly eom: number;
  readonly unk: number;
  readonly pad: number;
  readonly eogIds: ReadonlySet<number>;
  /** messages about tolerated oddities (like llama.cpp's load-time warnings) */
  readonly warnings: string[] = [];

  private readonly texts: string[];
  private readonly scores: Float32Array;
  private readonly attrs: Uint16Array;
  private readonly table: TextTable;
  private merges: MergeTable | undefined;
  private readonly specialTokens: number[];
  private readonly preRegexes: PreRegex[] = [];
  private readonly pieces: (Uint8Array | undefined)[];
  private readonly byteTokens = new Int32Array(256).fill(-2); // SPM byte -> token cache (-2 = not looked up)
  private readonly wordCache = new Map<string, number[]>();

  private constructor(g: GGUFFile) {
    const path = g.path;
    const fail = (msg: string): never => {
      throw new TokenizerError(path, msg);
    };
    const model = g.get("tokenizer.ggml.model", "string", "");
    if (model === "") fail("metadata tokenizer.ggml.model is missing (no tokenizer in this file)");
    if (model === "llama") this.type = "spm";
    else if (model === "gpt2") this.type = "bpe";
    else throw new TokenizerError(path, `tokenizer.ggml.model "${model}" is not supported (supported: "llama" = SPM, "gpt2" = BPE)`);

    // ---- token list, scores, types
    const tokArr = g.get("tokenizer.ggml.tokens", "array");
    if (tokArr.itemType !== 8) fail(`tokenizer.ggml.tokens is not an array of strings`);
    const n = tokArr.length;
    if (n === 0) fail("tokenizer.ggml.tokens is empty");
    if (n > 0x7fffffff) fail(`tokenizer.ggml.tokens has ${n} entries`);
    const rawTexts = tokArr.values as string[];
    this.texts = new Array(n);
    for (let i = 0; i < n; i++) {
      const t = rawTexts[i]!;
      this.texts[i] = t.length === 0 ? `[EMPTY_${i}]` : t; // as llama.cpp
    }
    this.scores = new Float32Array(n);
    if (g.has("tokenizer.ggml.scores")) {
      const a = g.get("tokenizer.ggml.scores", "array");
      if (a.itemType !== 6 && a.itemType !== 12) fail("tokenizer.ggml.scores is not an array of floats");
      if (a.length !== n) fail(`tokenizer.ggml.scores has ${a.length} entries but tokenizer.ggml.tokens has ${n}`);
      this.scores.set(a.values as ArrayLike<number>);
    }
    this.attrs = new Uint16Array(n).fill(TokenAttr.NORMAL);
    if (g.has("tokenizer.ggml.token_type")) {
      const a = g.get("tokenizer.ggml.token_type", "array");
      if (![0, 1, 2, 3, 4, 5].includes(a.itemType)) fail("tokenizer.ggml.token_type is not an array of integers");
      if (a.length !== n) fail(`tokenizer.ggml.token_type has ${a.length} entries but tokenizer.ggml.tokens has ${n}`);
      const v = a.values as ArrayLike<number>;
      for (let i = 0; i < n; i++) {
        switch (v[i]) {
          case 1: this.attrs[i] = TokenAttr.NORMAL; break;
          case 2: this.attrs[i] = TokenAttr.UNKNOWN; break;
          case 3: this.attrs[i] = TokenAttr.CONTROL; break;
          case 4: this.attrs[i] = TokenAttr.USER_DEFINED; break;
          case 5: this.attrs[i] = TokenAttr.UNUSED; break;
          case 6: this.attrs[i] = TokenAttr.BYTE; break;
          default: this.attrs[i] = TokenAttr.UNDEFINED;
        }
      }
    }
    // duplicates: llama.cpp's map keeps the last id for a text
    this.table = new TextTable(this.texts);
    if (this.table.duplicates) this.warnings.push(`tokenizer.ggml.tokens: ${this.table.duplicates} duplicate token texts (the last id wins)`);
    this.pieces = new Array(n);

    // ---- type-specific settings and defaults
    this.pre = g.get("tokenizer.ggml.pre", "string", "");
    let addBos = false;
    let addEos = false;
    let addSpacePrefix = false;
    let cleanSpaces = false;
    let ignoreMerges = false;
    let bos: number;
    let eos: number;
    let unk: number;
    if (this.type === "spm") {
      bos = 1;
      eos = 2;
      unk = 0;
      addBos = true;
      addSpacePrefix = true;
    } else {
      bos = 11;
      eos = 11;
      unk = -1;
      const cfg = preConfig(this.pre);
      if (!cfg) throw new TokenizerError(path, `tokenizer.ggml.pre "${this.pre}" is not a known pre-tokenizer`);
      cleanSpaces = cfg.cleanSpaces ?? true;
      ignoreMerges = cfg.ignoreMerges ?? false;
      addBos = cfg.addBos ?? false;
      this.preRegexes = PRE_TOKENIZERS[cfg.regexes]!();
      if (this.pre === "chatglm-bpe") bos = -1;
      this.loadMerges(g, fail);
    }
    addSpacePrefix = g.get("tokenizer.ggml.add_space_prefix", "boolean", addSpacePrefix);

    // special token ids: bad BOS/EOS/UNK/EOT/EOM ids are refused, others are ignored (llama.cpp warns)
    const id = (key: string, def: number, strict: boolean): number => {
      const full = `tokenizer.ggml.${key}`;
      if (!g.has(full)) return def;
      const v = g.metadata.get(full);
      if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v >= n) {
        const msg = `metadata ${full} = ${typeof v === "object" ? "an array" : String(v)} is not a token id (the vocabulary has ${n} tokens)`;
        if (strict) fail(msg);
        this.warnings.push(`${msg}; ignored`);
        return def;
      }
      return v;
    };
    this.bos = id("bos_token_id", bos, true);
    this.eos = id("eos_token_id", eos, true);
    this.unk = id("unknown_token_id", unk, true);
    let eot = id("eot_token_id", -1, true);
    let eom = id("eom_token_id", -1, true);
    this.pad = id("padding_token_id", -1, false);
    id("seperator_token_id", -1, false);
    id("mask_token_id", -1, false);
    const fim: Record<string, number> = {
      pre: id("fim_pre_token_id", id("prefix_token_id", -1, false), false),
      suf: id("fim_suf_token_id", id("suffix_token_id", -1, false), false),
      mid: id("fim_mid_token_id", id("middle_token_id", -1, false), false),
      pad: id("fim_pad_token_id", -1, false),
      rep: id("fim_rep_token_id", -1, false),
      sep: id("fim_sep_token_id", -1, false),
    };
    // llama.cpp defaults that point past a small vocabulary are treated as absent
    if (this.bos >= n) this.bos = -1;
    if (this.eos >= n) this.eos = -1;
    if (this.unk >= n) this.unk = -1;
    this.addBos = g.get("tokenizer.ggml.add_bos_token", "boolean", addBos);
    this.addEos = g.get("tokenizer.ggml.add_eos_token", "boolean", addEos);
    this.addSpacePrefix = addSpacePrefix;
    this.cleanSpaces = cleanSpaces;
    this.ignoreMerges = ignoreMerges;

    // auto-detected special tokens (by text), which llama.cpp also forces to CONTROL
    const makeControl = (tid: number): void => {
      if ((this.attrs[tid]! & TokenAttr.CONTROL) === 0) this.attrs[tid] = TokenAttr.CONTROL;
    };
    const find = (cands: string[]): number => {
      for (const c of cands) {
        const t = this.table.find(c);
        if (t >= 0) return t;
      }
      return -1;
    };
    if (eot < 0) {
      eot = find(EOT_TEXTS);
      if (eot >= 0) makeControl(eot);
    }
    if (eom < 0) {
      eom = find(["<|eom_id|>"]);
      if (eom >= 0) makeControl(eom);
    }
    for (const k of Object.keys(FIM_TEXTS)) {
      if (fim[k]! < 0) {
        fim[k] = find(FIM_TEXTS[k]!);
        if (fim[k]! >= 0) makeControl(fim[k]!);
      }
    }
    const eog = new Set<number>();
    for (const k of ["pad", "rep", "sep"]) if (fim[k]! >= 0) eog.add(fim[k]!);
    for (const t of EOG_TEXTS) {
      const tid = this.table.find(t);
      if (tid >= 0) {
        eog.add(tid);
        makeControl(tid);
      }
    }
    if (this.eos >= 0) eog.add(this.eos);
    if (eot >= 0) eog.add(eot);
    if (eom >= 0) eog.add(eom);
    this.eot = eot;
    this.eom = eom;
    this.eogIds = eog;

    // special tokens cache: CONTROL | USER_DEFINED | UNKNOWN, longest text first
    const special: number[] = [];
    for (let i = 0; i < n; i++) {
      if (this.attrs[i]! & (TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN)) special.push(i);
    }
    special.sort((a, b) => this.texts[b]!.length - this.texts[a]!.length || a - b);
    // (llama.cpp sorts by UTF-8 byte length; re-sort by that when it differs from UTF-16 length)
    const blen = new Map<number, number>();
    for (const s of special) blen.set(s, utf8(this.texts[s]!).length);
    special.sort((a, b) => blen.get(b)! - blen.get(a)! || a - b);
    this.specialTokens = special;

    // per-model attribute hacks of llama.cpp
    const name = g.get("general.name", "string", "").toLowerCase();
    if (["jina-v2-de", "jina-v2-es", "jina-v2-code"].some((s) => this.pre.includes(s))) {
      const m = this.table.find("<mask>");
      if (m >= 0) this.attrs[m] = this.attrs[m]! | TokenAttr.LSTRIP;
    } else if (name.includes("phi-3") || name.includes("phi3")) {
      for (const s of special) this.attrs[s] = this.attrs[s]! | TokenAttr.RSTRIP;
      const set = (t: string, on: boolean): void => {
        const tid = this.table.find(t);
        if (tid < 0) return;
        this.attrs[tid] = on ? this.attrs[tid]! | TokenAttr.RSTRIP : this.attrs[tid]! & ~TokenAttr.RSTRIP;
      };
      set("</s>", true);
      for (const t of ["<unk>", "<s>", "<|endoftext|>"]) set(t, false);
    }
    if (this.addBos && this.bos < 0) fail("tokenizer.ggml.add_bos_token is true, but there is no BOS token (tokenizer.ggml.bos_token_id)");
    if (this.addEos && this.eos < 0) fail("tokenizer.ggml.add_eos_token is true, but there is no EOS token (tokenizer.ggml.eos_token_id)");
  }

  private loadMerges(g: GGUFFile, fail: (msg: string) => never): void {
    if (!g.has("tokenizer.ggml.merges")) fail("metadata tokenizer.ggml.merges is missing (required by the gpt2 tokenizer)");
    const a: GGUFArray = g.get("tokenizer.ggml.merges", "array");
    if (a.itemType !== 8) fail("tokenizer.ggml.merges is not an array of strings");
    const merges = a.values as string[];
    const table = new MergeTable(merges.length);
    this.merges = table;
    for (let i = 0; i < merges.length; i++) {
      const m = merges[i]!;
      const sp = m.indexOf(" ", 1);
      if (sp < 0) fail(`tokenizer.ggml.merges[${i}] = ${JSON.stringify(m.slice(0, 60))} is not "left right"`);
      const left = this.table.find(m, 0, sp);
      const right = this.table.find(m, sp + 1);
      const merged = this.table.find2(m, 0, sp, sp + 1, m.length);
      if (left < 0 || right < 0 || merged < 0) {
        const which = left < 0 ? "left part" : right < 0 ? "right part" : "merged result";
        fail(`tokenizer.ggml.merges[${i}] = ${JSON.stringify(m.slice(0, 60))}: its ${which} is not in tokenizer.ggml.tokens`);
      }
      table.add(left, right, i, merged); // the first rank of a pair wins, as llama.cpp's emplace
    }
  }

  static fromGGUF(g: GGUFFile): Tokenizer {
    return new Tokenizer(g);
  }

  get vocabSize(): number {
    return this.texts.length;
  }

  isEog(id: number): boolean {
    return this.eogIds.has(id);
  }

  /** the token's text as stored in the vocabulary (byte-level form for BPE, U+2581 spaces for SPM) */
  tokenText(id: number): string {
    this.checkId(id);
    return this.texts[id]!;
  }

  tokenAttr(id: number): number {
    this.checkId(id);
    return this.attrs[id]!;
  }

  tokenScore(id: number): number {
    this.checkId(id);
    return this.scores[id]!;
  }

  /** the id of a token text, or -1 */
  textToToken(text: string): number {
    return this.table.find(text);
  }

  private checkId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.texts.length) {
      throw new RangeError(`token id ${id} is out of range (vocabulary of ${this.texts.length})`);
    }
  }

  // ------------------------------------------------------------------------------------------
  // encode

  encode(text: string, opts: EncodeOptions): number[] {
    const out: number[] = [];
    const frags = this.partition(text, opts.parseSpecial);
    if (this.type === "spm") {
      let prevSpecial = true; // prefix with a space if first
      if (opts.addSpecial && this.addBos) out.push(this.bos);
      for (const f of frags) {
        if (f.id < 0) {
          let t = text.slice(f.start, f.start + f.len);
          if (this.addSpacePrefix && prevSpecial) t = " " + t;
          this.spmTokenize(t.replaceAll(" ", "\u2581"), out);
          prevSpecial = false;
        } else {
          out.push(f.id);
          prevSpecial = true;
        }
      }
      if (opts.addSpecial && this.addEos) out.push(this.eos);
    } else {
      if (opts.addSpecial && this.addBos) out.push(this.bos);
      for (const f of frags) {
        if (f.id < 0) this.bpeTokenize(text.slice(f.start, f.start + f.len), out);
        else out.push(f.id);
      }
      if (opts.addSpecial && this.addEos) out.push(this.eos);
    }
    return out;
  }

  /** tokenizer_st_partition: split the input on special-token texts, longest token first */
  private partition(text: string, parseSpecial: boolean): Fragment[] {
    if (text.length === 0) return [];
    let frags: Fragment[] = [{ id: -1, start: 0, len: text.length }];
    for (const sid of this.specialTokens) {
      const attr = this.attrs[sid]!;
      if (!parseSpecial && attr & (TokenAttr.CONTROL | TokenAttr.UNKNOWN)) continue;
      const tt = this.texts[sid]!;
      // cheap reject: the token text does not occur in the input at all
      if (text.indexOf(tt) < 0) continue;
      const next: Fragment[] = [];
      for (const f of frags) {
        if (f.id >= 0) {
          next.push(f);
          continue;
        }
        let off = f.start;
        let len = f.len;
        for (;;) {
          const m = text.indexOf(tt, off);
          if (m < 0 || m + tt.length > off + len) {
            if (len > 0) next.push({ id: -1, start: off, len });
            break;
          }
          if (m > off) {
            let ll = m - off;
            if (attr & TokenAttr.LSTRIP) while (ll > 0 && isCSpace(text.charCodeAt(off + ll - 1))) ll--;
            if (ll > 0) next.push({ id: -1, start: off, len: ll });
          }
          next.push({ id: sid, start: 0, len: 0 });
          let ro = m + tt.length;
          let rl = off + len - ro;
          if (attr & TokenAttr.RSTRIP) {
            while (rl > 0 && isCSpace(text.charCodeAt(ro))) {
              ro++;
              rl--;
            }
          }
          off = ro;
          len = rl;
          if (len === 0) break;
        }
      }
      frags = next;
    }
    return frags;
  }

  private spmByteToken(b: number): number {
    let t = this.byteTokens[b]!;
    if (t !== -2) return t;
    const hex = b.toString(16).toUpperCase().padStart(2, "0");
    t = this.table.find(`<0x${hex}>`);
    if (t < 0 && b < 0x80) t = this.table.find(String.fromCharCode(b));
    this.byteTokens[b] = t;
    return t;
  }

  /** llm_tokenizer_spm_session::tokenize on already-escaped text */
  private spmTokenize(text: string, out: number[]): void {
    if (text.length === 0) return;
    const { start, len, prev, next } = splitSymbols(text);
    const heap = new CandidateHeap();
    const tryAdd = (l: number, r: number): void => {
      if (l < 0 || r < 0) return;
      const id = this.table.find(text, start[l]!, len[l]! + len[r]!);
      if (id < 0) return;
      // highest score first: minimize -score
      heap.push(-this.scores[id]!, l, r, len[l]!, len[r]!);
    };
    for (let i = 1; i < start.length; i++) tryAdd(i - 1, i);
    const top = [0, 0, 0, 0];
    while (heap.size > 0) {
      heap.pop(top);
      const [l, r, nl, nr] = top as [number, number, number, number];
      if (len[l] === 0 || len[r] === 0 || len[l] !== nl || len[r] !== nr) continue; // stale
      len[l] = nl + nr;
      len[r] = 0;
      next[l] = next[r]!;
      if (next[r]! >= 0) prev[next[r]!] = l;
      tryAdd(prev[l]!, l);
      tryAdd(l, next[l]!);
    }
    for (let i = 0; i !== -1; i = next[i]!) {
      const id = this.table.find(text, start[i]!, len[i]!);
      if (id >= 0) {
        out.push(id);
        continue;
      }
      // not a token: spell it as bytes (<0xXX> tokens)
      for (const b of utf8(text.substr(start[i]!, len[i]!))) {
        const t = this.spmByteToken(b);
        if (t >= 0) out.push(t);
        else if (this.unk >= 0) out.push(this.unk); // llama.cpp would throw (std::out_of_range) here
        else throw new Error(`tokenizer: no token for byte 0x${b.toString(16)} (no <0x..> byte tokens and no unknown token)`);
      }
    }
  }

  /** llm_tokenizer_bpe_session::tokenize on one raw-text fragment */
  private bpeTokenize(text: string, out: number[]): void {
    for (const piece of regexSplit(text, this.preRegexes)) {
      let word = "";
      for (const b of utf8(piece)) word += BYTE_TO_CHAR[b]!;
      const cached = this.wordCache.get(word);
      if (cached) {
        for (const t of cached) out.push(t);
        continue;
      }
      const ids: number[] = [];
      this.bpeWord(word, ids);
      if (this.wordCache.size > 65536) this.wordCache.clear();
      this.wordCache.set(word, ids);
      for (const t of ids) out.push(t);
    }
  }

  private bpeWord(word: string, out: number[]): void {
    const n = word.length;
    if (n === 0) return;
    if (this.ignoreMerges) {
      const id = this.table.find(word);
      if (id >= 0) {
        out.push(id);
        return;
      }
    }
    // every character of a byte-encoded word is one UTF-16 unit (U+0021..U+0143)
    const merges = this.merges!;
    const charIds = this.byteCharIds();
    const sid = new Int32Array(n); // token id of each symbol (-1: its character is not a token)
    const len = new Int32Array(n).fill(1);
    const prev = new Int32Array(n);
    const next = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const c = word.charCodeAt(i);
      sid[i] = c < charIds.length ? charIds[c]! : -1;
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    const heap = new CandidateHeap();
    const tryAdd = (l: number, r: number): void => {
      if (l < 0 || r < 0 || sid[l]! < 0 || sid[r]! < 0) return;
      const slot = merges.find(sid[l]!, sid[r]!);
      if (slot < 0) return;
      heap.push(merges.rank[slot]!, l, r, len[l]!, len[r]!);
    };
    for (let i = 1; i < n; i++) tryAdd(i - 1, i);
    const top = [0, 0, 0, 0];
    while (heap.size > 0) {
      heap.pop(top);
      const [l, r, nl, nr] = top as [number, number, number, number];
      if (len[l] === 0 || len[r] === 0 || len[l] !== nl || len[r] !== nr) continue; // outdated
      sid[l] = merges.merged[merges.find(sid[l]!, sid[r]!)]!;
      len[l] = nl + nr;
      len[r] = 0;
      next[l] = next[r]!;
      if (next[r]! >= 0) prev[next[r]!] = l;
      tryAdd(prev[l]!, l);
      tryAdd(l, next[l]!);
    }
    for (let i = 0; i !== -1; i = next[i]!) {
      if (sid[i]! >= 0) {
        out.push(sid[i]!);
        continue;
      }
      // llama.cpp: look up each UTF-8 byte of the symbol as a one-byte token text
      for (const b of utf8(word.substr(i, len[i]!))) {
        if (b >= 0x80) continue; // a lone non-ASCII byte is never a (valid UTF-8) token text
        const t = this.table.find(String.fromCharCode(b));
        if (t >= 0) out.push(t);
      }
    }
  }

  private charIds: Int32Array | undefined;
  /** token id of each byte-level character (indexed by its code), -1 when not a token */
  private byteCharIds(): Int32Array {
    if (!this.charIds) {
      const ids = new Int32Array(0x144).fill(-1);
      for (let b = 0; b < 256; b++) {
        const ch = BYTE_TO_CHAR[b]!;
        ids[ch.charCodeAt(0)] = this.table.find(ch);
      }
      this.charIds = ids;
    }
    return this.charIds;
  }

  // ------------------------------------------------------------------------------------------
  // decode

  /** llama_token_to_piece's bytes with special = true (the caller hides CONTROL/UNKNOWN) */
  private piece(id: number): Uint8Array {
    const cached = this.pieces[id];
    if (cached) return cached;
    const attr = this.attrs[id]!;
    const text = this.texts[id]!;
    let p: Uint8Array;
    if (attr & (TokenAttr.UNKNOWN | TokenAttr.CONTROL | TokenAttr.USER_DEFINED)) {
      p = utf8(text);
    } else if (attr & TokenAttr.NORMAL) {
      if (this.type === "spm") p = utf8(text.replaceAll("\u2581", " "));
      else {
        const bytes: number[] = [];
        for (const ch of text) {
          const b = CHAR_TO_BYTE.get(ch.codePointAt(0)!);
          if (b !== undefined) bytes.push(b);
          else {
            const hex = Array.from(utf8(ch), (x) => x.toString(16).padStart(2, "0")).join("");
            for (const x of utf8(`[UNK_BYTE_0x${hex}${text}]`)) bytes.push(x);
          }
        }
        p = Uint8Array.from(bytes);
      }
    } else if (attr & TokenAttr.BYTE && this.type === "spm") {
      // strtol(text + 3, 16) as a char
      let v = 0;
      for (let i = 3; i < text.length; i++) {
        const d = parseInt(text[i]!, 16);
        if (Number.isNaN(d)) break;
        v = (v * 16 + d) % 0x100000000;
      }
      p = Uint8Array.of(v & 0xff);
    } else {
      p = new Uint8Array(0); // UNUSED / UNDEFINED / BPE BYTE: suppressed like llama.cpp
    }
    this.pieces[id] = p;
    return p;
  }

  /** the bytes of one token as llama_token_to_piece renders them (lstrip: leading spaces to drop) */
  tokenToPiece(id: number, special = false, lstrip = 0): Uint8Array {
    this.checkId(id);
    if (!special && this.attrs[id]! & (TokenAttr.UNKNOWN | TokenAttr.CONTROL)) return new Uint8Array(0);
    let p = this.piece(id);
    let k = 0;
    while (k < lstrip && k < p.length && p[k] === 0x20) k++;
    if (k > 0) p = p.subarray(k);
    return p;
  }

  /** llama_detokenize's bytes */
  detokenizeBytes(ids: readonly number[], opts: DecodeOptions = {}): Uint8Array {
    let first = 0;
    let end = ids.length;
    let removeSpace = this.addSpacePrefix;
    if (opts.removeSpecial && this.addBos && end > 0 && ids[0] === this.bos) {
      removeSpace = false;
      first = 1;
    }
    if (opts.removeSpecial && this.addEos && end > first && ids[end - 1] === this.eos) end--;
    const parts: Uint8Array[] = [];
    for (let i = first; i < end; i++) {
      parts.push(this.tokenToPiece(ids[i]!, opts.special ?? false, removeSpace ? 1 : 0));
      removeSpace = false;
    }
    let bytes = concatBytes(parts);
    if (opts.cleanSpaces ?? this.cleanSpaces) bytes = cleanSpaces(bytes);
    return bytes;
  }

  /** llama_detokenize (remove_special / unparse_special per `opts`, both false by default) */
  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    return new TextDecoder("utf-8", { ignoreBOM: true }).decode(this.detokenizeBytes(ids, opts));
  }

  /** incremental detokenizer: emits only complete UTF-8 characters */
  createDecoder(opts: StreamDecoderOptions = {}): StreamDecoder {
    const dec = new TextDecoder("utf-8", { ignoreBOM: true });
    let removeSpace = (opts.atStart ?? false) && this.addSpacePrefix;
    const special = opts.special ?? false;
    return {
      push: (id: number): string => {
        const p = this.tokenToPiece(id, special, removeSpace ? 1 : 0);
        removeSpace = false;
        return dec.decode(p, { stream: true });
      },
      flush: (): string => dec.decode(),
    };
  }
}

/** llama_detokenize's clean_spaces passes (" ?" " !" " ." " ,", " ' ", " 's" " 'm" " 're" " 've") */
function cleanSpaces(input: Uint8Array): Uint8Array {
  const t = Uint8Array.from(input);
  const SP = 0x20;
  const Q = 0x27;
  let total = t.length;
  // pass 1: space before ? ! . ,
  {
    const n = total;
    total = n ? 1 : 0;
    for (let i = 1; i < n; i++) {
      const x = t[i]!;
      if (t[i - 1] === SP && (x === 0x3f || x === 0x21 || x === 0x2e || x === 0x2c)) total--;
      t[total++] = x;
    }
  }
  // pass 2: " ' " -> "'"
  {
    const n = total;
    total = n ? 1 : 0;
    for (let i = 1; i < n; i++) {
      const x = t[i]!;
      if (x === Q && i + 1 < n && t[i - 1] === SP && t[i + 1] === SP) {
        total--;
        t[++i] = 0;
      }
      t[total++] = x;
    }
  }
  // pass 3: " 's" " 'm" " 're" " 've" lose the space
  {
    const n = total;
    total = n ? 1 : 0;
    for (let i = 1; i < n; i++) {
      const x = t[i]!;
      if (t[i - 1] === SP && x === Q && i + 1 < n) {
        const x1 = t[i + 1]!;
        if (x1 === 0x73 || x1 === 0x6d) total--;
        else if (x1 !== 0x74 && x1 !== 0x64 && i + 2 < n) {
          const x2 = t[i + 2]!;
          if ((x1 === 0x72 && x2 === 0x65) || (x1 === 0x76 && x2 === 0x65)) total--;
        }
      }
      t[total++] = x;
    }
  }
  return t.slice(0, total);
}
