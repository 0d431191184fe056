// A meeting of four in real browsers, through the relay: four demo pages across two nodes
// (WebSocket and WebTransport pages mixed) each send their camera as two simulcast layers
// (180p, 360p) and their microphone, and decode everyone else's video. Then one page's
// downlink is capped below what three 360p layers need: that page drops to the low layer of
// every sender (its own layer choice and the node's), and keeps decoding, while the three
// others stay on each other's high layer; once the cap is lifted it climbs back.
//
// With root and network namespaces (target/debug/netns-lab): hosts `srv` (nats-server and
// both nodes), `fast` (a Chromium with three pages) and `slow` (a Chromium with one page),
// each its own address behind a router; the cap is a token bucket on the router's side of
// `slow`'s link (`downlink slow KBIT`). Without them (MEETING_TEST_MODE=loopback, or not
// root): everything on loopback, and the slow page's link is stood in for by discarding most
// of the frames it receives (the meeting's `simulateLoss` testing aid).
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { freeTcpPort, freeUdpPort, ROOT, waitFor } from "./cluster.mjs";
import { answers200, Lab, labsAvailable, launchChromium, runOn } from "./lab.mjs";

const SWITCHBOARD = process.env.SWITCHBOARD_BIN ?? join(ROOT, "target/debug/switchboard");
const NATS = process.env.NATS_SERVER_BIN ?? "nats-server";
const NETNS = process.env.MEETING_TEST_MODE !== "loopback" && labsAvailable();
const WAIT = 60_000;
/** Camera rate: 15 fps keeps four pages' encoders and decoders within a 2-core machine. */
const FPS = 15;
/** Opus at 32 kbit/s with its framing, per sender, kbit/s (an upper bound). */
const AUDIO_KBIT = 45;

/**
 * The camera: a Y4M file of a moving gradient under fine noise, new every frame. Chromium's
 * built-in fake camera is so plain that VP8 codes its 360p in ~125 kbit/s, hardly more than
 * its 180p; fine detail is what a higher layer adds (scaled down, the noise averages out), so
 * here each layer uses about its bitrate and they differ as a real camera's do.
 */
function writeCameraFile(path, width = 640, height = 360, frames = 15) {
  const header = Buffer.from(`YUV4MPEG2 W${width} H${height} F${FPS}:1 Ip A1:1 C420jpeg\n`);
  const ySize = width * height;
  const frame = Buffer.alloc(6 + ySize * 1.5);
  const parts = [header];
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 24);
  for (let f = 0; f < frames; f++) {
    frame.write("FRAME\n", 0);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const base = 64 + ((x + y + 8 * f) % 128);
        frame[6 + y * width + x] = base + (rand() % 48) - 24;
      }
    }
    frame.fill(128, 6 + ySize);
    parts.push(Buffer.from(frame));
  }
  writeFileSync(path, Buffer.concat(parts));
}

let dir;
let lab;
const procs = [];
const browsers = {};
const pages = [];
let nodes = [];
/** The pages of the first test, by name, for the second. */
const byName = {};

const on = (ns, name, cmd, args, env) => runOn(procs, ns, name, cmd, args, env);

async function launchBrowser(ns, name, origins, camera) {
  browsers[name] = await launchChromium({
    dir,
    ns,
    name,
    // The lab's addresses are plain HTTP: camera, WebCodecs and WebTransport there.
    origins,
    args: [
      `--use-file-for-fake-video-capture=${camera}`,
      // Background pages must keep their timers and encoders at full rate.
      "--disable-background-timer-throttling",
      "--disable-renderer-backgrounding",
      "--disable-backgrounding-occluded-windows",
    ],
  });
  return browsers[name];
}

/** A demo page that joins `team`'s meeting at once. */
async function openMeeting(browser, name, node, transport) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await context.grantPermissions(["camera", "microphone"], { origin: node.origin });
  const page = await context.newPage();
  page.label = `${name} (${transport} to ${node.id})`;
  page.logs = [];
  page.on("console", (m) => page.logs.push(`[${name}] ${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => page.logs.push(`[${name}] pageerror: ${e.message}`));
  const q = new URLSearchParams({ name, room: "team", transport, nodes: node.origin, meeting: "1", fps: String(FPS) });
  await waitFor(`the demo at ${node.origin} for ${name}`, async () => (await page.goto(`${node.origin}/?${q}`, { timeout: 10_000 }))?.ok(), 60_000, 250);
  await page.waitForFunction(() => document.getElementById("conn-state")?.textContent === "connected", null, { timeout: WAIT });
  await page.waitForSelector("#meeting:not([hidden])", { timeout: WAIT });
  pages.push(page);
  return page;
}

/** What `page` gets of each other participant, by user: layer asked, layer arriving, frames. */
function received(page) {
  return page.evaluate(() => {
    const m = window.demo.meeting;
    if (!m) return {};
    const stats = m.stats().received;
    const out = {};
    for (const p of m.participants()) {
      const s = stats[p.session];
      out[p.user] = { requested: s.requestedLayer, layer: s.layer, decoded: s.framesDecoded, byLayer: s.framesDecodedByLayer, lost: s.framesLost, height: s.height, holdOff: s.upHoldOffMs, downs: s.downMoves, why: s.lastDownReason };
    }
    return out;
  });
}

/** Waits until every other participant's frames of `layer` are being decoded on `page` (and returns the figures). */
async function waitForLayer(page, others, layer, what) {
  let last;
  let before;
  return waitFor(`${page.label}: ${what}`, async () => {
    last = await received(page);
    // ...and the frames decoded are that layer's size (the default layers: 180p, 360p).
    const height = layer === 0 ? 180 : 360;
    const ok = others.every((u) => last[u]?.layer === layer && last[u].requested >= 0 && last[u].height === height);
    if (!ok) {
      before = undefined;
      return false;
    }
    // ...and frames of it keep being decoded (two samples apart).
    if (!before) {
      before = last;
      return false;
    }
    const growing = others.every((u) => last[u].byLayer[layer] > before[u].byLayer[layer]);
    before = last;
    return growing && last;
  }, WAIT, 500).catch((e) => {
    throw new Error(`${e.message}; last: ${JSON.stringify(last)}`);
  });
}

/** Each page's video bitrate by layer, kbit/s, over `ms`. */
async function sendRates(list, ms) {
  const sent = () => Promise.all(list.map((p) => p.evaluate(() => window.demo.meeting.stats().sent.bytesSent)));
  const before = await sent();
  const t0 = Date.now();
  await new Promise((r) => setTimeout(r, ms)); // a measurement interval, not a wait for an event
  const after = await sent();
  const secs = (Date.now() - t0) / 1000;
  return after.map((a, i) => a.map((bytes, l) => Math.round(((bytes - before[i][l]) * 8) / 1000 / secs)));
}

describe(`a meeting of four across two nodes, one page's link thinned (${NETNS ? "network namespaces" : "loopback, simulated loss"})`, () => {
  let hosts = {};
  before(async () => {
    const t0 = Date.now();
    dir = mkdtempSync(join(tmpdir(), "switchboard-meeting-"));
    if (NETNS) {
      lab = await Lab.start(["--name", "meet", "--host", "srv", "--host", "fast", "--host", "slow"]);
      hosts = lab.hosts;
      assert.ok(hosts.srv && hosts.fast && hosts.slow, lab.out);
    }
    const addr = hosts.srv?.addr ?? "127.0.0.1";
    const natsPort = NETNS ? 4222 : await freeTcpPort();
    const nats = on(hosts.srv?.ns, "nats", NATS, ["-js", "-a", addr, "-p", String(natsPort), "-sd", join(dir, "js")]);
    await waitFor("nats-server", () => nats.output.includes("Server is ready") || (!nats.alive && Promise.reject(new Error(nats.tail()))), 20_000);
    nodes = [];
    for (const [i, id] of ["node-a", "node-b"].entries()) {
      const http = NETNS ? 8080 + i : await freeTcpPort();
      const wt = NETNS ? 4433 + i : await freeUdpPort();
      const proc = on(hosts.srv?.ns, id, SWITCHBOARD, [
        "serve",
        "--nats-url", `nats://${addr}:${natsPort}`,
        "--http-addr", `${addr}:${http}`,
        "--wt-addr", `${addr}:${wt}`,
        "--node-id", id,
        "--drain-timeout", "1",
      ], { RUST_LOG: "info" });
      nodes.push({ id, proc, origin: `http://${addr}:${http}` });
    }
    for (const n of nodes) {
      await waitFor(`${n.id} to be ready`, async () => {
        if (!n.proc.alive) throw new Error(`${n.id} exited:\n${n.proc.tail()}`);
        return answers200(hosts.srv?.ns, `${n.origin}/readyz`);
      }, 60_000, 200);
    }
    const origins = nodes.map((n) => n.origin);
    const camera = join(dir, "camera.y4m");
    writeCameraFile(camera);
    await Promise.all([launchBrowser(hosts.fast?.ns, "fast", origins, camera), launchBrowser(hosts.slow?.ns, "slow", origins, camera)]);
    console.log(`set up in ${Date.now() - t0} ms`);
  });

  after(async () => {
    await Promise.all(Object.values(browsers).map((b) => b.close().catch(() => {})));
    await Promise.all(procs.map((p) => p.kill()));
    await lab?.stop(); // netns-lab tears the namespaces (and qdiscs) down
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("every page decodes everyone on the high layer; the thinned page drops to the low layer, the others stay high; it climbs back", async () => {
    const [a, b] = nodes;
    const users = ["ann", "ben", "cid", "dee"];
    let slowLoss;
    try {
      const ann = await openMeeting(browsers.fast, "Ann", a, "websocket");
      const ben = await openMeeting(browsers.fast, "Ben", b, "webtransport");
      const cid = await openMeeting(browsers.fast, "Cid", b, "websocket");
      const dee = await openMeeting(browsers.slow, "Dee", a, "webtransport");
      const all = [ann, ben, cid, dee];
      Object.assign(byName, { ann, ben, cid, dee });
      const fast = [ann, ben, cid];
      const others = (page) => users.filter((u) => u !== users[all.indexOf(page)]);
      for (const [page, t] of [[ann, "websocket"], [ben, "webtransport"], [cid, "websocket"], [dee, "webtransport"]]) {
        assert.equal(await page.evaluate(() => document.getElementById("transport").dataset.transport), t, page.label);
      }

      // 1. Everyone sees everyone: four tiles, and each other participant's 360p layer decoded
      //    (the tiles are large: 2 x 2 on a 1280 x 800 page).
      for (const page of all) {
        await page.waitForFunction(() => document.querySelectorAll("#meeting-grid .tile").length === 4, null, { timeout: WAIT });
        const got = await waitForLayer(page, others(page), 1, "every other participant's high layer decoded");
        for (const u of others(page)) assert.equal(got[u].height, 360, `${page.label} decodes ${u}'s 360p frames: ${JSON.stringify(got[u])}`);
      }
      // Audio flows too (Opus through the relay, decoded on every page).
      for (const page of all) {
        await waitFor(`${page.label}: audio decoded`, () => page.evaluate(() => window.demo.meeting.stats().audio.audioFramesDecoded > 50), WAIT, 250);
      }

      // 2. Thin Dee's downlink below what the three others' high layers need and well above
      //    what their low layers need, as measured from what they send now.
      const rates = await sendRates(fast, 4000);
      const need = (layer) => rates.reduce((sum, r) => sum + r[layer], 0) + 3 * AUDIO_KBIT;
      const cap = Math.round(Math.max(1.6 * need(0), (need(0) + need(1)) / 2));
      console.log(`senders' layers (kbit/s): ${JSON.stringify(rates)}; Dee needs ${need(0)} low, ${need(1)} high; cap ${cap}`);
      assert.ok(cap < 0.8 * need(1), `the layers differ too little to thin one link between them: ${JSON.stringify(rates)}`);
      if (NETNS) {
        await lab.command(`downlink slow ${cap}`);
      } else {
        // Stand-in: lose most of what arrives of the high layer, as an overfull link would.
        slowLoss = setInterval(() => {
          dee.evaluate(() => {
            const m = window.demo.meeting;
            for (const [s, st] of Object.entries(m.stats().received)) if (st.layer === 1) m.simulateLoss(s, 10);
          }).catch(() => {});
        }, 300);
      }
      const low = await waitForLayer(dee, others(dee), 0, "every sender's low layer, on the thinned link");
      for (const u of others(dee)) assert.equal(low[u].height, 180, `Dee decodes ${u}'s 180p frames: ${JSON.stringify(low[u])}`);
      // Meanwhile the three others still get each other's high layer, checked over several
      // seconds after Dee went low. (Dee's own video may suffer: her thin downlink also
      // carries the acknowledgements of what she sends, as a real congested link does; it is
      // still decoded everywhere.)
      for (let i = 0; i < 3; i++) {
        for (const page of fast) {
          const fastOthers = others(page).filter((u) => u !== "dee");
          const got = await waitForLayer(page, fastOthers, 1, "the high layer of the other unthinned pages, while Dee is thinned");
          assert.ok(got.dee?.decoded > 0, `${page.label} decodes Dee: ${JSON.stringify(got)}`);
        }
      }
      await waitFor("Dee's video still decoded on the other pages", async () => {
        const before = await Promise.all(fast.map(received));
        await new Promise((r) => setTimeout(r, 1000)); // two samples a second apart
        const after = await Promise.all(fast.map(received));
        return after.every((a, i) => a.dee.decoded > before[i].dee.decoded);
      }, WAIT, 0);

      // 3. Lift the cap: after the hold-off, Dee climbs back to the high layer.
      if (NETNS) await lab.command("downlink slow off");
      else clearInterval(slowLoss);
      await waitForLayer(dee, others(dee), 1, "the high layer again once the link is wide");
      for (const page of all) console.log(`${page.label}: ${JSON.stringify(await received(page))}`);
    } catch (e) {
      for (const p of pages) {
        const state = await p.evaluate(() => ({ lanes: window.demo.mediaStats(), sent: window.demo.meeting?.stats().sent })).catch((err) => String(err));
        console.error(`${p.label}: ${JSON.stringify(await received(p).catch(() => ({})))}\n  ${JSON.stringify(state)}`);
        console.error(p.logs.slice(-20).join("\n"));
      }
      for (const p of procs) console.error(`--- ${p.name}\n${p.tail(15)}`);
      throw e;
    } finally {
      clearInterval(slowLoss);
    }
  });

  test("a call with two callees opens a meeting in the call's room; the last to leave ends the call", async () => {
    const { ann, ben, cid, dee } = byName;
    assert.ok(ann && ben && cid && dee, "the first test's pages");
    try {
      for (const page of [ann, ben, cid, dee]) {
        await page.click("#meeting-leave");
        await page.waitForSelector("#meeting", { state: "hidden", timeout: WAIT });
      }
      for (const u of ["ben", "cid"]) {
        await ann.waitForSelector(`#people li[data-user="${u}"] .pick`, { timeout: WAIT });
        await ann.check(`#people li[data-user="${u}"] .pick`);
      }
      assert.equal(await ann.textContent("#group-call"), "Group call (2)");
      await ann.click("#group-call");
      await ann.waitForSelector("#outgoing:not([hidden])", { timeout: WAIT });
      for (const page of [ben, cid]) {
        await page.waitForSelector("#incoming:not([hidden])", { timeout: WAIT });
        await page.click("#accept");
      }
      assert.equal(await dee.isVisible("#incoming"), false, "Dee was not called");
      // All three meet in the call's room and decode each other.
      const three = [ann, ben, cid];
      const room = await ann.evaluate(() => window.demo.meeting?.room);
      assert.match(room ?? "", /^call-/, "the meeting is in the call's room");
      for (const page of three) {
        await page.waitForFunction(() => document.querySelectorAll("#meeting-grid .tile").length === 3, null, { timeout: WAIT });
        assert.equal(await page.evaluate(() => window.demo.meeting.room), room);
        await waitFor(`${page.label}: the two others' video decoded`, async () => {
          const got = Object.values(await received(page));
          return got.length === 2 && got.every((g) => g.decoded > 15);
        }, WAIT, 250);
      }
      // Ann leaves: the call goes on for Ben and Cid.
      await ann.click("#meeting-leave");
      for (const page of [ben, cid]) await page.waitForFunction(() => document.querySelectorAll("#meeting-grid .tile").length === 2, null, { timeout: WAIT });
      assert.equal(await ben.isVisible("#meeting"), true);
      // Cid leaves, then Ben, the last one: the call ends, completed, for every party.
      await cid.click("#meeting-leave");
      await ben.waitForFunction(() => document.querySelectorAll("#meeting-grid .tile").length === 1, null, { timeout: WAIT });
      await ben.click("#meeting-leave");
      for (const page of three) {
        await page.waitForFunction(() => /call ended \(completed\)/.test(document.getElementById("call-info").textContent), null, { timeout: WAIT });
      }
    } catch (e) {
      for (const p of pages) {
        const ui = await p.evaluate(() => ({
          room: window.demo.meeting?.room,
          tiles: document.querySelectorAll("#meeting-grid .tile").length,
          meeting: !document.getElementById("meeting").hidden,
          inCall: !document.getElementById("in-call").hidden,
          incoming: !document.getElementById("incoming").hidden,
          outgoing: !document.getElementById("outgoing").hidden,
          info: document.getElementById("call-info").textContent,
        })).catch((err) => String(err));
        console.error(`${p.label}: ${JSON.stringify(ui)}`);
        console.error(p.logs.slice(-20).join("\n"));
      }
      for (const p of procs) console.error(`--- ${p.name}\n${p.tail(15)}`);
      throw e;
    }
  });
});
