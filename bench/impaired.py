"""bench/compare's `impaired` suite: the `media-room` scenario over shaped links.

For each profile (clean, wifi, mobile, bad: `switchboard_tests::netns::Profile`) a fresh lab
(`target/release/netns-lab`): a `server` host, unshaped, where nats-server, one Switchboard
node and the load generator run (`ip netns exec`), and `--client-hosts` client hosts shaped
with the profile, where the receivers' connections live (`switchboard-cli bench
--receiver-netns`, one host per receiver by default: each receiver has its own link, as
people in a call do). Per profile three runs: WebSocket, WebTransport with media on the
control stream (`--wt-lanes off`, "WT single stream") and WebTransport with media lanes
(`--wt-lanes on`). Then one table per profile and ratio lines against the targets.

Needs root (network namespaces, iptables, tc); without it the suite says so and is skipped.
The lab's namespaces go with the lab on every exit (the lab process tears them down on
SIGTERM/SIGINT; a killed one's are removed by the next lab).
"""

import os
import re
import subprocess
import sys
import time

# RTT of each profile (tests/src/netns/profile.rs), for the chat target (RTT + 50 ms).
PROFILES = {
    "clean": {"rtt_ms": 0, "desc": "no impairment"},
    "wifi": {"rtt_ms": 20, "desc": "20 ms RTT ±5, 0.5 % loss"},
    "mobile": {"rtt_ms": 80, "desc": "80 ms RTT ±20, 2 % loss, 8 Mbit/s"},
    "bad": {"rtt_ms": 150, "desc": "150 ms RTT, 5 % loss, 2 Mbit/s"},
}
# Runs per profile: label, URL kind, --wt-lanes.
CELLS = (("WS", "ws", None), ("WT single stream", "wt", "off"), ("WT lanes", "wt", "on"))
# Ports inside the server host's fresh namespace (nothing else listens there).
HTTP_PORT, WT_PORT, NATS_PORT = 8080, 4433, 4222
SECTION = "media-room, impaired"


def ns_get(ns, url, timeout=1.0):
    """GET `url` from inside the network namespace `ns`: (status, body) or None."""
    code = ("import sys, urllib.request\n"
            "try:\n"
            f"    r = urllib.request.urlopen(sys.argv[1], timeout={timeout})\n"
            "    print(r.status); print(r.read().decode())\n"
            "except Exception as e:\n"
            "    sys.exit(1)\n")
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, url], capture_output=True,
                         text=True, timeout=30)
    if out.returncode != 0:
        return None
    status, _, body = out.stdout.partition("\n")
    return int(status), body


def ns_wait_http(ns, url, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = ns_get(ns, url)
        if r and r[0] == 200:
            return r[1]
        time.sleep(0.1)
    raise RuntimeError(f"{url} (in {ns}) not ready within {timeout} s")


class Lab:
    """A running `netns-lab`: host name -> (address, namespace)."""

    def __init__(self, suite, profile, clients):
        self.suite = suite
        binary = os.path.join(suite.release, "netns-lab")
        argv = [binary, "--name", f"imp-{profile}", "--host", "server"]
        for i in range(clients):
            argv += ["--host", f"c{i}={profile}"]
        self.log = os.path.join(suite.workdir, f"lab-{profile}.log")
        self.proc = suite.procs.start(f"lab-{profile}", argv)
        self.hosts = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with open(self.log) as f:
                text = f.read()
            if "ready:" in text:
                break
            if self.proc.poll() is not None:
                raise LabUnavailable(text.strip().splitlines()[-1] if text.strip() else "netns-lab exited")
            time.sleep(0.1)
        else:
            raise RuntimeError("netns-lab not ready within 120 s")
        for line in text.splitlines():
            m = re.match(r"host (\S+) (\S+) .*: ip netns exec (\S+) <command>", line)
            if m:
                self.hosts[m.group(1)] = (m.group(2), m.group(3))

    def ns(self, host):
        return self.hosts[host][1]

    def addr(self, host):
        return self.hosts[host][0]

    def stop(self):
        # SIGTERM: the lab kills what runs in its namespaces and deletes them.
        self.suite.procs.stop(self.proc, timeout=60)


class LabUnavailable(Exception):
    pass


class ImpairedSuite:
    """Runs the impaired suite for `suite` (bench/compare's Suite: procs, token, bench())."""

    def __init__(self, suite, quick, duration, profiles, client_hosts, log):
        self.suite = suite
        self.quick = quick
        self.duration = duration or (8 if quick else 25)
        self.profiles = profiles
        self.client_hosts = client_hosts
        self.log = log
        self.servers = {}

    def run(self):
        if os.geteuid() != 0:
            self.log("SKIPPED: the impaired suite needs root (network namespaces, iptables, tc)")
            return False
        for profile in self.profiles:
            started = time.monotonic()
            try:
                lab = Lab(self.suite, profile, self.client_hosts)
            except LabUnavailable as e:
                self.log(f"SKIPPED: impaired-network lab unavailable: {e}")
                return False
            try:
                self.profile(lab, profile)
            finally:
                lab.stop()
            self.log(f"profile {profile}: {time.monotonic() - started:.0f} s")
        return True

    def profile(self, lab, profile):
        s = self.suite
        ns = lab.ns("server")
        addr = lab.addr("server")
        conf = os.path.join(s.workdir, f"nats-{profile}.conf")
        with open(conf, "w") as f:
            f.write(f'listen: "127.0.0.1:{NATS_PORT}"\njetstream {{ store_dir: "{s.workdir}/nats-{profile}-js" }}\n')
        nats_argv = ["ip", "netns", "exec", ns, s.nats_bin, "-c", conf]
        s.procs.start(f"nats-{profile}", nats_argv)
        # The node on core 0, the load generator on core 1 (as in the loopback suite).
        node_argv = ["ip", "netns", "exec", ns] + s.pin(0) + [
            os.path.join(s.release, "switchboard"), "serve", "--http-addr", f"0.0.0.0:{HTTP_PORT}",
            "--wt-addr", f"0.0.0.0:{WT_PORT}", "--nats-url", f"nats://127.0.0.1:{NATS_PORT}", "--node-id",
            f"node-{profile}",
        ]
        node = s.procs.start(f"node-{profile}", node_argv)
        ns_wait_http(ns, f"http://127.0.0.1:{HTTP_PORT}/readyz", timeout=60)
        cert = ns_wait_http(ns, f"http://127.0.0.1:{HTTP_PORT}/certificate.sha256").strip()
        self.servers[profile] = {"nats": nats_argv, "node": node_argv}
        urls = {"ws": f"ws://{addr}:{HTTP_PORT}/ws", "wt": f"https://{addr}:{WT_PORT}/wt"}
        receivers = [lab.ns(h) for h in sorted(lab.hosts) if h != "server"]
        desc = PROFILES[profile]["desc"]
        sec = f"{SECTION}: {profile} ({desc})"
        for label, kind, lanes in CELLS:
            args = ["--scenario", "media-room", "--clients", 8, "--duration", self.duration]
            for r in receivers:
                args += ["--receiver-netns", r]
            s.bench(sec, label, [urls[kind]], args, pids=[node.pid], cert=cert if kind == "wt" else None,
                    prefix=["ip", "netns", "exec", ns], global_args=["--wt-lanes", lanes] if kind == "wt" else [],
                    names={ns: "$SERVER_NS", **{r: f"$CLIENT_NS_{i}" for i, r in enumerate(receivers)}})
        s.procs.stop(node)


def fmt_ms(v):
    return "–" if v is None else f"{v:.1f}"


def table(sec, rows):
    """Rows of one profile's section, then its ratio lines against the targets."""
    out = ["| run | frames delivered / expected | media p50 ms | media p99 ms | freezes | frozen s "
           "| chat p50 ms | chat p99 ms | chat lost | chat duplicated | chat late | chat send errors | node CPU % "
           "| node CPU µs per delivery | generator CPU % |",
           "| --- |" + " ---: |" * 14]
    found = {}
    for label, _, r in rows:
        if "error" in r:
            out.append(f"| {label} | failed: {r['error']} |" + " |" * 13)
            continue
        found[label] = r
        lat, chat = r["latency_ms"], r.get("chat_latency_ms", {})
        cpu = r.get("server_cpu_percent")
        out.append(
            f"| {label} | {r['deliveries']:,} / {r['expected_deliveries']:,} ({100 * r.get('media_delivered_ratio', 0):.1f} %)"
            f" | {lat['p50']:.1f} | {lat['p99']:.1f} | {r.get('freezes', 0):,} | {r.get('frozen_ms', 0) / 1000:.1f}"
            f" | {fmt_ms(chat.get('p50'))} | {fmt_ms(chat.get('p99'))} | {r.get('chat_lost', '–')}"
            f" | {r.get('chat_duplicated', '–')} | {r.get('chat_undelivered_at_stop', '–')}"
            f" | {r.get('chat_send_errors', '–')} | {'–' if cpu is None else f'{cpu:.1f}'}"
            f" | {r.get('node_cpu_us_per_delivery', '–')} | {r.get('generator_cpu_percent', '–')} |")
    profile = sec.split(": ", 1)[1].split(" ", 1)[0]
    rtt = PROFILES.get(profile, {}).get("rtt_ms", 0)
    ratios = []
    ws = found.get("WS")
    for label in ("WT lanes", "WT single stream"):
        wt = found.get(label)
        if not (wt and ws):
            continue
        parts = []
        for name, a, b in (("media p99", wt["latency_ms"]["p99"], ws["latency_ms"]["p99"]),
                           ("freezes", wt.get("freezes", 0), ws.get("freezes", 0))):
            parts.append(f"{name} **{a / b:.2f}**" if b else f"{name} – (WS {b})")
        target = " (target ≤ 0.5 on mobile and bad)" if label == "WT lanes" and profile in ("mobile", "bad") else ""
        ratios.append(f"* {label} / WS: " + ", ".join(parts) + target)
    for label in ("WT lanes", "WT single stream"):
        wt = found.get(label)
        if wt and wt.get("chat_latency_ms"):
            p99 = wt["chat_latency_ms"]["p99"]
            met = "met" if p99 <= rtt + 50 else "not met"
            ratios.append(f"* chat p99 over {label}: {p99:.1f} ms against RTT + 50 = {rtt + 50} ms: {met}")
    lost = [label for label, r in found.items() if r.get("chat_lost") or r.get("chat_duplicated")]
    ratios.append("* chat lost or duplicated: " + (", ".join(lost) if lost else "none (0 in every run)"))
    late = [f"{label} ({r['chat_undelivered_at_stop']} late, {r.get('chat_send_errors', 0)} unacknowledged)"
            for label, r in found.items() if r.get("chat_undelivered_at_stop") or r.get("chat_send_errors")]
    if late:
        ratios.append("* chat not delivered within 15 s of the end, or not acknowledged within 10 s: "
                      + ", ".join(late))
    return out + ["", "Against WebSocket in the same lab:", ""] + ratios
