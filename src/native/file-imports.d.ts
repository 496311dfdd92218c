// `import lib from "…/libdairllm.so" with { type: "file" }` (the entry point of a compiled binary,
// test/fixtures/embedded-lib-entry.ts): Bun gives the path of the file, embedded in the binary.
declare module "*.so" {
  const path: string;
  export default path;
}
