// TURN in a real browser: two Chromium pages that cannot reach each other directly hold a
// WebRTC call through coturn (Debian's `turnserver`, `use-auth-secret`), with the ICE
// servers and short-lived credentials the node hands each session in `Welcome`.
//
// With root and network namespaces (target/debug/netns-lab, the impaired-network harness):
// three hosts behind a router, `srv` (nats-server, the node, coturn), `alice` and `bob` (a
// Chromium each); the router drops everything between alice and bob, so the only path is
// through coturn's relay on srv. Without them (TURN_TEST_MODE=relay-policy, or not root):
// everything on loopback and the pages use `iceTransportPolicy: "relay"`.
//
// Checked: the selected candidate pair of each page has a relay candidate on coturn's relay
// address, frames are decoded on both sides, and coturn logged allocations for both users.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { freeTcpPort, freeUdpPort, ROOT, waitFor } from "./cluster.mjs";
import { Lab, labsAvailable, launchChromium, runOn } from "./lab.mjs";

const SWITCHBOARD = process.env.SWITCHBOARD_BIN ?? join(ROOT, "target/debug/switchboard");
const NATS = process.env.NATS_SERVER_BIN ?? "nats-server";
const TURNSERVER = process.env.TURNSERVER_BIN ?? "turnserver";
const WAIT = 30_000;
const SECRET = "browser-test-turn-shared-secret";
const NETNS = process.env.TURN_TEST_MODE !== "relay-policy" && labsAvailable();

let dir;
let lab; // the namespaces (netns-lab), if any
const procs = [];
const browsers = [];
const pages = [];
let srv; // { addr, ns? }
let origin;
let turn;

/** `cmd args` run on host `ns` (a namespace), or here. */
const on = (ns, name, cmd, args, env) => runOn(procs, ns, name, cmd, args, env);

/** Start the lab: srv, alice, bob; alice and bob partitioned. Resolves with the hosts. */
async function startLab() {
  lab = await Lab.start(["--name", "turn", "--host", "srv", "--host", "alice", "--host", "bob", "--partition", "alice,bob"], WAIT);
  assert.ok(lab.hosts.srv && lab.hosts.alice && lab.hosts.bob, lab.out);
  return lab.hosts;
}

/** A Chromium whose network is host `ns`'s, or this machine's. */
async function launchBrowser(ns, name) {
  // The node's lab address is plain HTTP: let the page use the camera there.
  const browser = await launchChromium({ dir, ns, name, origins: [origin] });
  browsers.push(browser);
  return browser;
}

async function openDemo(browser, name) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await context.grantPermissions(["camera", "microphone"], { origin });
  const page = await context.newPage();
  page.logs = [];
  page.on("console", (m) => page.logs.push(`[${name}] ${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => page.logs.push(`[${name}] pageerror: ${e.message}`));
  const q = new URLSearchParams({ name, room: "lobby", transport: "websocket", nodes: origin });
  if (!NETNS) q.set("iceRelay", "1");
  // The first loads wait for the node (it waits for NATS): retried, bounded.
  await waitFor(`the demo at ${origin} for ${name}`, async () => (await page.goto(`${origin}/?${q}`, { timeout: 5000 }))?.ok(), 60_000, 250);
  await page.waitForFunction(() => document.getElementById("conn-state")?.textContent === "connected", null, { timeout: WAIT });
  pages.push(page);
  return page;
}

describe(`TURN: a WebRTC call between pages with no direct path (${NETNS ? "network namespaces" : "iceTransportPolicy relay"})`, () => {
  before(async () => {
    const t0 = Date.now();
    dir = mkdtempSync(join(tmpdir(), "switchboard-turn-"));
    let hosts = {};
    if (NETNS) {
      hosts = await startLab();
      srv = hosts.srv;
    } else {
      srv = { addr: "127.0.0.1" };
    }
    // A fresh namespace has every port free; on loopback take free ones.
    const ports = NETNS
      ? { nats: 4222, http: 8080, turn: 3478 }
      : { nats: await freeTcpPort(), http: await freeTcpPort(), turn: await freeUdpPort() };
    origin = `http://${srv.addr}:${ports.http}`;
    const nats = on(srv.ns, "nats", NATS, ["-js", "-a", srv.addr, "-p", String(ports.nats), "-sd", join(dir, "js")]);
    turn = on(srv.ns, "coturn", TURNSERVER, [
      "-n", "--no-cli", "--no-tls", "--no-dtls", "--no-tcp", "--simple-log", "--log-file", "stdout", "--verbose",
      "--listening-ip", srv.addr, "--relay-ip", srv.addr, "--listening-port", String(ports.turn),
      "--use-auth-secret", "--static-auth-secret", SECRET, "--realm", "switchboard.test",
      "--pidfile", join(dir, "turnserver.pid"), "--userdb", join(dir, "turndb"),
      // On loopback both relays and peers are 127.0.0.1.
      ...(NETNS ? [] : ["--allow-loopback-peers"]),
    ]);
    on(srv.ns, "node", SWITCHBOARD, [
      "serve",
      "--nats-url", `nats://${srv.addr}:${ports.nats}`,
      "--http-addr", `${srv.addr}:${ports.http}`,
      "--no-webtransport",
      "--node-id", "node-turn",
      "--drain-timeout", "1",
      "--turn-url", `turn:${srv.addr}:${ports.turn}?transport=udp`,
      "--turn-ttl", "600",
    ], { SWITCHBOARD_TURN_SECRET: SECRET, RUST_LOG: "info" });
    await waitFor("nats-server and coturn to listen", () => {
      for (const p of procs) if (!p.alive) throw new Error(`${p.name} exited:\n${p.tail()}`);
      return nats.output.includes("Server is ready") && turn.output.includes("listener opened on");
    }, WAIT);
    const [a, b] = await Promise.all([launchBrowser(hosts.alice?.ns, "alice"), launchBrowser(hosts.bob?.ns, "bob")]);
    browsers.alice = a;
    browsers.bob = b;
    console.log(`set up in ${Date.now() - t0} ms`);
  });

  after(async () => {
    const t0 = Date.now();
    await Promise.all(browsers.map((b) => b.close().catch(() => {})));
    await Promise.all(procs.map((p) => p.kill()));
    await lab?.stop(); // netns-lab tears the namespaces down (and kills what runs in them)
    if (dir) rmSync(dir, { recursive: true, force: true });
    console.log(`torn down in ${Date.now() - t0} ms`);
  });

  test("the call connects through coturn's relay, frames decoded on both sides", async () => {
    try {
      const alice = await openDemo(browsers.alice, "Alice");
      const bob = await openDemo(browsers.bob, "Bob");
      // The session's ICE servers: the node's TURN URL with `<expiry>:<user>` credentials.
      const ice = await alice.evaluate(() => ({ servers: window.demo.client.iceServers, exp: window.demo.client.iceServersExpireAt }));
      assert.equal(ice.servers.length, 1, JSON.stringify(ice));
      assert.match(ice.servers[0].urls[0], /^turn:/);
      assert.equal(ice.servers[0].username, `${ice.exp}:alice`);
      assert.ok(ice.exp * 1000 > Date.now() + 500_000 && ice.exp * 1000 <= Date.now() + 601_000, JSON.stringify(ice));

      await alice.waitForFunction(() => !!document.querySelector('#people li[data-user="bob"]'), null, { timeout: WAIT });
      await alice.click('#people li[data-user="bob"] .call-btn');
      await bob.waitForSelector("#incoming:not([hidden])", { timeout: WAIT });
      await bob.click("#accept");
      await alice.waitForSelector("#in-call:not([hidden])", { timeout: WAIT });
      await bob.waitForSelector("#in-call:not([hidden])", { timeout: WAIT });

      const relayed = (page) =>
        waitFor("WebRTC connected through the TURN relay with remote frames decoded", async () => {
          const s = await page.evaluate(() => window.demo.p2pStats());
          if (s.connectionState === "failed" || s.connectionState === "none") throw new Error(`WebRTC ${s.connectionState}: ${JSON.stringify(s)}`);
          return s.connectionState === "connected" && s.framesDecoded > 0 && s.localCandidateType && s;
        }, WAIT, 250);
      const [sa, sb] = await Promise.all([relayed(alice), relayed(bob)]);
      console.log(`TURN: alice ${JSON.stringify(sa)}\nTURN: bob ${JSON.stringify(sb)}`);
      for (const s of [sa, sb]) {
        // The selected pair goes through the relay: a relay candidate on coturn's relay address.
        const local = s.localCandidateType === "relay";
        assert.ok(local || s.remoteCandidateType === "relay", `not relayed: ${JSON.stringify(s)}`);
        const relayAddress = local ? s.localAddress : s.remoteAddress;
        assert.ok(relayAddress.startsWith(`${srv.addr}:`), `relay candidate ${relayAddress} is not coturn's (${srv.addr})`);
        if (!NETNS) assert.equal(s.localCandidateType, "relay", "iceTransportPolicy relay");
      }
      // Never on the media fallback through Switchboard: this is WebRTC through TURN.
      for (const p of [alice, bob]) {
        assert.equal(await p.textContent("#media-path"), "P2P");
        let status = "";
        await waitFor("the call status to say TURN relay", async () => /TURN relay/.test((status = await p.textContent("#call-status"))), WAIT, 100).catch((e) => {
          throw new Error(`${e.message}; status: ${status}`);
        });
      }
      // coturn authenticated both users with the node's credentials.
      for (const user of ["alice", "bob"]) {
        assert.match(turn.output, new RegExp(`user <\\d+:${user}>: incoming packet ALLOCATE processed, success`), turn.tail(40));
      }
    } catch (e) {
      for (const p of pages) console.error(p.logs.slice(-30).join("\n"));
      for (const p of procs) console.error(`--- ${p.name}\n${p.tail(20)}`);
      throw e;
    }
  });
});
