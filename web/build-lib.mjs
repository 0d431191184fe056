// Builds what the npm package ships (`npm pack` and `npm publish` run it as `prepack`):
// lib/, the library as ES modules (one per source file, @bufbuild/protobuf left as an
// import) with their type declarations, compiled by tsc (tsconfig.lib.json); and LICENSE,
// copied from the repository root. The browser bundle the node serves is build.mjs's.
import { execFileSync } from "node:child_process";
import { copyFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";

rmSync("lib", { recursive: true, force: true });
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
execFileSync(process.execPath, [tsc, "-p", "tsconfig.lib.json"], { stdio: "inherit" });
copyFileSync("../LICENSE", "LICENSE");
