//! Builds libdairllm (the native kernels) for one target: `zig build -Dtarget=x86_64-linux-gnu`
//! or `-Dtarget=aarch64-linux-gnu` (cross-compiled from any host). cpp/kernels.c is compiled once per
//! SIMD variant with that variant's instruction-set flags; the library picks one at start from the
//! CPU's features (cpp/dispatch.c). The default CPU model is the architecture's baseline, never
//! -march=native, so one build runs on every CPU of its architecture.
//! `zig build test` builds and runs the C-level kernel tests (cpp/test_kernels.c).
const std = @import("std");

/// `features` are LLVM target features added to the baseline CPU for this variant's object. (zig passes
/// its CPU model to clang as explicit -target-feature flags, which override -mavx2 and friends, so the
/// variant's features go the same way.)
const Variant = struct { name: []const u8, flags: []const []const u8 = &.{}, features: []const []const u8 = &.{} };

// Keep in step with VARIANTS in scripts/build-native.ts (the fallback build without zig).
const x86_64_variants = [_]Variant{
    .{ .name = "scalar", .flags = &.{ "-DDL_SCALAR", "-fno-vectorize", "-fno-slp-vectorize" } },
    .{ .name = "x86_64" },
    .{ .name = "ssse3", .features = &.{ "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt" } }, // x86-64-v2
    .{ .name = "avx2", .features = &.{ "avx2", "fma", "f16c" } },
    .{ .name = "avx512", .features = &.{ "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "evex512" } },
};
const aarch64_variants = [_]Variant{
    .{ .name = "scalar", .flags = &.{ "-DDL_SCALAR", "-fno-vectorize", "-fno-slp-vectorize" } },
    .{ .name = "neon" },
    .{ .name = "dotprod", .features = &.{"dotprod"} },
};
const common_flags = [_][]const u8{ "-std=c11", "-Wall", "-Wextra", "-ffp-contract=off", "-fno-math-errno", "-fno-sanitize=undefined" };

/// zig's cache does not see a change to a header the C files include (measured with zig 0.14.1: an
/// edited cpp/dot_x86.h left a cached, stale libdairllm), so the headers' contents go into every C
/// file's flags as a hash: any header edit changes the flags and rebuilds.
fn headersFlag(b: *std.Build) []const u8 {
    var dir = b.build_root.handle.openDir("cpp", .{ .iterate = true }) catch @panic("cannot open cpp/");
    defer dir.close();
    var acc: u64 = 0;
    var it = dir.iterate();
    while (it.next() catch @panic("cannot list cpp/")) |e| {
        if (e.kind != .file or !std.mem.endsWith(u8, e.name, ".h")) continue;
        const data = dir.readFileAlloc(b.allocator, e.name, 1 << 24) catch @panic("cannot read a header in cpp/");
        acc +%= std.hash.Wyhash.hash(0, e.name) ^ std.hash.Wyhash.hash(1, data); // order-independent
    }
    return b.fmt("-DDL_HEADERS_HASH=0x{x}", .{acc});
}

fn addKernelSources(b: *std.Build, m: *std.Build.Module, arch: std.Target.Cpu.Arch) void {
    const variants: []const Variant = switch (arch) {
        .x86_64 => &x86_64_variants,
        .aarch64 => &aarch64_variants,
        else => &[_]Variant{x86_64_variants[0]},
    };
    const headers = headersFlag(b);
    for (variants) |v| {
        var flags = std.ArrayList([]const u8).init(b.allocator);
        flags.appendSlice(&common_flags) catch @panic("OOM");
        flags.append(headers) catch @panic("OOM");
        flags.appendSlice(v.flags) catch @panic("OOM");
        for (v.features) |f| flags.appendSlice(&.{ "-Xclang", "-target-feature", "-Xclang", b.fmt("+{s}", .{f}) }) catch @panic("OOM");
        flags.append(b.fmt("-DDL_VARIANT={s}", .{v.name})) catch @panic("OOM");
        m.addCSourceFile(.{ .file = b.path("cpp/kernels.c"), .flags = flags.items });
    }
    m.addCSourceFile(.{ .file = b.path("cpp/dispatch.c"), .flags = b.dupeStrings(&(common_flags ++ [_][]const u8{headers})) });
    m.addIncludePath(b.path("cpp"));
}

pub fn build(b: *std.Build) void {
    const target = b.standardTargetOptions(.{ .default_target = .{ .cpu_model = .baseline } });
    const optimize = b.standardOptimizeOption(.{ .preferred_optimize_mode = .ReleaseFast });
    const arch = target.result.cpu.arch;

    const lib_mod = b.createModule(.{ .target = target, .optimize = optimize, .link_libc = true });
    addKernelSources(b, lib_mod, arch);
    const lib = b.addLibrary(.{ .linkage = .dynamic, .name = "dairllm", .root_module = lib_mod });
    b.installArtifact(lib);

    const test_mod = b.createModule(.{ .target = target, .optimize = optimize, .link_libc = true });
    addKernelSources(b, test_mod, arch);
    test_mod.addCSourceFile(.{ .file = b.path("cpp/test_kernels.c"), .flags = b.dupeStrings(&(common_flags ++ [_][]const u8{headersFlag(b)})) });
    const test_exe = b.addExecutable(.{ .name = "test_kernels", .root_module = test_mod });
    const install_test = b.addInstallArtifact(test_exe, .{});
    b.step("test-exe", "Build the C kernel tests without running them (for qemu)").dependOn(&install_test.step);

    const run_tests = b.addRunArtifact(test_exe);
    b.step("test", "Run the C-level kernel tests").dependOn(&run_tests.step);
}
