// Unit tests of the library: its pure parts (framing, backoff, protobuf round trips, JWT
// expiry) and how connect() fails (against a stand-in WebSocket), bundled from the
// TypeScript sources with esbuild and run by node's test runner.
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

let protobuf;

// A WebSocket stand-in (node has none before v22) whose server answers `Hello` with
// `answer(ws)`.
function fakeWebSocket(answer) {
  return class FakeWebSocket {
    static OPEN = 1;
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      setTimeout(() => {
        this.readyState = 1;
        this.onopen?.();
      }, 0);
    }
    send(bytes) {
      const { fromBinary } = protobuf;
      if (fromBinary(lib.ClientFrameSchema, bytes).kind.case === "hello") answer(this);
    }
    serverSend(kind) {
      const { create, toBinary } = protobuf;
      const bytes = toBinary(lib.ServerFrameSchema, create(lib.ServerFrameSchema, { kind }));
      this.onmessage?.({ data: bytes.slice().buffer });
    }
    close(code = 1000, reason = "") {
      if (this.readyState === 3) return;
      this.readyState = 3;
      setTimeout(() => this.onclose?.({ code, reason }), 0);
    }
  };
}

async function connectWith(answer, options = {}) {
  protobuf ??= await import("@bufbuild/protobuf");
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = fakeWebSocket(answer);
  try {
    const client = new lib.SwitchboardClient({ nodes: ["ws://127.0.0.1:9/ws"], token: "t", transport: "websocket", ...options });
    return await client.connect().then(
      () => assert.fail("connect() resolved"),
      (e) => e,
    );
  } finally {
    globalThis.WebSocket = saved;
  }
}

test("connect() rejects with the server's ErrorCode", async () => {
  const fatal = (code, message) => (ws) => {
    ws.serverSend({ case: "error", value: { code, message, fatal: true } });
    ws.close(4000 + code, message);
  };
  let e = await connectWith(fatal(lib.ErrorCode.TOKEN_EXPIRED, "token expired"));
  assert.ok(e instanceof lib.SwitchboardError, String(e));
  assert.equal(e.code, lib.ErrorCode.TOKEN_EXPIRED);
  assert.equal(e.fatal, true);
  assert.match(e.message, /^TOKEN_EXPIRED: token expired/);

  // Not final (the client would retry), so without reconnecting it is what connect() says.
  e = await connectWith(fatal(lib.ErrorCode.TOO_MANY_CONNECTIONS, "too many connections"), { reconnect: false });
  assert.ok(e instanceof lib.SwitchboardError, String(e));
  assert.equal(e.code, lib.ErrorCode.TOO_MANY_CONNECTIONS);

  // The close code alone (the Error frame lost) says the same.
  e = await connectWith((ws) => ws.close(4000 + lib.ErrorCode.BANNED, "banned"));
  assert.equal(e.code, lib.ErrorCode.BANNED);

  // A plain close, without reconnecting: UNAVAILABLE.
  e = await connectWith((ws) => ws.close(1001, "going away"), { reconnect: false });
  assert.ok(e instanceof lib.SwitchboardError, String(e));
  assert.equal(e.code, lib.ErrorCode.UNAVAILABLE);
});
