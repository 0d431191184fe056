// Unit tests of the library's pure parts (framing, backoff, protobuf round trips, JWT
// expiry), bundled from the TypeScript sources with esbuild and run by node's test runner.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { pathToFileURL } from "node:url";
import * as esbuild from "esbuild";

let lib;
let dir;
before(async () => {
  dir = mkdtempSync(join(tmpdir(), "switchboard-web-test-"));
  const outfile = join(dir, "lib.mjs");
  await esbuild.build({ entryPoints: ["src/index.ts"], bundle: true, format: "esm", platform: "neutral", outfile, logLevel: "warning" });
  lib = await import(pathToFileURL(outfile).href);
});
after(() => rmSync(dir, { recursive: true, force: true }));

test("records survive any chunking", () => {
  const frames = [new Uint8Array([1, 2, 3]), new Uint8Array(0), new Uint8Array(300).fill(7)];
  const stream = new Uint8Array(frames.reduce((n, f) => n + 4 + f.length, 0));
  let pos = 0;
  for (const f of frames) {
    stream.set(lib.encodeRecord(f), pos);
    pos += 4 + f.length;
  }
  assert.deepEqual([...stream.slice(0, 4)], [0, 0, 0, 3], "big-endian length");
  for (const cut of [1, 2, 3, 5, 64, stream.length]) {
    const dec = new lib.RecordDecoder(1024);
    const got = [];
    for (let i = 0; i < stream.length; i += cut) got.push(...dec.push(stream.slice(i, i + cut)));
    assert.deepEqual(got.map((f) => [...f]), frames.map((f) => [...f]), `chunks of ${cut}`);
    assert.equal(dec.pending, 0);
  }
});

test("an oversized record is refused", () => {
  const dec = new lib.RecordDecoder(10);
  assert.throws(() => dec.push(new Uint8Array([0, 0, 0, 11])), /exceeds/);
});

test("backoff is full jitter under an exponential, capped ceiling", () => {
  const opts = { baseMs: 100, maxMs: 1000 };
  assert.equal(lib.backoffDelay(0, opts, () => 0.999999), 99);
  assert.equal(lib.backoffDelay(3, opts, () => 0.999999), 799);
  assert.equal(lib.backoffDelay(10, opts, () => 0.999999), 999);
  assert.equal(lib.backoffDelay(50, opts, () => 0), 0);
});

test("frames round-trip through the generated protobuf types", async () => {
  const { create, toBinary, fromBinary } = await import("@bufbuild/protobuf");
  const frame = create(lib.ClientFrameSchema, { id: 7n, kind: { case: "join", value: { room: "demo", resumeFrom: 42n } } });
  const back = fromBinary(lib.ClientFrameSchema, toBinary(lib.ClientFrameSchema, frame));
  assert.equal(back.id, 7n);
  assert.equal(back.kind.case, "join");
  assert.equal(back.kind.value.resumeFrom, 42n);
  // Field numbers are the protocol's: ClientFrame.id = 1 (varint), join = 5 (length-delimited).
  const bytes = toBinary(lib.ClientFrameSchema, frame);
  assert.equal(bytes[0], (1 << 3) | 0);
  assert.equal(bytes[2], (5 << 3) | 2);
});

test("jwtExpiry reads exp and tolerates garbage", () => {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  assert.equal(lib.jwtExpiry(`${b64({ alg: "HS256" })}.${b64({ sub: "a", exp: 1767225600 })}.sig`), 1767225600);
  assert.equal(lib.jwtExpiry("not a token"), 0);
});
