// Unit tests of the library: its pure parts (framing, backoff and retry hints, protobuf round
// trips, JWT expiry, the call tracker), how connect() fails and reconnects, how rooms keep
// their participant counts, simulcast layer choices and active-speaker events (against a stand-in WebSocket), bundled from the TypeScript
// sources with esbuild and run by node's test runner.
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

test("reconnect delay: a node's retry hint plus at most 10 % jitter, capped, instead of the backoff", () => {
  const opts = { baseMs: 100, maxMs: 1000 };
  assert.equal(lib.reconnectDelay(3, opts, undefined, () => 0.5), lib.backoffDelay(3, opts, () => 0.5), "no hint: the backoff");
  assert.equal(lib.reconnectDelay(3, opts, 2000, () => 0), 2000, "the hint, past the backoff's ceiling");
  assert.equal(lib.reconnectDelay(0, opts, 2000, () => 0.999999), 2199, "at most 10 % more");
  assert.equal(lib.reconnectDelay(0, opts, 0, () => 0.5), 0);
  assert.equal(lib.reconnectDelay(0, opts, 10 ** 6, () => 0), lib.MAX_RETRY_HINT_MS, "a hint is not trusted blindly");
  assert.equal(lib.reconnectDelay(0, opts, lib.MAX_RETRY_HINT_MS, () => 0.999999), lib.MAX_RETRY_HINT_MS, "the cap holds jitter included");
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

test("call tracker: live calls are resumed (newest first, bounded), ended ones not; stale and repeated states are dropped; bounded", async () => {
  const { create } = await import("@bufbuild/protobuf");
  const { CallState, PartyStatus } = lib;
  const party = (user, status) => ({ user, status });
  const event = (id, state, parties = [], over = {}) => ({
    call: create(lib.CallSchema, { id, caller: "alice", room: `call-${id}`, state: over.callState ?? state, parties }),
    state,
    by: over.by,
    answeredElsewhere: false,
  });
  const ringing = [party("alice", PartyStatus.CALLER), party("bob", PartyStatus.RINGING)];
  const accepted = [party("alice", PartyStatus.CALLER), party("bob", PartyStatus.ACCEPTED)];
  const t = new lib.CallTracker();
  assert.deepEqual(t.live(), [], "nothing to resume on the first connect");
  assert.equal(t.accept(event("a", CallState.RINGING, ringing, { by: { user: "alice", session: "s1" } })), true);
  assert.equal(t.accept(event("a", CallState.RINGING, ringing)), false, "the resumed state repeating the live one (by empty)");
  assert.equal(t.accept(event("a", CallState.ACCEPTED, accepted)), true);
  assert.equal(t.accept(event("b", CallState.RINGING, ringing)), true);
  assert.deepEqual(t.live(), ["b", "a"], "most recent first");
  assert.equal(t.accept(event("a", CallState.ENDED, accepted)), true);
  assert.equal(t.accept(event("a", CallState.ACCEPTED, accepted)), false, "a resumed ACCEPTED after ENDED is stale");
  assert.equal(t.accept(event("a", CallState.ENDED, accepted)), false, "ENDED again, same record");
  assert.deepEqual(t.live(), ["b"], "an ended call is not resumed");
  // States of one rank are all news when the call record changed: a callee rejects a group
  // call, another accepts it.
  const group = (carol, dave) => [party("alice", PartyStatus.CALLER), party("carol", carol), party("dave", dave)];
  assert.equal(t.accept(event("g", CallState.REJECTED, group(PartyStatus.REJECTED, PartyStatus.RINGING), { callState: CallState.RINGING })), true);
  assert.equal(t.accept(event("g", CallState.ACCEPTED, group(PartyStatus.REJECTED, PartyStatus.ACCEPTED))), true);
  assert.equal(t.accept({ state: CallState.ENDED, answeredElsewhere: false }), true, "an event without a call is delivered");
  // A call placed is live before its first event, which is then delivered.
  t.placed("p");
  assert.deepEqual(t.live(), ["p", "g", "b"]);
  assert.equal(t.accept(event("p", CallState.RINGING, ringing)), true);
  t.placed("a");
  assert.deepEqual(t.live(), ["p", "g", "b"], "placing a known call changes nothing");
  // At most MAX_RESUME_CALLS (the node's MAX_RESUME_CALLS) in one Hello, the newest.
  assert.equal(lib.MAX_RESUME_CALLS, 16);
  for (let i = 0; i < 20; i++) t.accept(event(`l${i}`, CallState.RINGING, ringing));
  assert.equal(t.live().length, lib.MAX_RESUME_CALLS);
  assert.equal(t.live()[0], "l19");
  // Bounded: ended calls are forgotten first, live ones kept.
  for (let i = 0; i < 1000; i++) t.accept(event(`e${i}`, CallState.ENDED, accepted));
  assert.equal(t.size, lib.MAX_TRACKED_CALLS);
  assert.deepEqual(t.live(), [...Array(16)].map((_, i) => `l${19 - i}`));
  assert.equal(t.accept(event("a", CallState.ACCEPTED, accepted)), true, "a forgotten call starts over");
});

let protobuf;

// A WebSocket stand-in (node has none before v22) whose server answers `Hello` with
// `answer(ws, hello)`, and any other frame with `onFrame(ws, frame)`.
function fakeWebSocket(answer, onFrame) {
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
      const frame = fromBinary(lib.ClientFrameSchema, bytes);
      if (frame.kind.case === "hello") answer(this, frame.kind.value);
      else onFrame?.(this, frame);
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
  assert.equal(e.retryAfterMs, undefined);

  // Refused for now (a node admitting sessions at its rate limit): the GoAway before the
  // refusal says when to retry.
  const goAway = { case: "goAway", value: { reason: "node admitting sessions at its rate limit", reconnectAfterMs: 1500 } };
  const refuse = fatal(lib.ErrorCode.RATE_LIMITED, "retry after 1500 ms");
  e = await connectWith((ws) => (ws.serverSend(goAway), refuse(ws)), { reconnect: false });
  assert.equal(e.code, lib.ErrorCode.RATE_LIMITED);
  assert.equal(e.retryAfterMs, 1500);
  e = await connectWith((ws) => (ws.serverSend(goAway), ws.close(4000 + lib.ErrorCode.RATE_LIMITED)), { reconnect: false });
  assert.equal(e.code, lib.ErrorCode.RATE_LIMITED, "the Error frame lost");
  assert.equal(e.retryAfterMs, 1500);
});

/** Poll (every 5 ms, at most 3 s) until `cond()` holds. */
async function eventually(what, cond) {
  for (let t = 0; t < 3000; t += 5) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.fail(`never happened: ${what}`);
}

test("reconnect: a refusal with a retry hint waits the hint; Hello.calls resumes the live calls; stale and repeated states are not delivered", async () => {
  protobuf ??= await import("@bufbuild/protobuf");
  const { CallState, PartyStatus } = lib;
  const call = (state) => ({
    id: "c1",
    caller: "alice",
    room: "call-c1",
    state,
    parties: [
      { user: "alice", status: PartyStatus.CALLER },
      { user: "bob", status: state === CallState.RINGING ? PartyStatus.RINGING : PartyStatus.ACCEPTED },
    ],
  });
  const callEvent = (state, by) => ({ case: "call", value: { call: call(state), state, by } });
  const welcome = (ws) => ws.serverSend({ case: "welcome", value: { protocolVersion: 1, sessionId: "s", node: "n1", user: "bob", heartbeatMs: 15_000 } });
  const hellos = [];
  // What the node does for each Hello, in turn.
  const script = [
    (ws) => (welcome(ws), ws.serverSend(callEvent(CallState.RINGING, { user: "alice", session: "a1" })), ws.close(1006, "lost")),
    (ws) => {
      ws.serverSend({ case: "goAway", value: { reason: "rate limit", reconnectAfterMs: 80 } });
      ws.serverSend({ case: "error", value: { code: lib.ErrorCode.RATE_LIMITED, message: "retry after 80 ms", fatal: true } });
      ws.close(4000 + lib.ErrorCode.RATE_LIMITED);
    },
    (ws) => {
      welcome(ws);
      ws.serverSend(callEvent(CallState.RINGING)); // the resumed state: the same as seen live
      ws.serverSend(callEvent(CallState.ENDED, { user: "alice", session: "a1" }));
      ws.serverSend(callEvent(CallState.ACCEPTED)); // older than ENDED
    },
    (ws) => welcome(ws),
  ];
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = fakeWebSocket((ws, hello) => {
    hellos.push({ calls: [...hello.calls], at: Date.now() });
    script[hellos.length - 1](ws);
  });
  const client = new lib.SwitchboardClient({
    nodes: ["ws://127.0.0.1:9/ws"],
    token: "t",
    transport: "websocket",
    backoff: { baseMs: 1, maxMs: 1 }, // the hint, not the backoff, must make the wait
  });
  const states = [];
  const goAways = [];
  client.on("call", (ev) => states.push(ev.state));
  client.on("goAway", (g) => goAways.push(g));
  try {
    await client.connect();
    await eventually("the third session's events", () => states.length === 2);
    assert.deepEqual(states, [CallState.RINGING, CallState.ENDED]);
    assert.deepEqual(hellos.map((h) => h.calls), [[], ["c1"], ["c1"]], "the live call named after each reconnect");
    assert.ok(hellos[2].at - hellos[1].at >= 75, `waited ${hellos[2].at - hellos[1].at} ms after the hint of 80 ms`);
    assert.deepEqual(goAways, [], "a GoAway before Welcome is a refusal, not a drain");
    client.dropConnection();
    await eventually("the fourth Hello", () => hellos.length === 4);
    assert.deepEqual(hellos[3].calls, [], "the ended call is not resumed");
  } finally {
    client.close();
    globalThis.WebSocket = saved;
  }
});

test("participant count: Joined's count (not its truncated list), presence events, RoomStats in large rooms (a roomStats event)", async () => {
  protobuf ??= await import("@bufbuild/protobuf");
  const person = (i) => ({ user: `u${i}`, session: `s${i}`, name: `U${i}`, node: "n1" });
  let server;
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = fakeWebSocket(
    (ws) => {
      server = ws;
      ws.serverSend({ case: "welcome", value: { protocolVersion: 1, sessionId: "s0", node: "n1", user: "u0", heartbeatMs: 15_000 } });
    },
    (ws, frame) => {
      const { kind, id } = frame;
      // Answered a turn later, as over a network.
      setTimeout(() => {
        if (kind.case === "leave") ws.serverSend({ case: "ack", value: { refId: id } });
        if (kind.case !== "join") return;
        const room = kind.value.room;
        if (room === "big") {
          // A large room: 500 listed of 600, and a join dispatched in the same turn as the
          // Joined (as the frames of one WebTransport chunk are), before join() resumes.
          const participants = Array.from({ length: 500 }, (_, i) => person(i));
          ws.serverSend({ case: "joined", value: { refId: id, room, participants, participantCount: 600, participantsTruncated: true } });
          ws.serverSend({ case: "participantJoined", value: { room, participant: person(600) } });
        } else {
          ws.serverSend({ case: "joined", value: { refId: id, room, participants: [person(0), person(1)], participantCount: 2 } });
        }
      }, 0);
    },
  );
  const client = new lib.SwitchboardClient({ nodes: ["ws://127.0.0.1:9/ws"], token: "t", transport: "websocket", reconnect: false });
  const stats = [];
  const counts = [];
  client.on("roomStats", (s) => stats.push([s.room, s.participantCount]));
  client.on("participantCount", (c) => counts.push([c.room, c.count]));
  try {
    await client.connect();
    assert.equal(client.participantCount("big"), undefined, "not joined");
    const joined = await client.join("big");
    assert.equal(joined.participants.length, 500);
    assert.equal(client.participantCount("big"), 601, "Joined's count, plus the join that came with it");
    server.serverSend({ case: "participantLeft", value: { room: "big", participant: person(3) } });
    assert.equal(client.participantCount("big"), 600);
    // Past the presence-event limit: counts instead of events.
    server.serverSend({ case: "roomStats", value: { room: "big", participantCount: 750 } });
    assert.equal(client.participantCount("big"), 750);
    server.serverSend({ case: "roomStats", value: { room: "big", participantCount: 750 } });
    server.serverSend({ case: "roomStats", value: { room: "elsewhere", participantCount: 9 } });
    assert.equal(client.participantCount("elsewhere"), undefined, "a room not joined is not counted");
    assert.deepEqual(stats, [["big", 750], ["big", 750], ["elsewhere", 9]]);

    await client.join("small");
    assert.equal(client.participantCount("small"), 2);
    server.serverSend({ case: "participantJoined", value: { room: "small", participant: person(2) } });
    server.serverSend({ case: "participantLeft", value: { room: "big", participant: person(4) } });
    assert.deepEqual([client.participantCount("small"), client.participantCount("big")], [3, 749], "each room its own count");
    await client.leave("big");
    assert.equal(client.participantCount("big"), undefined, "forgotten on leave");
    server.serverSend({ case: "roomStats", value: { room: "big", participantCount: 800 } });
    assert.equal(client.participantCount("big"), undefined);
    assert.deepEqual(counts, [["big", 600], ["big", 601], ["big", 600], ["big", 750], ["small", 2], ["small", 3], ["big", 749]], "one event per change");
  } finally {
    client.close();
    globalThis.WebSocket = saved;
  }
});

test("simulcast and active speaker: layerSubscribe is a request (acked or refused with its code), sendMedia carries layer and audio level, activeSpeaker events", async () => {
  protobuf ??= await import("@bufbuild/protobuf");
  let server;
  const sent = [];
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = fakeWebSocket(
    (ws) => {
      server = ws;
      ws.serverSend({ case: "welcome", value: { protocolVersion: 1, sessionId: "s0", node: "n1", user: "u0", heartbeatMs: 15_000 } });
    },
    (ws, frame) => {
      sent.push(frame);
      const { kind, id } = frame;
      setTimeout(() => {
        if (kind.case === "join") ws.serverSend({ case: "joined", value: { refId: id, room: kind.value.room, participantCount: 1 } });
        if (kind.case !== "layerSubscribe") return;
        if (kind.value.session === "s9") {
          const error = { code: lib.ErrorCode.TOO_MANY_SUBSCRIPTIONS, message: "at most 64", refId: id };
          ws.serverSend({ case: "error", value: error });
        } else {
          ws.serverSend({ case: "ack", value: { refId: id } });
        }
      }, 0);
    },
  );
  const client = new lib.SwitchboardClient({ nodes: ["ws://127.0.0.1:9/ws"], token: "t", transport: "websocket", reconnect: false });
  const speakers = [];
  const asks = [];
  client.on("activeSpeaker", (a) => speakers.push([a.room, a.session, a.user, a.level]));
  client.on("keyframeRequest", (k) => asks.push([k.track, k.layer]));
  try {
    await client.connect();
    await client.join("r");
    await client.layerSubscribe("r", "s1", 2);
    const choice = sent.find((f) => f.kind.case === "layerSubscribe").kind.value;
    assert.deepEqual([choice.room, choice.session, choice.layer], ["r", "s1", 2]);
    const refused = await client.layerSubscribe("r", "s9", 1).then(() => assert.fail("resolved"), (e) => e);
    assert.equal(refused.code, lib.ErrorCode.TOO_MANY_SUBSCRIPTIONS);

    const frame = { room: "r", track: 11, seq: 1, timestamp: 0, keyframe: true, codec: "vp8", payload: new Uint8Array(3) };
    assert.ok(client.sendMedia({ ...frame, layer: 1 }));
    assert.ok(client.sendMedia({ ...frame, track: 2, codec: "opus", audioLevel: 20 }));
    assert.ok(client.sendMedia(frame));
    const media = sent.filter((f) => f.kind.case === "media").map((f) => [f.kind.value.layer, f.kind.value.audioLevel]);
    assert.deepEqual(media, [[1, undefined], [undefined, 20], [undefined, undefined]], "unset stays unset (not layer 0)");

    server.serverSend({ case: "activeSpeaker", value: { room: "r", session: "s1", user: "alice", level: 12 } });
    server.serverSend({ case: "keyframeRequest", value: { room: "r", track: 11, layer: 1 } });
    assert.deepEqual(speakers, [["r", "s1", "alice", 12]]);
    assert.deepEqual(asks, [[11, 1]]);
  } finally {
    client.close();
    globalThis.WebSocket = saved;
  }
});

test("media ordering: stale frames are dropped, a newer keyframe always passes, state is bounded", () => {
  const order = new lib.MediaOrder(4, 5000);
  const f = (seq, keyframe = false, over = {}) => ({ room: "r", session: "s1", track: 1, seq: BigInt(seq), keyframe, ...over });
  const accept = (frame, now = 0) => order.accept(frame, now);
  assert.equal(accept(f(10, true)), true, "the first frame of a track");
  assert.equal(accept(f(12)), true);
  assert.equal(accept(f(11)), false, "older than the last delivered (a datagram overtook it)");
  assert.equal(accept(f(12)), false, "the same frame again");
  assert.equal(accept(f(13)), true);
  // A keyframe newer than the last delivered keyframe passes even when it is late (a small
  // delta on a datagram overtook the large keyframe on its stream); an older one does not.
  assert.equal(accept(f(20)), true);
  assert.equal(accept(f(19, true)), true, "late keyframe, newer than keyframe 10");
  assert.equal(accept(f(9, true)), false, "keyframe older than keyframe 19");
  assert.equal(accept(f(19, true)), false, "keyframe 19 again");
  assert.equal(accept(f(21)), true);
  // Tracks are told apart by room, sender session and track.
  assert.equal(accept(f(1, false, { track: 2 })), true);
  assert.equal(accept(f(1, false, { session: "s2" })), true);
  assert.equal(accept(f(1, false, { room: "other" })), true);
  assert.equal(order.size, 4);
  // Bounded: a fifth track evicts the least recently delivered one (room r, s1, track 1),
  // which then starts over.
  assert.equal(accept(f(1, false, { track: 3 })), true);
  assert.equal(order.size, 4);
  assert.equal(accept(f(5)), true, "forgotten track starts over");
  // A track with nothing delivered for longer than the idle time starts over too (a sender
  // whose encoder restarted at seq 0).
  assert.equal(accept(f(100), 1000), true);
  assert.equal(accept(f(3), 2000), false);
  assert.equal(accept(f(4), 5999), false, "stale frames do not keep a track alive, but it is not idle yet");
  assert.equal(accept(f(4), 6001), true, "idle for more than 5 s since the last delivery: starts over");
  assert.equal(accept(f(3), 6002), false);
});

/** Let queued promise callbacks and stream operations run (bounded, no timers). */
async function until(what, cond) {
  for (let i = 0; i < 1000; i++) {
    if (cond()) return;
    await new Promise((r) => setImmediate(r));
  }
  assert.fail(`never happened: ${what}`);
}

// A WebTransport stand-in for the lanes: real web streams, recording what is written.
function fakeLaneSession(maxDatagramSize = 100, { blockWrites = false } = {}) {
  const out = { datagrams: [], streams: [] };
  const blocked = [];
  let datagramsIn;
  let streamsIn;
  const session = {
    datagrams: {
      maxDatagramSize,
      readable: new ReadableStream({ start: (c) => void (datagramsIn = c) }),
      writable: new WritableStream({ write: (chunk) => void out.datagrams.push(chunk) }),
    },
    incomingUnidirectionalStreams: new ReadableStream({ start: (c) => void (streamsIn = c) }),
    async createUnidirectionalStream() {
      const s = { bytes: [], writing: false, closed: false, aborted: false };
      out.streams.push(s);
      return new WritableStream({
        write: (chunk) => {
          s.writing = true;
          return blockWrites ? new Promise((r) => blocked.push(r)) : void s.bytes.push(...chunk);
        },
        close: () => void (s.closed = true),
        abort: () => void (s.aborted = true),
      });
    },
  };
  /** An incoming stream the test feeds; `cancelled` tells whether the reader gave it up. */
  const incoming = () => {
    const s = { cancelled: false };
    streamsIn.enqueue(new ReadableStream({ start: (c) => void (s.controller = c), cancel: () => void (s.cancelled = true) }, { highWaterMark: 0 }));
    return s;
  };
  const release = () => blocked.splice(0).forEach((r) => r());
  return { session, out, pushDatagram: (b) => datagramsIn.enqueue(b), incoming, release };
}

test("media lanes send: datagrams when a frame fits, else one stream per group that keeps the rest of the group; a keyframe starts a group", async () => {
  const fake = fakeLaneSession(100);
  const lanes = new lib.MediaLanes(fake.session, () => {});
  const bytes = (n, v) => new Uint8Array(n).fill(v);
  const media = (keyframe, track = 1) => ({ room: "r", track, keyframe });
  assert.equal(lanes.send(bytes(100, 1), media(true)), "datagram", "fits exactly");
  assert.equal(lanes.send(bytes(300, 2), media(true)), "stream");
  assert.equal(lanes.send(bytes(50, 3), media(false)), "stream", "the group has a stream: the rest follows on it");
  assert.equal(lanes.send(bytes(200, 4), media(false)), "stream", "same group");
  assert.equal(lanes.send(bytes(200, 5), media(false, 2)), "stream", "another track: its own group");
  await until("group 1 written", () => fake.out.streams[0]?.bytes.length === 562);
  assert.equal(lanes.send(bytes(400, 6), media(true)), "stream", "a keyframe: a new group");
  await until("every write", () => fake.out.datagrams.length === 1 && fake.out.streams.length === 3 && fake.out.streams[0].closed && fake.out.streams[2].bytes.length > 0);
  assert.deepEqual(fake.out.datagrams.map((d) => [d.length, d[0]]), [[100, 1]], "datagrams carry the frame, no prefix");
  const records = (s) => {
    const dec = new lib.RecordDecoder(1 << 20);
    return dec.push(new Uint8Array(s.bytes)).map((r) => [r.length, r[0]]);
  };
  assert.deepEqual(records(fake.out.streams[0]), [[300, 2], [50, 3], [200, 4]], "group 1: its keyframe, then its deltas, in order");
  assert.deepEqual(records(fake.out.streams[1]), [[200, 5]]);
  assert.deepEqual(records(fake.out.streams[2]), [[400, 6]]);
  assert.equal(fake.out.streams[0].aborted, false, "a group whose frames were all taken is closed, not aborted");
  assert.equal(fake.out.streams[2].closed, false, "the current group stays open");
  assert.equal(lanes.outgoingGroups, 2);
  lanes.close();
  assert.equal(lanes.send(bytes(10, 7), media(false)), undefined, "nothing after close");
});

test("media lanes send: a group stream that cannot keep up drops frames and is aborted; backlogs are bounded", async () => {
  const fake = fakeLaneSession(100, { blockWrites: true });
  const lanes = new lib.MediaLanes(fake.session, () => {});
  const frame = new Uint8Array(100_000);
  const record = frame.length + 4;
  const send = (track, keyframe) => lanes.send(frame, { room: "r", track, keyframe });
  const results = [];
  for (let i = 0; i < 7; i++) results.push(send(1, i === 0));
  // The group's backlog takes five records; the sixth is dropped with its group (aborted:
  // stale), and the next frame opens a new group.
  const groupFits = Math.floor(lib.MAX_GROUP_BACKLOG / record);
  assert.equal(groupFits, 5);
  assert.deepEqual(results, ["stream", "stream", "stream", "stream", "stream", undefined, "stream"]);
  await until("both groups writing", () => fake.out.streams.length === 2 && fake.out.streams.every((s) => s.writing));
  // Group streams open at once are bounded.
  for (let t = 2; t < 2 + lib.MAX_OUTGOING_GROUPS + 3; t++) send(t, true);
  assert.equal(lanes.outgoingGroups, lib.MAX_OUTGOING_GROUPS);
  // So is what all of them hold, ended groups included (their writes are still stuck).
  let accepted = results.filter(Boolean).length + lib.MAX_OUTGOING_GROUPS + 3;
  for (let i = 0; i < 40; i++) if (send(100 + i, true)) accepted++;
  assert.ok(accepted * record <= lib.MAX_TOTAL_BACKLOG, `${accepted} records held`);
  assert.equal(send(200, true), undefined, "full");
  // Once the browser takes the stuck writes, the stale group's abort goes through.
  fake.release();
  await until("the stale group aborted", () => fake.out.streams[0].aborted);
  assert.equal(fake.out.streams.at(-1).aborted, false, "the newest group is still open");
  lanes.close();
});

test("media lanes receive: datagrams whole, stream records across chunks, bounded records and streams", async () => {
  const fake = fakeLaneSession();
  const got = [];
  const lanes = new lib.MediaLanes(fake.session, (frame, lane) => got.push([lane, [...frame]]));
  fake.pushDatagram(new Uint8Array([1, 2, 3]));
  const s = fake.incoming();
  await until("the stream is read", () => lanes.incomingStreams === 1 && s.controller);
  const stream = new Uint8Array([...lib.encodeRecord(new Uint8Array([4, 5])), ...lib.encodeRecord(new Uint8Array([6]))]);
  s.controller.enqueue(stream.slice(0, 3));
  s.controller.enqueue(stream.slice(3));
  await until("three frames", () => got.length === 3);
  assert.deepEqual(got, [["datagram", [1, 2, 3]], ["stream", [4, 5]], ["stream", [6]]]);
  // A reset stream (the node superseded the group) ends quietly.
  s.controller.error(new Error("reset"));
  await until("the reset stream forgotten", () => lanes.incomingStreams === 0);
  // A record over 256 KiB stops its stream.
  const big = fake.incoming();
  await until("the big stream is read", () => lanes.incomingStreams === 1 && big.controller);
  const header = new Uint8Array(4);
  new DataView(header.buffer).setUint32(0, lib.MAX_LANE_RECORD + 1);
  big.controller.enqueue(header);
  await until("the oversized stream cancelled", () => big.cancelled && lanes.incomingStreams === 0);
  // At most MAX_INCOMING_STREAMS are read at once: the oldest is given up.
  const many = [];
  for (let i = 0; i < lib.MAX_INCOMING_STREAMS + 2; i++) many.push(fake.incoming());
  await until("the oldest two cancelled", () => many[0].cancelled && many[1].cancelled && lanes.incomingStreams === lib.MAX_INCOMING_STREAMS);
  assert.equal(many[2].cancelled, false);
  assert.equal(got.length, 3);
  lanes.close();
  await until("every stream cancelled on close", () => many.every((m) => m.cancelled));
});

test("ICE servers: Welcome's as RTCPeerConnection takes them, refreshIceServers() asks again, renewal timing", async () => {
  protobuf ??= await import("@bufbuild/protobuf");
  const servers = (exp) => ({
    servers: [
      { urls: ["stun:turn.example.com:3478"] },
      { urls: ["turn:turn.example.com:3478?transport=udp"], username: `${exp}:bob`, credential: `cred-${exp}` },
    ],
    expiresAt: BigInt(exp),
  });
  const exp = Math.floor(Date.now() / 1000) + 3600;
  const asked = [];
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = fakeWebSocket(
    (ws) => ws.serverSend({ case: "welcome", value: { protocolVersion: 1, sessionId: "s", node: "n1", user: "bob", heartbeatMs: 15_000, iceServers: servers(exp) } }),
    (ws, frame) => {
      if (frame.kind.case !== "iceServersRequest") return;
      asked.push(frame.id);
      setTimeout(() => ws.serverSend({ case: "iceServers", value: { ...servers(exp + 60), refId: frame.id } }), 0);
    },
  );
  const client = new lib.SwitchboardClient({ nodes: ["ws://127.0.0.1:9/ws"], token: "t", transport: "websocket", reconnect: false });
  const events = [];
  client.on("iceServers", (s) => events.push(s.expiresAt));
  try {
    await client.connect();
    assert.deepEqual(client.iceServers, [
      { urls: ["stun:turn.example.com:3478"] },
      { urls: ["turn:turn.example.com:3478?transport=udp"], username: `${exp}:bob`, credential: `cred-${exp}` },
    ]);
    assert.equal(client.iceServersExpireAt, exp);
    const fresh = await client.refreshIceServers();
    assert.equal(asked.length, 1);
    assert.equal(fresh[1].username, `${exp + 60}:bob`);
    assert.equal(client.iceServersExpireAt, exp + 60);
    assert.deepEqual(events, [exp, exp + 60]);
  } finally {
    client.close();
    globalThis.WebSocket = saved;
  }
  // No servers: an empty list, nothing to renew.
  assert.deepEqual(lib.toIceServerSet(undefined), { iceServers: [], expiresAt: 0 });
  assert.equal(lib.iceRenewDelay(0, 0), undefined);
  // An hour's credentials are renewed five minutes before the end; five minutes' a minute before.
  assert.equal(lib.iceRenewDelay(3600, 0), 3300_000);
  assert.equal(lib.iceRenewDelay(300, 0), 240_000);
  assert.equal(lib.iceRenewDelay(10, 9_900), 1000, "at least a second away");
});

test("meeting layer choice: tile size caps the layer", () => {
  const layers = [{ width: 320, height: 180 }, { width: 640, height: 360 }, { width: 1280, height: 720 }];
  assert.equal(lib.layerForTile(layers, 120), 0, "a thumbnail");
  assert.equal(lib.layerForTile(layers, 180), 0);
  assert.equal(lib.layerForTile(layers, 181), 1);
  assert.equal(lib.layerForTile(layers, 700), 2);
  assert.equal(lib.layerForTile(layers, 2000), 2, "bigger than the top layer: the top");
  assert.equal(lib.layerForTile([], 500), 0);
});

test("meeting layer choice: bad windows move down, a clean hold-off moves up, failed probes back off", () => {
  const clean = { received: 30, lost: 0, longestGapMs: 40 };
  const lossy = { received: 20, lost: 10, longestGapMs: 40 };
  const frozen = { received: 5, lost: 0, longestGapMs: 1500 };
  const queued = { received: 27, lost: 3, longestGapMs: 1200 };
  for (const bad of [lossy, frozen, queued]) assert.ok(lib.isBadWindow(bad), JSON.stringify(bad));
  assert.equal(lib.badWindowReason(lossy), "loss 33%");
  assert.equal(lib.badWindowReason(frozen), "freeze 1500 ms");
  assert.ok(!lib.isBadWindow(clean));
  assert.ok(!lib.isBadWindow({ received: 0, lost: 0, longestGapMs: 0 }), "nothing sent is not bad");

  let t = 0;
  const c = new lib.LayerChoice(2, t, 1);
  assert.equal(c.layer, 1);
  assert.equal(c.observe(lossy, (t += 1000)), 1, "one bad window is a hiccup");
  assert.equal(c.observe(clean, (t += 1000)), 1);
  assert.equal(c.observe(lossy, (t += 1000)), 0, "down on the second bad window of three");
  assert.equal(c.observe(lossy, (t += 1000)), 0, "not below 0");
  // Clean windows: up only after the hold-off.
  let up;
  for (let i = 0; i < 20 && up === undefined; i++) if (c.observe(clean, (t += 1000)) === 1) up = t;
  assert.ok(up !== undefined, "moved up");
  const cleanFrom = up - lib.HOLD_OFF_MS;
  assert.ok(cleanFrom >= 2000, `up after ${lib.HOLD_OFF_MS} ms clean`);
  // The probe fails at once: down, and the next hold-off is doubled.
  assert.equal(c.observe(queued, (t += 1000)), 1);
  assert.equal(c.observe(queued, (t += 1000)), 0);
  assert.equal(c.upHoldOff, 2 * lib.HOLD_OFF_MS, "a failed probe doubles the hold-off");
  let secondUp;
  for (let i = 0; i < 40 && secondUp === undefined; i++) if (c.observe(clean, (t += 1000)) === 1) secondUp = t;
  assert.ok(secondUp - up >= 2 * lib.HOLD_OFF_MS, "the second probe waited the doubled hold-off");
  // Failed probes never wait longer than the maximum.
  for (let i = 0; i < 10; i++) {
    c.observe(frozen, (t += 1000));
    c.observe(frozen, (t += 1000));
    for (let j = 0; j < 70 && c.layer === 0; j++) c.observe(clean, (t += 1000));
  }
  assert.equal(c.upHoldOff, lib.MAX_HOLD_OFF_MS);
  // A long stable stretch resets it.
  for (let i = 0; i < 61; i++) c.observe(clean, (t += 1000));
  assert.equal(c.upHoldOff, lib.HOLD_OFF_MS);
});

test("meeting layer choice: a small tile keeps the low layer whatever the delivery; growing it asks for more", () => {
  const clean = { received: 30, lost: 0, longestGapMs: 40 };
  const c = new lib.LayerChoice(3, 0, 0);
  for (let t = 1000; t < 30_000; t += 1000) assert.equal(c.observe(clean, t), 0);
  assert.equal(c.setTileLayer(2), 2, "a bigger tile asks for its layer at once");
  assert.equal(c.setTileLayer(9), 2, "bounded by the layers sent");
});

test("audio levels are RFC 6464 -dBov", () => {
  assert.equal(lib.levelFromRms(1), 0);
  assert.equal(lib.levelFromRms(0.1), 20);
  assert.equal(lib.levelFromRms(0.001), 60);
  assert.equal(lib.levelFromRms(0), 127);
  assert.equal(lib.levelFromRms(1e-9), 127, "clamped");
  assert.equal(lib.levelFromRms(Number.NaN), 127);
});

test("meeting delivery windows: sequence gaps per layer, freezes the path caused, not the sender's pauses", () => {
  const asked = [];
  const client = { requestKeyframe: (room, session, track) => (asked.push(track), true) };
  const v = new lib.RemoteVideo(client, "r", "s1", 2);
  // Delta frames only (no decoder needed: the receiver waits for a keyframe).
  const frame = (seq, tsMs, layer = 1) => ({ room: "r", track: 10 + layer, layer, seq: BigInt(seq), timestamp: BigInt(tsMs * 1000), keyframe: false, codec: "vp8", payload: new Uint8Array(100) });
  let t = 1000;
  for (let i = 0; i < 10; i++) v.onFrame(frame(i, i * 66), (t += 66));
  // The sender paused 2 s (its camera, or a busy encoder): frames captured 2 s apart.
  v.onFrame(frame(10, 10 * 66 + 2000), (t += 2000));
  let w = v.takeWindow();
  assert.equal(w.received, 11);
  assert.equal(w.lost, 0);
  assert.ok(w.longestGapMs < 5, `a sender's pause is no freeze: ${w.longestGapMs}`);
  // The path held a frame back 1.5 s: a freeze of ~1.43 s.
  v.onFrame(frame(11, 10 * 66 + 2066), (t += 1500));
  // Two frames lost on the way.
  v.onFrame(frame(14, 10 * 66 + 2264), (t += 200));
  w = v.takeWindow();
  assert.ok(w.longestGapMs > 1400 && w.longestGapMs < 1500, String(w.longestGapMs));
  assert.equal(w.lost, 2);
  assert.equal(lib.badWindowReason(w), "loss 50%");
  // A new layer starts its own numbering: no gap counted across the switch.
  v.onFrame(frame(500, 10 * 66 + 2330, 0), (t += 66));
  assert.equal(v.takeWindow().lost, 0);
  assert.equal(v.stats.layer, 0);
  assert.ok(asked.length >= 1 && asked.every((tr) => tr === 11 || tr === 10), JSON.stringify(asked));
  assert.deepEqual(v.stats.bytesByLayer, [100, 1300]);
});

test("meeting roster: presence events read with the Joined (before join() resumes) are not undone by its snapshot", async () => {
  protobuf ??= await import("@bufbuild/protobuf");
  const person = (i) => ({ user: `u${i}`, session: `s${i}`, name: `U${i}`, node: "n1" });
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = fakeWebSocket(
    (ws) => ws.serverSend({ case: "welcome", value: { protocolVersion: 1, sessionId: "s0", node: "n1", user: "u0", heartbeatMs: 15_000 } }),
    (ws, frame) => {
      const { kind, id } = frame;
      setTimeout(() => {
        if (kind.case === "leave") ws.serverSend({ case: "ack", value: { refId: id } });
        if (kind.case !== "join") return;
        const room = kind.value.room;
        // The snapshot has s0 (us), s1 and s2; in the same turn s3 joins and s2 leaves.
        ws.serverSend({ case: "joined", value: { refId: id, room, participants: [person(0), person(1), person(2)], participantCount: 3 } });
        ws.serverSend({ case: "participantJoined", value: { room, participant: person(3) } });
        ws.serverSend({ case: "participantLeft", value: { room, participant: person(2), reason: "left" } });
      }, 0);
    },
  );
  const client = new lib.SwitchboardClient({ nodes: ["ws://127.0.0.1:9/ws"], token: "t", transport: "websocket", reconnect: false });
  try {
    await client.connect();
    const meeting = new lib.Meeting(client, "m");
    try {
      await meeting.join(); // no camera or microphone: watching only
      assert.deepEqual(meeting.participants().map((p) => p.session).sort(), ["s1", "s3"]);
    } finally {
      await meeting.leave();
    }
  } finally {
    client.close();
    globalThis.WebSocket = saved;
  }
});
