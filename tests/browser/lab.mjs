// Network-namespace labs for the browser tests (target/debug/netns-lab: hosts behind a
// router, each with its own address), and Chromium run on one of those hosts. Everything a
// lab starts goes when `stop()` is called or the test process exits (netns-lab tears its
// namespaces down when its standard input closes).
import { execFile, spawn } from "node:child_process";
import { chmodSync, existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { Proc, ROOT, waitFor } from "./cluster.mjs";

export const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
const NETNS_LAB = process.env.NETNS_LAB_BIN ?? join(ROOT, "target/debug/netns-lab");

/** Whether labs can be made here (root, and netns-lab built). */
export function labsAvailable() {
  return process.getuid?.() === 0 && existsSync(NETNS_LAB);
}

export class Lab {
  /** Start netns-lab with `args` (`--host`, `--partition`...); resolves when it is ready. */
  static async start(args, timeoutMs = 30_000) {
    const lab = new Lab();
    lab.out = "";
    lab.child = spawn(NETNS_LAB, [...args, "--exit-on-stdin-eof"], { stdio: ["pipe", "pipe", "pipe"] });
    lab.child.stdout.on("data", (d) => (lab.out += d));
    lab.child.stderr.on("data", (d) => (lab.out += d));
    lab.exited = new Promise((r) => lab.child.once("exit", r));
    await waitFor("netns-lab to be ready", () => {
      if (lab.child.exitCode !== null) throw new Error(`netns-lab exited: ${lab.out}`);
      return lab.out.includes("\nready:");
    }, timeoutMs);
    /** Hosts by name: `{ addr, ns }`. */
    lab.hosts = {};
    for (const m of lab.out.matchAll(/^host (\S+) (\S+) .*ip netns exec (\S+) </gm)) lab.hosts[m[1]] = { addr: m[2], ns: m[3] };
    return lab;
  }

  /** Send a command (`downlink HOST KBIT|off`); resolves when netns-lab answers ok. */
  async command(cmd) {
    const from = this.out.length;
    this.child.stdin.write(`${cmd}\n`);
    await waitFor(`netns-lab: ${cmd}`, () => {
      const out = this.out.slice(from);
      if (out.includes(`error: ${cmd}`)) throw new Error(out);
      return out.includes(`ok: ${cmd}`);
    }, 10_000, 50);
  }

  /** Tear the lab down (and whatever runs in its namespaces); bounded. */
  async stop() {
    if (this.child.exitCode !== null) return;
    this.child.stdin.end();
    let timer;
    const gone = await Promise.race([this.exited.then(() => true), new Promise((r) => (timer = setTimeout(() => r(false), 15_000)))]);
    clearTimeout(timer);
    if (!gone) this.child.kill("SIGTERM");
  }
}

/** `cmd args` run on host namespace `ns` (or here, without one); pushed onto `procs`. */
export function runOn(procs, ns, name, cmd, args, env) {
  const p = ns ? new Proc(name, "ip", ["netns", "exec", ns, cmd, ...args], env) : new Proc(name, cmd, args, env);
  procs.push(p);
  return p;
}

/** Whether `url` answers 200, asked from namespace `ns` (this process has no route into a lab). */
export function answers200(ns, url) {
  if (!ns) return fetch(url).then((r) => r.status === 200, () => false);
  return new Promise((res) => {
    execFile("ip", ["netns", "exec", ns, "curl", "-s", "-o", "/dev/null", "-m", "2", "-w", "%{http_code}", url], (_err, stdout) => res(String(stdout).trim() === "200"));
  });
}

/**
 * Headless Chromium with a fake camera and microphone whose network is namespace `ns`'s (a
 * wrapper script in `dir` execs it there), or this machine's. `origins`: plain-HTTP origins
 * to treat as secure (camera, WebCodecs and WebTransport there).
 */
export async function launchChromium({ dir, ns, name, origins = [], args = [] }) {
  let executablePath = CHROMIUM;
  if (ns) {
    executablePath = join(dir, `chromium-${name}`);
    writeFileSync(executablePath, `#!/bin/sh\nexec ip netns exec ${ns} ${CHROMIUM} "$@"\n`);
    chmodSync(executablePath, 0o755);
  }
  return chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--use-fake-ui-for-media-stream",
      "--use-fake-device-for-media-stream",
      ...(origins.length ? [`--unsafely-treat-insecure-origin-as-secure=${origins.join(",")}`] : []),
      ...args,
    ],
  });
}
