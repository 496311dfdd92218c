// Runs before the tests: builds libdairllm when it is missing or older than cpp/ (see bunfig.toml).
// DAIRLLM_LIB set means the caller brings its own library (e.g. the arm64 run under qemu).
import { ensureNative } from "../scripts/build-native";

if (!process.env.DAIRLLM_LIB) ensureNative();
