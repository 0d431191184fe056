#!/usr/bin/env python3
"""Markdown summary of a bench/cluster-100k run directory: the generators' JSON reports
(gen*.json) merged, and the 10 s samples (procs.tsv, mem.tsv, varz/subsz/jsz.jsonl) of nodes,
NATS servers, HAProxy and nginx. Used by bench/cluster-100k; run it again on a kept
directory to re-render."""

import argparse
import glob
import json
import os
import statistics
from collections import defaultdict

TICKS = os.sysconf("SC_CLK_TCK")


def load_reports(out):
    reports = []
    for path in sorted(glob.glob(os.path.join(out, "gen*.json"))):
        with open(path) as f:
            lines = [l for l in f if l.strip().startswith("{")]
        if lines:
            reports.append(json.loads(lines[-1]))
    return reports


def load_procs(out):
    """{(role, name): [(t, rss_kib, ticks, conns|None)]}"""
    series = defaultdict(list)
    path = os.path.join(out, "procs.tsv")
    if not os.path.exists(path):
        return series
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) != 6:
                continue
            t, role, name, rss, ticks, conns = p
            series[(role, name)].append((int(t), int(rss), int(ticks), None if conns == "-" else int(conns)))
    return series


def load_jsonl(out, doc):
    rows = defaultdict(list)
    path = os.path.join(out, f"{doc}.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                rows[r["name"]].append((r["t"], r["doc"]))
    return rows


def steady(samples, held_from):
    """Samples from the time connections were held (the run), for averages."""
    s = [x for x in samples if x[0] >= held_from]
    return s if len(s) >= 2 else samples


def cpu_percent(samples):
    if len(samples) < 2:
        return 0.0
    (t0, _, c0, _), (t1, _, c1, _) = samples[0], samples[-1]
    return 100.0 * (c1 - c0) / TICKS / max(t1 - t0, 1)


def fmt(n, digits=0):
    if n is None:
        return "–"
    return f"{n:,.{digits}f}"


def q(reports, path, key):
    vals = []
    for r in reports:
        v = r
        for p in path:
            v = v.get(p, {}) if isinstance(v, dict) else {}
        if isinstance(v, dict) and key in v and v.get("count", 1):
            vals.append((v[key], v.get("count", 1)))
    return vals


def weighted(vals):
    total = sum(c for _, c in vals)
    return sum(v * c for v, c in vals) / total if total else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--duration", type=int)
    ap.add_argument("--connections", type=int)
    ap.add_argument("--processes", type=int)
    ap.add_argument("--wt-fraction", type=float)
    a = ap.parse_args()
    reports = load_reports(a.out)
    procs = load_procs(a.out)
    out = []
    w = out.append

    # When the run (not the ramp) started: the first sample at which node connections reached
    # 95 % of their peak.
    node_keys = sorted(k for k in procs if k[0] == "node")
    totals = defaultdict(int)
    for k in node_keys:
        for t, _, _, c in procs[k]:
            totals[t] += c or 0
    peak = max(totals.values(), default=0)
    held_from = min((t for t, c in totals.items() if c >= 0.95 * peak), default=0)
    held_to = max((t for t, c in totals.items() if c >= 0.95 * peak), default=0)

    w(f"Generators: {len(reports)} of {a.processes}; target {fmt(a.connections)} connections, "
      f"WebTransport fraction {a.wt_fraction}, run {a.duration} s.\n")
    w("**Connections and nodes** (held: average over the samples with ≥ 95 % of the peak; "
      f"{held_to - held_from} s of such samples):\n")
    w("| host | connections held (avg / max) | RSS MiB (end of hold) | bytes per connection | CPU % of a core (hold) |")
    w("| --- | ---: | ---: | ---: | ---: |")
    total_conns, total_rss = 0, 0
    for k in node_keys:
        s = procs[k]
        h = [x for x in s if held_from <= x[0] <= held_to] or s
        conns = [x[3] or 0 for x in h]
        avg = statistics.mean(conns) if conns else 0
        rss = h[-1][1]
        total_conns += avg
        total_rss += rss
        per = rss * 1024 / avg if avg else None
        w(f"| {k[1]} | {fmt(avg)} / {fmt(max(conns, default=0))} | {fmt(rss / 1024)} | {fmt(per)} | "
          f"{fmt(cpu_percent(h), 1)} |")
    w(f"| **all nodes** | {fmt(total_conns)} | {fmt(total_rss / 1024)} | "
      f"{fmt(total_rss * 1024 / total_conns if total_conns else None)} | "
      f"{fmt(sum(cpu_percent([x for x in procs[k] if held_from <= x[0] <= held_to] or procs[k]) for k in node_keys), 1)} |")
    for role in ("nats", "haproxy", "nginx", "generator"):
        for k in sorted(x for x in procs if x[0] == role):
            s = procs[k]
            h = [x for x in s if held_from <= x[0] <= held_to] or s
            w(f"| {k[1]} ({role}) | – | {fmt(max(x[1] for x in s) / 1024)} (peak) | – | {fmt(cpu_percent(h), 1)} |")
    mem = os.path.join(a.out, "mem.tsv")
    if os.path.exists(mem):
        with open(mem) as f:
            rows = [tuple(map(int, l.split())) for l in f if l.strip()]
        if rows:
            w(f"\nMachine memory used: peak {fmt(max(r[1] for r in rows) / 1048576, 1)} GiB, "
              f"least available {fmt(min(r[2] for r in rows) / 1048576, 1)} GiB.")

    # NATS.
    varz, subsz, jsz = (load_jsonl(a.out, d) for d in ("varz", "subsz", "jsz"))
    if varz:
        w("\n**NATS** (rates over the hold):\n")
        w("| server | clients | subscriptions | msgs in/s | msgs out/s | MiB/s in / out | JetStream streams / consumers / messages / MiB | JS API calls/s |")
        w("| --- | ---: | ---: | ---: | ---: | --- | --- | ---: |")
        for name in sorted(varz):
            v = [x for x in varz[name] if held_from <= x[0] <= held_to] or varz[name]
            (t0, d0), (t1, d1) = v[0], v[-1]
            dt = max(t1 - t0, 1)
            rate = lambda key: (d1.get(key, 0) - d0.get(key, 0)) / dt  # noqa: E731
            subs = d1.get("subscriptions")
            j = [x for x in jsz.get(name, []) if held_from <= x[0] <= held_to] or jsz.get(name, [])
            js, api = "–", "–"
            if j:
                (jt0, j0), (jt1, j1) = j[0], j[-1]
                js = (f"{fmt(j1.get('streams'))} / {fmt(j1.get('consumers'))} / {fmt(j1.get('messages'))} / "
                      f"{fmt(j1.get('bytes', 0) / 1048576, 1)}")
                a0, a1 = j0.get("api", {}).get("total", 0), j1.get("api", {}).get("total", 0)
                api = fmt((a1 - a0) / max(jt1 - jt0, 1))
            w(f"| {name} | {fmt(d1.get('connections'))} | {fmt(subs)} | {fmt(rate('in_msgs'))} | "
              f"{fmt(rate('out_msgs'))} | {fmt(rate('in_bytes') / 1048576, 2)} / {fmt(rate('out_bytes') / 1048576, 2)} | "
              f"{js} | {api} |")
        if subsz:
            last = {n: s[-1][1] for n, s in subsz.items() if s}
            w("\nInterest graph (/subsz): " + ", ".join(
                f"{n} {fmt(d.get('num_subscriptions'))} subscriptions, {fmt(d.get('num_cache'))} cached subjects"
                for n, d in sorted(last.items())) + ".")

    # Generators.
    if reports:
        def tot(*path):
            s = 0
            for r in reports:
                v = r
                for p in path:
                    v = v.get(p, {}) if isinstance(v, dict) else {}
                s += v if isinstance(v, (int, float)) else 0
            return s

        w("\n**Workload, merged over the generators** (p50: weighted by count; p99 and max: the "
          "worst generator's, a bound on the merged one):\n")
        w("| what | figure |")
        w("| --- | --- |")
        w(f"| connections: target / held at start / least during run / at end | "
          f"{fmt(tot('connections_detail', 'target'))} / {fmt(tot('connections_detail', 'held_at_start'))} / "
          f"{fmt(tot('connections_detail', 'held_min'))} / {fmt(tot('connections_detail', 'held_at_end'))} "
          f"(WT {fmt(tot('connections_detail', 'webtransport'))}, WS {fmt(tot('connections_detail', 'websocket'))}) |")
        ramp = max((r.get("connections_detail", {}).get("ramp_secs", 0) for r in reports), default=0)
        w(f"| ramp | {fmt(ramp, 1)} s, {fmt(tot('connections_detail', 'connect_failures'))} failed attempts |")
        w(f"| connect (connect + hello + join) p50 / p99 ms | "
          f"{fmt(weighted(q(reports, ['connections_detail', 'connect_ms'], 'p50')), 1)} / "
          f"{fmt(max((v for v, _ in q(reports, ['connections_detail', 'connect_ms'], 'p99')), default=None), 1)} |")
        sent, window = tot("chat", "sent"), max((r.get("window_secs", 0) for r in reports), default=0)
        w(f"| chat: sent / acked / send failed | {fmt(sent)} / {fmt(tot('chat', 'acked'))} / "
          f"{fmt(tot('chat', 'send_failed'))} ({fmt(sent / window if window else 0)} msg/s) |")
        w(f"| chat: deliveries expected / delivered (live) / replayed | {fmt(tot('chat', 'expected'))} / "
          f"{fmt(tot('chat', 'delivered'))} / {fmt(tot('chat', 'replayed'))} |")
        w(f"| chat: **lost / duplicated / reordered** / undelivered at stop / history gaps | "
          f"**{fmt(tot('chat', 'lost'))} / {fmt(tot('chat', 'duplicated'))} / {fmt(tot('chat', 'reordered'))}** / "
          f"{fmt(tot('chat', 'undelivered_at_stop'))} / {fmt(tot('chat', 'history_gaps'))} |")
        w(f"| chat: missing, not owed: stored before the receiver joined / in reported history gaps | "
          f"{fmt(tot('chat', 'missed_before_join'))} / {fmt(tot('chat', 'missed_in_reported_gaps'))} |")
        p50 = weighted(q(reports, ["chat", "latency_ms"], "p50"))
        p99 = max((v for v, _ in q(reports, ["chat", "latency_ms"], "p99")), default=None)
        mx = max((v for v, _ in q(reports, ["chat", "latency_ms"], "max")), default=None)
        w(f"| **chat latency p50 / p99 / max ms** (target p99 ≤ 50) | **{fmt(p50, 1)} / {fmt(p99, 1)}** / {fmt(mx, 1)} |")
        w(f"| calls: placed / answered / failed / ended | {fmt(tot('calls', 'placed'))} / "
          f"{fmt(tot('calls', 'answered'))} / {fmt(tot('calls', 'failed'))} / {fmt(tot('calls', 'ended'))} |")
        w(f"| call setup p50 / p99 ms | {fmt(weighted(q(reports, ['calls', 'setup_ms'], 'p50')), 1)} / "
          f"{fmt(max((v for v, _ in q(reports, ['calls', 'setup_ms'], 'p99')), default=None), 1)} |")
        w(f"| churn: churned / GoAways / lost connections / reconnected / failed | {fmt(tot('reconnects', 'churned'))} / "
          f"{fmt(tot('reconnects', 'goaways'))} / {fmt(tot('reconnects', 'lost_connections'))} / "
          f"{fmt(tot('reconnects', 'reconnected'))} / {fmt(tot('reconnects', 'failed'))} |")
        w(f"| reconnect (old connection's end to room joined) p50 / p99 ms | "
          f"{fmt(weighted(q(reports, ['reconnects', 'reconnect_ms'], 'p50')), 1)} / "
          f"{fmt(max((v for v, _ in q(reports, ['reconnects', 'reconnect_ms'], 'p99')), default=None), 1)} |")
        errors = defaultdict(int)
        for r in reports:
            for k, v in r.get("errors_by_code", {}).items():
                errors[k] += v
        w(f"| errors by code | {', '.join(f'{k} {v}' for k, v in sorted(errors.items())) or 'none'} |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
