// The npm package as a user gets it: `npm pack` (its prepack builds lib/), the tarball's
// contents, then `npm install <tarball>` in a scratch project under a temporary directory
// (its dependency from the registry, or npm's cache), an ES module script importing it under
// node, and tsc checking a TypeScript file against its declarations under `nodenext` and
// `bundler` module resolution. `npm run test:package` (scripts/package-check.sh).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

const web = join(dirname(fileURLToPath(import.meta.url)), "..");
const npm = process.platform === "win32" ? "npm.cmd" : "npm";
const tsc = createRequire(join(web, "package.json")).resolve("typescript/bin/tsc");

let dir;
let tarball;
let app;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "switchboard-pack-"));
  execFileSync(npm, ["pack", "--pack-destination", dir, "--loglevel=error"], { cwd: web, stdio: ["ignore", "ignore", "inherit"] });
  const tgz = readdirSync(dir).filter((f) => f.endsWith(".tgz"));
  assert.equal(tgz.length, 1, `one tarball: ${tgz}`);
  tarball = join(dir, tgz[0]);
  app = join(dir, "app");
  mkdirSync(app);
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "scratch", private: true, type: "module" }));
  execFileSync(npm, ["install", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error", tarball], { cwd: app, stdio: ["ignore", "ignore", "inherit"] });
});
after(() => rmSync(dir, { recursive: true, force: true }));

test("the tarball holds the ES modules, their declarations, README and LICENSE; no sources, tests or bundle", () => {
  const files = execFileSync("tar", ["-tzf", tarball], { encoding: "utf8" }).split("\n").filter(Boolean).sort();
  for (const f of ["package.json", "README.md", "LICENSE", "lib/index.js", "lib/index.d.ts", "lib/client.js", "lib/client.d.ts", "lib/gen/switchboard_pb.js", "lib/gen/switchboard_pb.d.ts"]) {
    assert.ok(files.includes(`package/${f}`), `${f} in ${files.join(", ")}`);
  }
  const stray = files.filter((f) => !/^package\/(package\.json|README\.md|LICENSE|lib\/.+\.(js|d\.ts))$/.test(f));
  assert.deepEqual(stray, []);
  const installed = join(app, "node_modules/@switchboard/client");
  const pkg = JSON.parse(readFileSync(join(installed, "package.json"), "utf8"));
  assert.equal(pkg.license, "Apache-2.0");
  assert.equal(pkg.repository, undefined, "no made-up repository");
  assert.ok(readFileSync(join(installed, "LICENSE")).equals(readFileSync(join(web, "../LICENSE"))), "the repository's LICENSE");
});

test("an ES module script imports the installed package and uses it", () => {
  writeFileSync(
    join(app, "smoke.mjs"),
    `import * as sb from "@switchboard/client";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
const frame = create(sb.ServerFrameSchema, { kind: { case: "roomStats", value: { room: "big", participantCount: 750 } } });
const [bytes] = new sb.RecordDecoder(1 << 16).push(sb.encodeRecord(toBinary(sb.ServerFrameSchema, frame)));
const back = fromBinary(sb.ServerFrameSchema, bytes);
const client = new sb.SwitchboardClient({ nodes: ["http://127.0.0.1:9"], token: "t" });
const error = new sb.SwitchboardError(sb.ErrorCode.ROOM_FULL, "full");
console.log(JSON.stringify({
  kind: back.kind.case, count: back.kind.value.participantCount, state: client.state.status,
  joined: client.participantCount("big") ?? null, error: error.message, delay: sb.backoffDelay(2, { baseMs: 100, maxMs: 1000 }, () => 0.5),
}));
`,
  );
  const out = JSON.parse(execFileSync(process.execPath, ["smoke.mjs"], { cwd: app, encoding: "utf8" }));
  assert.deepEqual(out, { kind: "roomStats", count: 750, state: "idle", joined: null, error: "ROOM_FULL: full", delay: 200 });
});

test("tsc checks code against the installed declarations (nodenext and bundler resolution); wrong code is refused", () => {
  // Each @ts-expect-error must meet an error: were the package's types missing (any), tsc
  // would report the directive as unused.
  writeFileSync(
    join(app, "check.ts"),
    `import { ErrorCode, SwitchboardClient, type ClientEvents, type Joined, type RoomStats } from "@switchboard/client";
const client = new SwitchboardClient({ nodes: ["http://127.0.0.1:8080"], token: async () => "token", transport: "auto" });
client.on("roomStats", (s: RoomStats) => console.log(s.room.toUpperCase(), s.participantCount.toFixed(0)));
client.on("participantCount", ({ room, count }) => console.log(room, count + 1));
const count: number | undefined = client.participantCount("demo");
export async function join(): Promise<number> {
  const joined: Joined = await client.join("demo");
  return joined.participantCount + joined.participants.length + (count ?? 0);
}
export const code: ErrorCode = ErrorCode.ROOM_FULL;
// @ts-expect-error: not an event
client.on("roomStat", () => {});
// @ts-expect-error: a count is a number
export const wrong: string = ({} as ClientEvents["roomStats"]).participantCount;
// @ts-expect-error: nodes is required
new SwitchboardClient({ token: "t" });
`,
  );
  const base = { target: "es2022", lib: ["es2022", "dom"], strict: true, noEmit: true, types: [], skipLibCheck: false };
  for (const [name, resolution] of [["nodenext", { module: "nodenext", moduleResolution: "nodenext" }], ["bundler", { module: "esnext", moduleResolution: "bundler" }]]) {
    const config = `tsconfig.${name}.json`;
    writeFileSync(join(app, config), JSON.stringify({ compilerOptions: { ...base, ...resolution }, files: ["check.ts"] }));
    try {
      execFileSync(process.execPath, [tsc, "-p", config], { cwd: app, encoding: "utf8" });
    } catch (e) {
      assert.fail(`tsc (${name}):\n${e.stdout}${e.stderr}`);
    }
  }
  // And the same file with a real type error in it is refused.
  writeFileSync(join(app, "bad.ts"), `import { SwitchboardClient } from "@switchboard/client";\nexport const n: number = new SwitchboardClient({ nodes: [], token: "t" }).participantCount("r");\n`);
  writeFileSync(join(app, "tsconfig.bad.json"), JSON.stringify({ compilerOptions: { ...base, module: "nodenext", moduleResolution: "nodenext", skipLibCheck: true }, files: ["bad.ts"] }));
  assert.throws(
    () => execFileSync(process.execPath, [tsc, "-p", "tsconfig.bad.json"], { cwd: app, encoding: "utf8", stdio: "pipe" }),
    (e) => /TS2322/.test(e.stdout),
    "number | undefined is not a number",
  );
});
