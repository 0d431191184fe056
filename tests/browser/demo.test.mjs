// The web client and demo in a real browser (Debian's Chromium, headless, driven by
// playwright-core) against a real cluster: nats-server and two Switchboard nodes, pages on
// different nodes, one over WebSocket and one over WebTransport.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Cluster, ROOT, waitFor } from "./cluster.mjs";
import { launchChromium } from "./lab.mjs";

const ARTIFACTS = join(ROOT, "target/browser-artifacts");
const WAIT = 30_000;

let cluster;
let browser;
let nodeA;
let nodeB;
const pages = [];

/** Open the demo as `name`, served by `served`, connecting to `nodes` in order. */
async function openDemo(name, served, { nodes, transport = "auto", room = "lobby", relay = false, ttl } = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await context.grantPermissions(["camera", "microphone"], { origin: served.origin });
  const page = await context.newPage();
  page.logs = [];
  page.on("console", (m) => page.logs.push(`[${name}] ${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => page.logs.push(`[${name}] pageerror: ${e.message}`));
  const list = (nodes ?? [served]).map((n) => n.origin).join(",");
  const q = new URLSearchParams({ name, room, transport, nodes: list });
  if (relay) q.set("relay", "1");
  if (ttl) q.set("ttl", String(ttl));
  await page.goto(`${served.origin}/?${q}`, { timeout: WAIT });
  await page.waitForFunction(() => document.getElementById("conn-state")?.textContent === "connected" && !document.getElementById("main").hidden, null, { timeout: WAIT });
  // The sign-in form is gone and the app is visible (as rendered, not just attributes).
  await page.waitForSelector("#signin", { state: "hidden", timeout: WAIT });
  await page.waitForSelector("#chat-input", { state: "visible", timeout: WAIT });
  pages.push(page);
  return page;
}

const transportOf = (page) => page.evaluate(() => document.getElementById("transport").dataset.transport);
const hasPerson = (page, user) => page.waitForFunction((u) => !!document.querySelector(`#people li[data-user="${u}"]`), user, { timeout: WAIT });
const chatTexts = (page) => page.evaluate(() => window.demo.chatLog.map((m) => m.text));

async function say(page, text) {
  await page.fill("#chat-input", text);
  await page.press("#chat-input", "Enter");
  await page.waitForFunction((t) => window.demo.chatLog.some((m) => m.text === t), text, { timeout: WAIT });
}

async function waitForText(page, text) {
  await page.waitForFunction((t) => window.demo.chatLog.some((m) => m.text === t), text, { timeout: WAIT });
}

/** Call `callee` from `caller`'s page and accept on `acceptOn`; resolves when both are in the call. */
async function callAndAccept(caller, callee, acceptOn, otherCalleeTabs = []) {
  await caller.click(`#people li[data-user="${callee}"] .call-btn`);
  await caller.waitForSelector("#outgoing:not([hidden])", { timeout: WAIT });
  for (const tab of [acceptOn, ...otherCalleeTabs]) await tab.waitForSelector("#incoming:not([hidden])", { timeout: WAIT });
  await acceptOn.click("#accept");
  for (const tab of otherCalleeTabs) await tab.waitForSelector("#incoming", { state: "hidden", timeout: WAIT });
  await caller.waitForSelector("#in-call:not([hidden])", { timeout: WAIT });
  await acceptOn.waitForSelector("#in-call:not([hidden])", { timeout: WAIT });
}

async function hangUp(page, others) {
  await page.click("#hangup");
  for (const p of [page, ...others]) await p.waitForSelector("#in-call", { state: "hidden", timeout: WAIT });
}

describe("web client and demo in Chromium", () => {
  before(async () => {
    cluster = new Cluster();
    await cluster.startNats();
    [nodeA, nodeB] = await Promise.all([cluster.startNode("node-a"), cluster.startNode("node-b")]);
    browser = await launchChromium({});
    mkdirSync(ARTIFACTS, { recursive: true });
  });

  after(async () => {
    await browser?.close();
    await cluster?.stop();
  });

  // Print the pages' consoles and the nodes' logs when a test fails.
  const diagnose = async (fn) => {
    try {
      await fn();
    } catch (e) {
      for (const p of pages) console.error(p.logs.slice(-30).join("\n"));
      console.error(cluster.logs());
      throw e;
    }
  };

  let alice; // node A, WebSocket
  let bob; // node B, WebTransport
  let bob2; // node A, Bob's second tab

  test("chat and presence between a WebSocket page and a WebTransport page on different nodes", () =>
    diagnose(async () => {
      alice = await openDemo("Alice", nodeA, { nodes: [nodeA, nodeB], transport: "websocket" });
      bob = await openDemo("Bob", nodeB, { nodes: [nodeB, nodeA], transport: "webtransport" });
      assert.equal(await transportOf(alice), "websocket");
      assert.equal(await transportOf(bob), "webtransport");
      assert.equal(await alice.textContent("#transport"), "WS");
      assert.equal(await bob.textContent("#transport"), "WT");
      assert.equal(await alice.textContent("#node"), "node-a");
      assert.equal(await bob.textContent("#node"), "node-b");
      await hasPerson(alice, "bob");
      await hasPerson(bob, "alice");
      await say(alice, "hello from Alice over WebSocket");
      await waitForText(bob, "hello from Alice over WebSocket");
      await say(bob, "hi Alice, Bob over WebTransport");
      await waitForText(alice, "hi Alice, Bob over WebTransport");
      assert.deepEqual(await chatTexts(alice), ["hello from Alice over WebSocket", "hi Alice, Bob over WebTransport"]);
      // A second tab of Bob's (on the other node) shows up as the same person.
      // "auto" picks WebTransport when the browser and the node have it.
      bob2 = await openDemo("Bob", nodeA, { nodes: [nodeA, nodeB], transport: "auto" });
      assert.equal(await transportOf(bob2), "webtransport");
      await alice.waitForFunction(() => document.querySelector('#people li[data-user="bob"] .where')?.textContent.includes("2 tabs"), null, { timeout: WAIT });
    }));

  test("a WebRTC call signaled through two nodes: rings on every tab, accept, media flows", () =>
    diagnose(async () => {
      await callAndAccept(alice, "bob", bob, [bob2]);
      assert.match(await bob2.textContent("#call-info"), /answered on another device/);
      const connected = async (page) =>
        waitFor("WebRTC connected with remote frames decoded", async () => {
          const s = await page.evaluate(() => window.demo.p2pStats());
          return s.connectionState === "connected" && s.framesDecoded > 0 && s;
        }, WAIT, 250);
      const [sa, sb] = await Promise.all([connected(alice), connected(bob)]);
      console.log(`P2P: alice ${JSON.stringify(sa)}, bob ${JSON.stringify(sb)}`);
      assert.equal(await alice.textContent("#media-path"), "P2P");
      // Mute and camera off are local toggles of the tracks.
      await alice.click("#mute");
      assert.equal(await alice.evaluate(() => window.demo.call.local.getAudioTracks().every((t) => !t.enabled)), true);
      await alice.click("#mute");
      const shot = join(ARTIFACTS, "demo-call-p2p.png");
      await alice.screenshot({ path: shot });
      console.log(`screenshot: ${shot}`);
      await hangUp(alice, [bob]);
      await alice.waitForFunction(() => /completed/.test(document.getElementById("history").textContent), null, { timeout: WAIT });
      await bob.waitForFunction(() => /completed/.test(document.getElementById("history").textContent), null, { timeout: WAIT });
    }));

  test("forced relayed media: VP8 video and Opus audio through the cluster, decoded on the other page", () =>
    diagnose(async () => {
      await alice.check("#force-relay");
      await callAndAccept(alice, "bob", bob, [bob2]);
      const N = 30;
      const decoded = (page) =>
        waitFor(`more than ${N} relayed frames decoded`, async () => {
          const s = await page.evaluate(() => window.demo.relayStats());
          return s && s.framesDecoded > N && s;
        }, WAIT, 250);
      const [ra, rb] = await Promise.all([decoded(alice), decoded(bob)]);
      console.log(`relayed: alice ${JSON.stringify(ra)}\nrelayed: bob ${JSON.stringify(rb)}`);
      assert.equal(await alice.textContent("#media-path"), "relayed");
      assert.equal(await bob.textContent("#media-path"), "relayed");
      // Audio: the fake microphone's beep, Opus through the cluster on track 2, decoded and
      // scheduled on an AudioContext on the other page.
      const A = 20;
      const audioDecoded = (page) =>
        waitFor(`more than ${A} relayed audio frames decoded`, async () => {
          const s = await page.evaluate(() => window.demo.relayStats());
          return s && s.audioFramesDecoded > A && s;
        }, WAIT, 250);
      const [aa, ab] = await Promise.all([audioDecoded(alice), audioDecoded(bob)]);
      console.log(`relayed audio: alice ${JSON.stringify(aa)}\nrelayed audio: bob ${JSON.stringify(ab)}`);
      for (const s of [aa, ab]) {
        assert.equal(s.audioRelayed, true);
        assert.ok(s.audioFramesSent > A && s.audioFramesReceived > A && s.audioFramesPlayed > 0, JSON.stringify(s));
      }
      for (const p of [alice, bob]) assert.match(await p.textContent("#call-status"), /^relayed \(video \+ audio\) through Switchboard/);
      // Muted, Alice sends no audio; unmuted, she sends again.
      await alice.click("#mute");
      await new Promise((r) => setTimeout(r, 300)); // frames already in the encoder come out
      const mutedAt = await alice.evaluate(() => window.demo.relayStats().audioFramesSent);
      await new Promise((r) => setTimeout(r, 600));
      assert.equal(await alice.evaluate(() => window.demo.relayStats().audioFramesSent), mutedAt, "no audio sent while muted");
      await alice.click("#mute");
      await waitFor("Alice to send audio again after unmuting", () => alice.evaluate((n) => window.demo.relayStats().audioFramesSent > n + 10, mutedAt), WAIT, 100);
      // The canvas shows the decoded picture.
      // A lost frame: Bob drops everything up to the next keyframe and asks Alice for one
      // (KeyframeRequest through node B and NATS to node A); Alice forces a keyframe and
      // Bob decodes again.
      const before = await bob.evaluate(() => window.demo.relayStats().framesDecoded);
      await bob.evaluate(() => window.demo.call.relay.simulateLoss(3));
      await waitFor("Alice to get Bob's keyframe request", () => alice.evaluate(() => window.demo.relayStats().keyframeRequestsReceived >= 1), WAIT, 100);
      await waitFor("Bob to decode again after the keyframe", () => bob.evaluate((n) => window.demo.relayStats().framesDecoded > n + 10, before), WAIT, 100);
      const after = await bob.evaluate(() => window.demo.relayStats());
      assert.ok(after.keyframeRequestsSent >= 1 && after.framesDropped >= 1, JSON.stringify(after));
      const size = await bob.evaluate(() => [document.getElementById("remote-canvas").width, document.getElementById("remote-canvas").height]);
      assert.ok(size[0] > 0 && size[1] > 0, `canvas ${size}`);
      const shot = join(ARTIFACTS, "demo-call-relayed.png");
      await bob.screenshot({ path: shot });
      console.log(`screenshot: ${shot}`);
      await hangUp(bob, [alice]);
      await alice.uncheck("#force-relay");
    }));

  test("media lanes: the WebTransport page's relayed media goes on datagrams and streams, the WebSocket page's on its socket", () =>
    diagnose(async () => {
      // The counters as each page shows them (#media-stats, refreshed twice a second), since
      // the page signed in: take them now and compare after this call.
      const ZERO = { inDatagrams: 0, inStreams: 0, inControl: 0, outDatagrams: 0, outStreams: 0, outControl: 0, staleDropped: 0, sendDropped: 0 };
      const shown = async (page) => ({ ...ZERO, ...(await page.evaluate(() => JSON.parse(document.getElementById("media-stats").dataset.stats ?? "{}"))) });
      const delta = (now, then) => Object.fromEntries(Object.keys(ZERO).map((k) => [k, now[k] - then[k]]));
      const [a0, b0] = [await shown(alice), await shown(bob)];
      await alice.check("#force-relay");
      await callAndAccept(alice, "bob", bob, [bob2]);
      const N = 30;
      const decoded = (page) =>
        waitFor(`more than ${N} relayed video frames decoded`, async () => {
          const s = await page.evaluate(() => window.demo.relayStats());
          return s && s.framesDecoded > N && s;
        }, WAIT, 250);
      const [ra, rb] = await Promise.all([decoded(alice), decoded(bob)]);
      // Bob (WebTransport, node B): everything he decoded came on lanes, and he sent on lanes.
      const db = await waitFor("Bob's page to show his lanes", async () => {
        const s = await shown(bob);
        const d = delta(s, b0);
        return s.lanes && d.inDatagrams + d.inStreams > N && d.outDatagrams + d.outStreams > N && { ...d, lanes: s.lanes };
      }, WAIT, 250);
      // Alice (WebSocket, node A): no lanes; her media came and went on the socket.
      const da = await waitFor("Alice's page to show her socket's media", async () => {
        const s = await shown(alice);
        const d = delta(s, a0);
        return s.lanes === false && d.inControl > N && d.outControl > N && { ...d, lanes: s.lanes };
      }, WAIT, 250);
      console.log(`lanes: bob (WT) ${JSON.stringify(db)} decoded ${rb.framesDecoded}\nlanes: alice (WS) ${JSON.stringify(da)} decoded ${ra.framesDecoded}`);
      assert.equal(db.inControl, 0, "no media for Bob on his control stream: " + JSON.stringify(db));
      assert.equal(db.outControl, 0, "Bob sent no media on his control stream: " + JSON.stringify(db));
      assert.deepEqual([da.inDatagrams, da.inStreams, da.outDatagrams, da.outStreams], [0, 0, 0, 0], JSON.stringify(da));
      assert.match(await bob.textContent("#media-stats"), /^media lanes: on/);
      assert.match(await alice.textContent("#media-stats"), /^media lanes: off/);
      await hangUp(bob, [alice]);
      await alice.uncheck("#force-relay");
    }));

  test("token refresh: a short-lived token is replaced over the open session", () =>
    diagnose(async () => {
      const page = await openDemo("Erin", nodeB, { nodes: [nodeB], transport: "webtransport", room: "refresh", ttl: 10 });
      await page.waitForFunction(() => window.demo.tokenRefreshes >= 2, null, { timeout: WAIT });
      assert.equal(await page.textContent("#conn-state"), "connected");
      await say(page, "still here after two refreshes");
    }));

  test("origins: a page reads another node's API under --allowed-origins; others are refused; connect() says why", () =>
    diagnose(async () => {
      // Node D allows pages from node A only.
      const nodeD = await cluster.startNode("node-d", ["--allowed-origins", nodeA.origin]);
      const frank = await openDemo("Frank", nodeA, { nodes: [nodeD], transport: "websocket", room: "origins" });
      assert.equal(await frank.textContent("#node"), "node-d");
      // The README's example: call history from the node connected, another origin.
      const history = await frank.evaluate(() => window.demo.client.callHistory(5).then((c) => Array.isArray(c), (e) => String(e)));
      assert.equal(history, true);
      // connect() rejects with the server's ErrorCode.
      const refused = await frank.evaluate(async (origin) => {
        const { SwitchboardClient, ErrorCode } = await import("/app/switchboard.js");
        const client = new SwitchboardClient({ nodes: [origin], token: "not-a-token", transport: "websocket" });
        return client.connect().then(
          () => "connected",
          (e) => ({ name: e.name, code: e.code, expected: ErrorCode.TOKEN_INVALID, message: e.message }),
        );
      }, nodeD.origin);
      assert.equal(refused.name, "SwitchboardError", JSON.stringify(refused));
      assert.equal(refused.code, refused.expected, JSON.stringify(refused));

      // A page from node B (not allowed on node D): no cross-origin reads, no WebTransport.
      const context = await browser.newContext();
      const page = await context.newPage();
      pages.push(page);
      await page.goto(`${nodeB.origin}/node`, { timeout: WAIT });
      const outsider = await page.evaluate(async (origin) => {
        const read = await fetch(`${origin}/api/endpoints`).then(() => "read", () => "blocked");
        const { token } = await (await fetch("/api/dev/token", { method: "POST", headers: { "content-type": "application/json" }, body: '{"name":"Mallory"}' })).json();
        const { SwitchboardClient } = await import("/app/switchboard.js");
        const client = new SwitchboardClient({ nodes: [origin], token, transport: "webtransport", reconnect: false });
        const wt = await client.connect().then(() => "connected", (e) => e.name);
        return { read, wt };
      }, nodeD.origin);
      assert.deepEqual(outsider, { read: "blocked", wt: "SwitchboardError" });
      await context.close();
      await nodeD.proc.kill();
    }));

  test("reconnect: the node a page is on dies; it moves to the other node and recovers missed messages once", () =>
    diagnose(async () => {
      const nodeC = await cluster.startNode("node-c");
      const room = "recovery";
      // Carol's page comes from node A but connects to node C first.
      const carol = await openDemo("Carol", nodeA, { nodes: [nodeC, nodeA], transport: "websocket", room });
      const dave = await openDemo("Dave", nodeB, { nodes: [nodeB], transport: "webtransport", room });
      assert.equal(await carol.textContent("#node"), "node-c");
      await hasPerson(carol, "dave");
      for (let i = 1; i <= 3; i++) await say(dave, `before ${i}`);
      for (let i = 1; i <= 3; i++) await waitForText(carol, `before ${i}`);
      // Freeze node C so nothing reaches Carol, publish while she cannot receive, then kill it.
      nodeC.proc.signal("SIGSTOP");
      for (let i = 1; i <= 5; i++) await say(dave, `missed ${i}`);
      await nodeC.proc.kill();
      await carol.waitForFunction(() => document.getElementById("node").textContent === "node-a" && document.getElementById("conn-state").textContent === "connected", null, { timeout: WAIT });
      for (let i = 1; i <= 5; i++) await waitForText(carol, `missed ${i}`);
      await say(dave, "after");
      await waitForText(carol, "after");
      await say(carol, "carol is back");
      await waitForText(dave, "carol is back");
      const texts = await chatTexts(carol);
      const expected = ["before 1", "before 2", "before 3", "missed 1", "missed 2", "missed 3", "missed 4", "missed 5", "after", "carol is back"];
      assert.deepEqual(texts, expected, "every message once, in order");
      const recovered = await carol.evaluate(() => [...document.querySelectorAll("#messages li.system")].map((li) => li.textContent));
      console.log(`carol: ${recovered.join(" | ")}`);
      // Messages published while Carol was cut off came back with the rejoin (the node
      // replays them after `resume_from`; one published just before may also come live
      // from the new node's history follower: either way once, in order, as checked above).
      assert.ok(recovered.some((t) => /reconnected to node-a; [1-5] missed message/.test(t)), recovered.join("\n"));
    }));
});
