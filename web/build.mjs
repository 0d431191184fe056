// Bundles the library (dist/switchboard.js) and the demo app (dist/demo.js, index.html,
// demo.css) with esbuild. `node build.mjs --check` builds into a temporary directory and
// fails if the committed dist/ differs (the node embeds dist/ at compile time).
import * as esbuild from "esbuild";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const check = process.argv.includes("--check");
const out = check ? mkdtempSync(join(tmpdir(), "switchboard-web-")) : "dist";
mkdirSync(out, { recursive: true });

const common = { bundle: true, format: "esm", target: "es2022", minify: true, sourcemap: false, legalComments: "none", logLevel: "warning" };
await esbuild.build({ ...common, entryPoints: ["src/index.ts"], outfile: join(out, "switchboard.js") });
await esbuild.build({ ...common, entryPoints: ["demo/app.ts"], outfile: join(out, "demo.js") });
copyFileSync("demo/index.html", join(out, "index.html"));
copyFileSync("demo/demo.css", join(out, "demo.css"));

if (check) {
  const stale = readdirSync(out).filter((f) => {
    try {
      return !readFileSync(join("dist", f)).equals(readFileSync(join(out, f)));
    } catch {
      return true;
    }
  });
  rmSync(out, { recursive: true, force: true });
  if (stale.length) {
    console.error(`web/dist is stale (${stale.join(", ")}): run \`npm run build\` in web/ and commit dist/`);
    process.exit(1);
  }
  console.log("web/dist is up to date");
} else {
  for (const f of readdirSync(out)) console.log(`${join(out, f)}\t${readFileSync(join(out, f)).length} bytes`);
}
