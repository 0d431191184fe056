// A real cluster on loopback for the browser tests: one nats-server (JetStream) and
// Switchboard nodes (target/debug/switchboard), each on free ports. Every wait is bounded.
import { spawn } from "node:child_process";
import { createSocket } from "node:dgram";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const SWITCHBOARD = process.env.SWITCHBOARD_BIN ?? join(ROOT, "target/debug/switchboard");
const NATS = process.env.NATS_SERVER_BIN ?? "nats-server";

/** A free TCP port on 127.0.0.1. */
export function freeTcpPort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/** A free UDP port on 127.0.0.1 (WebTransport). */
export function freeUdpPort() {
  return new Promise((res, rej) => {
    const sock = createSocket("udp4");
    sock.once("error", rej);
    sock.bind(0, "127.0.0.1", () => {
      const { port } = sock.address();
      sock.close(() => res(port));
    });
  });
}

/** Poll `check` (async, truthy when done) every `everyMs` until `timeoutMs`. */
export async function waitFor(what, check, timeoutMs = 20_000, everyMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last}` : ""}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export class Proc {
  constructor(name, cmd, args, env = {}) {
    this.name = name;
    this.output = "";
    this.child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    const keep = (d) => {
      this.output += d.toString();
      if (this.output.length > 200_000) this.output = this.output.slice(-100_000);
    };
    this.child.stdout.on("data", keep);
    this.child.stderr.on("data", keep);
    this.exited = new Promise((r) => this.child.once("exit", (code, signal) => r({ code, signal })));
  }
  get alive() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }
  signal(sig) {
    if (this.alive) this.child.kill(sig);
  }
  async kill() {
    if (!this.alive) return;
    this.child.kill("SIGKILL");
    await this.exited;
  }
  tail(n = 30) {
    return this.output.split("\n").slice(-n).join("\n");
  }
}

export class Cluster {
  constructor() {
    this.nodes = [];
    this.dir = mkdtempSync(join(tmpdir(), "switchboard-browser-"));
  }

  async startNats() {
    this.natsPort = await freeTcpPort();
    this.nats = new Proc("nats", NATS, ["-js", "-a", "127.0.0.1", "-p", String(this.natsPort), "-sd", join(this.dir, "js")]);
    await waitFor("nats-server to listen", () => this.nats.output.includes("Server is ready") || (!this.nats.alive && Promise.reject(new Error(this.nats.tail()))), 20_000);
  }

  /** Start a node (with `extraArgs`); resolves when `/readyz` answers 200. */
  async startNode(id, extraArgs = []) {
    const httpPort = await freeTcpPort();
    const wtPort = await freeUdpPort();
    const proc = new Proc(id, SWITCHBOARD, [
      "serve",
      "--nats-url", `nats://127.0.0.1:${this.natsPort}`,
      "--http-addr", `127.0.0.1:${httpPort}`,
      "--wt-addr", `127.0.0.1:${wtPort}`,
      "--node-id", id,
      "--drain-timeout", "2",
      ...extraArgs,
    ], { RUST_LOG: process.env.RUST_LOG ?? "info" });
    const node = { id, proc, httpPort, wtPort, origin: `http://127.0.0.1:${httpPort}` };
    this.nodes.push(node);
    await waitFor(`node ${id} to be ready`, async () => {
      if (!proc.alive) throw new Error(`node ${id} exited:\n${proc.tail()}`);
      const res = await fetch(`${node.origin}/readyz`);
      return res.status === 200;
    }, 60_000);
    return node;
  }

  async stop() {
    await Promise.all(this.nodes.map((n) => n.proc.kill()));
    if (this.nats) await this.nats.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }

  logs() {
    return [this.nats, ...this.nodes.map((n) => n.proc)].filter(Boolean).map((p) => `--- ${p.name}\n${p.tail(15)}`).join("\n");
  }
}
