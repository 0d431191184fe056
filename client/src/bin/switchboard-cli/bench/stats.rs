//! Latency histograms and the benchmark report.

use hdrhistogram::Histogram;
use serde_json::json;
use std::time::Duration;

/// A latency histogram in microseconds (1 µs .. 60 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Counters and latencies of one run.
#[derive(Debug)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub connections: usize,
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub errors: u64,
    pub window: Duration,
    pub latency: Histogram<u64>,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// The servers' CPU use during the run, in percent of one core.
    pub server_cpu_percent: Option<f64>,
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// More summary lines for people (stderr, after the one-line summary).
    pub human: Vec<String>,
}

impl Report {
    pub fn json(&self) -> serde_json::Value {
        let secs = self.window.as_secs_f64().max(1e-9);
        let q = |p: f64| if self.latency.is_empty() { 0.0 } else { self.latency.value_at_quantile(p) as f64 / 1000.0 };
        let mut v = json!({
            "scenario": self.scenario,
            "target": self.target,
            "connections": self.connections,
            "sent": self.sent,
            "expected_deliveries": self.expected,
            "deliveries": self.delivered,
            "deliveries_per_sec": (self.delivered as f64 / secs).round(),
            "drops": self.expected.saturating_sub(self.delivered),
            "errors": self.errors,
            "window_secs": secs,
            "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99),
                           "max": if self.latency.is_empty() { 0.0 } else { self.latency.max() as f64 / 1000.0 }},
            "server_rss_kib": {"before": self.rss_before_kib, "after": self.rss_after_kib},
            "server_cpu_percent": self.server_cpu_percent,
        });
        if let Some(obj) = v.as_object_mut() {
            obj.extend(self.extra.clone());
        }
        v
    }

    pub fn print(&self) {
        let v = self.json();
        println!("{v}");
        let l = &v["latency_ms"];
        eprintln!(
            "{:<8} {:<12} conns {:>6}  sent {:>9}  delivered {:>10}/{:<10} {:>10}/s  drops {:>8}  errors {:>5}  \
             p50 {:>7.2} ms  p90 {:>7.2}  p99 {:>7.2}  max {:>8.2}",
            self.scenario,
            self.target,
            self.connections,
            self.sent,
            self.delivered,
            self.expected,
            v["deliveries_per_sec"],
            v["drops"],
            self.errors,
            l["p50"].as_f64().unwrap_or(0.0),
            l["p90"].as_f64().unwrap_or(0.0),
            l["p99"].as_f64().unwrap_or(0.0),
            l["max"].as_f64().unwrap_or(0.0),
        );
        for line in &self.human {
            eprintln!("{line}");
        }
    }
}

/// Resident set size of a process in KiB (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Summed RSS of several processes in KiB; `None` without PIDs or if one is gone.
pub fn total_rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| rss_kib(p)).sum()
}

/// CPU time (user + system) of a process in clock ticks (Linux: `/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Measures the summed CPU use of server processes, and the load generator's own, over an
/// interval: which of the two was the limit.
pub struct CpuMeter {
    pids: Vec<u32>,
    at: std::time::Instant,
    /// Each server's ticks at the start.
    servers: Vec<Option<u64>>,
    own: Option<u64>,
}

/// CPU ticks (USER_HZ, 100 on every Linux configuration that matters here) in an interval,
/// as percent of one core (100 = one core busy).
fn percent(ticks: u64, elapsed: std::time::Duration) -> f64 {
    (ticks as f64 / 100.0 / elapsed.as_secs_f64().max(1e-3) * 1000.0).round() / 10.0
}

impl CpuMeter {
    /// Start measuring (servers: a no-op without PIDs).
    pub fn start(pids: &[u32]) -> Self {
        let servers = pids.iter().map(|&p| cpu_ticks(p)).collect();
        Self { pids: pids.to_vec(), at: std::time::Instant::now(), servers, own: cpu_ticks(std::process::id()) }
    }

    /// Each server's CPU ticks since `start` (`None` for one that is gone).
    fn ticks(&self) -> Vec<Option<u64>> {
        self.pids.iter().zip(&self.servers).map(|(&p, t0)| Some(cpu_ticks(p)?.saturating_sub((*t0)?))).collect()
    }

    /// The servers' CPU use since `start`, summed (`None` without PIDs or if one is gone).
    pub fn percent(&self) -> Option<f64> {
        if self.pids.is_empty() {
            return None;
        }
        let ticks: u64 = self.ticks().into_iter().sum::<Option<u64>>()?;
        Some(percent(ticks, self.at.elapsed()))
    }

    /// Each server's CPU use since `start`, in the order of the PIDs.
    pub fn percent_each(&self) -> Vec<Option<f64>> {
        let elapsed = self.at.elapsed();
        self.ticks().into_iter().map(|t| t.map(|t| percent(t, elapsed))).collect()
    }

    /// Record the servers' and the load generator's CPU use since `start` in `r` (with
    /// several servers, each one's too: `server_cpu_percent_each`, in `--server-pid` order).
    pub fn fill(&self, r: &mut Report) {
        r.server_cpu_percent = self.percent();
        if self.pids.len() > 1 {
            r.extra.insert("server_cpu_percent_each".into(), self.percent_each().into());
        }
        if let (Some(t0), Some(t1)) = (self.own, cpu_ticks(std::process::id())) {
            r.extra.insert("generator_cpu_percent".into(), percent(t1.saturating_sub(t0), self.at.elapsed()).into());
        }
    }
}
