//! The impaired-network harness: hosts in Linux network namespaces behind a router namespace,
//! each host's link shaped with delay, jitter, loss and rate, plus real faults (link down,
//! partitions). Shared by tests, benchmarks and `deploy/netns-lab`.
//!
//! Topology of a [`Lab`]: one "router" namespace; each [`Host`] is a namespace with a veth
//! pair to the router (`eth0` on the host, `h<i>` on the router), address `10.77.<i>.2/24`,
//! default route via the router at `10.77.<i>.1` (host numbers start at 1). Addresses of
//! [`LAB_NET`] exist only inside the lab's namespaces: nothing is added to the machine's own
//! namespace (no address, route, rule or qdisc), so deleting the namespaces removes it all.
//!
//! Shaping a host's link ([`Lab::shape`]), each direction separately, everything inside the
//! router's and the host's namespaces:
//! - loss: iptables `statistic` match (random drop in the kernel), router `mangle` table,
//!   PREROUTING (`-i h<i>`, host to network) and POSTROUTING (`-o h<i>`, network to host);
//! - delay and jitter: `NFQUEUE` rules at the same places, each queue consumed by an
//!   `sb-netem` process in the router namespace (this kernel has no `netem` qdisc); the rules
//!   have no `--queue-bypass`, so without its consumer a link drops rather than passing
//!   packets unimpaired;
//! - rate: a `tbf` qdisc on each end's egress (`eth0` in the host, `h<i>` in the router).
//!
//! Faults: a link down ([`Lab::link_down`]), a partition between two hosts ([`Lab::partition`]),
//! NAT rebinding of a host ([`Lab::rebind`]: its flows suddenly come from another address).
//!
//! A whole cluster on such hosts (NATS servers, nodes, HAProxy, a UDP balancer, load hosts;
//! faults, restarts): [`cluster`].
//!
//! Packet level, so TCP and QUIC see the same impairment. Tear-down ([`Drop`]) stops the
//! `sb-netem` helpers, kills every process left in the lab's namespaces and deletes the
//! namespaces (their veths, qdiscs and rules go with them). Namespaces are named
//! `sblab-<pid>-<n>-<lab>-<host>`; [`Lab::start`] first removes those of dead processes, for a
//! test that was killed before it could drop its lab.
//!
//! Needs root, `ip`, `tc`, `iptables` and `ethtool` (`scripts/test.sh` installs the last two); otherwise
//! [`Lab::start`] returns [`Unavailable`] with the reason, and tests report themselves skipped.

pub mod cluster;
mod inside;
mod node;
mod process;
mod profile;
mod rebind;

pub use cluster::{Cluster, ClusterConfig, ClusterError};
pub use inside::HostRuntime;
pub use node::LabNode;
pub use process::HostProcess;
pub use profile::Profile;
pub use rebind::MAX_REBINDS;

use anyhow::{ensure, Context};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Prefix of every namespace the harness makes.
pub const PREFIX: &str = "sblab";

/// The private range lab addresses come from (`10.77.0.0/16`), inside lab namespaces only.
/// `switchboard-cli bench` admits it besides loopback.
pub const LAB_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 77, 0, 0), 16);

/// Hosts per lab at most (one /24 each).
pub const MAX_HOSTS: usize = 250;

/// Packets an `sb-netem` helper holds at most (more are dropped and counted).
pub const HELPER_QUEUE_LIMIT: usize = 4096;

/// Queue depth of a `tbf` rate limiter, in time at its rate (a modem-like buffer).
const TBF_LATENCY_MS: u64 = 100;

/// Why no lab can be made here (not root, no namespaces, a missing tool).
#[derive(Debug, thiserror::Error)]
#[error("impaired-network lab unavailable: {0}")]
pub struct Unavailable(pub String);

/// A host of a [`Lab`]: a network namespace with one link to the lab's router.
#[derive(Debug, Clone)]
pub struct Host {
    name: String,
    ns: String,
    index: usize,
}

impl Host {
    /// The name given to [`Lab::host`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The network namespace's name (for `ip netns exec`).
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// The host's address, `10.77.<i>.2`.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.index as u8, 2)
    }

    /// A command running `program` inside the host's namespace (`ip netns exec`). Killed with
    /// the lab at the latest; set `kill_on_drop` to end it sooner.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(program);
        cmd
    }

    /// Run `f` on a thread inside the host's namespace: sockets it makes (e.g.
    /// `std::net::UdpSocket::bind`) stay on the host wherever they are used afterwards.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        inside::within(&self.ns, f)
    }

    /// Run the future made by `make` inside the host's namespace, on a dedicated thread with
    /// its own runtime (for code that opens its own connections, such as a client library).
    pub async fn run<T, F, Fut>(&self, make: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        inside::run(&self.ns, make).await
    }

    /// A tokio runtime on a thread inside the host's namespace, for clients that live on the
    /// host (see [`HostRuntime`]).
    pub fn runtime(&self) -> std::io::Result<HostRuntime> {
        HostRuntime::start(&self.ns)
    }

    fn router_if(&self) -> String {
        format!("h{}", self.index)
    }
}

/// One `sb-netem` helper: a direction of a host's link.
struct Helper {
    host: usize,
    child: Child,
}

/// Router plus hosts, torn down on drop.
pub struct Lab {
    tag: String,
    router: String,
    hosts: Vec<Host>,
    helpers: Vec<Helper>,
    /// Rebindings so far per host index ([`Lab::rebind`]).
    rebinds: HashMap<usize, u8>,
}

static LABS: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Make a lab's router namespace. `name` (letters, digits, `-`) appears in the namespace
    /// names. Namespaces left by dead processes are removed first.
    pub fn start(name: &str) -> Result<Self, Unavailable> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Unavailable("needs root (network namespaces, iptables, tc)".into()));
        }
        let tools = [
            ("ip", "-V", "iproute2"),
            ("tc", "-V", "iproute2"),
            ("iptables", "-V", "iptables"),
            ("ethtool", "--version", "ethtool"),
        ];
        for (tool, version, install) in tools {
            let found = Command::new(tool).arg(version).stdout(Stdio::null()).stderr(Stdio::null()).status();
            if !found.is_ok_and(|s| s.success()) {
                return Err(Unavailable(format!(
                    "`{tool}` not found (apt-get install {install}; scripts/test.sh installs it)"
                )));
            }
        }
        let clean: String = name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(24).collect();
        let tag = format!("{PREFIX}-{}-{}-{clean}", std::process::id(), LABS.fetch_add(1, Ordering::Relaxed));
        remove_stale();
        let router = format!("{tag}-router");
        sh(&["ip", "netns", "add", &router]).map_err(|e| Unavailable(format!("cannot make a namespace: {e:#}")))?;
        let lab = Self { tag, router, hosts: Vec::new(), helpers: Vec::new(), rebinds: HashMap::new() };
        let setup = || -> anyhow::Result<()> {
            sh(&["ip", "-n", &lab.router, "link", "set", "lo", "up"])?;
            in_ns(&lab.router, &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])?;
            lab.iptables(&["-N", "sb-part"])?;
            lab.iptables(&["-A", "FORWARD", "-j", "sb-part"])?;
            Ok(())
        };
        if let Err(e) = setup() {
            return Err(Unavailable(format!("cannot set up the router namespace: {e:#}")));
        }
        Ok(lab)
    }

    /// The prefix of this lab's namespace names.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The router's namespace.
    pub fn router(&self) -> &str {
        &self.router
    }

    /// The lab's hosts, in the order they were made.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Process ids of the running `sb-netem` helpers.
    pub fn helper_pids(&self) -> Vec<u32> {
        self.helpers.iter().map(|h| h.child.id()).collect()
    }

    /// Add a host: a namespace linked to the router, address `10.77.<i>.2/24`, unshaped.
    pub fn host(&mut self, name: &str) -> anyhow::Result<Host> {
        ensure!(self.hosts.len() < MAX_HOSTS, "a lab has at most {MAX_HOSTS} hosts");
        ensure!(self.hosts.iter().all(|h| h.name != name), "host {name} exists");
        ensure!(
            !name.is_empty() && name.len() <= 24 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "host names are 1-24 letters, digits or '-'"
        );
        let index = self.hosts.len() + 1;
        let host = Host { name: name.into(), ns: format!("{}-{name}", self.tag), index };
        let (ns, rif, r) = (host.ns.as_str(), host.router_if(), self.router.as_str());
        sh(&["ip", "netns", "add", ns])?;
        // Registered before the rest so that a failure below still tears it down.
        self.hosts.push(host.clone());
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        sh(&["ip", "-n", r, "link", "add", &rif, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
        sh(&["ip", "-n", r, "addr", "add", &format!("10.77.{index}.1/24"), "dev", &rif])?;
        sh(&["ip", "-n", ns, "addr", "add", &format!("10.77.{index}.2/24"), "dev", "eth0"])?;
        sh(&["ip", "-n", r, "link", "set", &rif, "up"])?;
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        sh(&["ip", "-n", ns, "route", "add", "default", "via", &format!("10.77.{index}.1")])?;
        // Wire-sized packets: with segmentation and receive offloads a veth carries TCP (and
        // GSO'd UDP) in up-to-64 KiB aggregates, which the loss rule would drop, and the delay
        // helper hold, as ONE packet; a profile's loss is per packet on the wire.
        for (space, dev) in [(ns, "eth0"), (r, rif.as_str())] {
            sh(&["ip", "netns", "exec", space, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"])?;
        }
        let (up, down) = (format!("sb-up-{index}"), format!("sb-dn-{index}"));
        self.iptables(&["-t", "mangle", "-N", &up])?;
        self.iptables(&["-t", "mangle", "-A", "PREROUTING", "-i", &rif, "-j", &up])?;
        self.iptables(&["-t", "mangle", "-N", &down])?;
        self.iptables(&["-t", "mangle", "-A", "POSTROUTING", "-o", &rif, "-j", &down])?;
        Ok(host)
    }

    /// Impair `host`'s link with `profile` in both directions, replacing any previous profile
    /// ([`Profile::clean`] removes all impairment).
    pub fn shape(&mut self, host: &Host, profile: Profile) -> anyhow::Result<()> {
        let i = host.index;
        let rif = host.router_if();
        // Undo the previous profile.
        for chain in [format!("sb-up-{i}"), format!("sb-dn-{i}")] {
            self.iptables(&["-t", "mangle", "-F", &chain])?;
        }
        let (stop, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.helpers).into_iter().partition(|h| h.host == i);
        self.helpers = keep;
        stop_helpers(stop);
        let _ = sh(&["tc", "-n", &self.router, "qdisc", "del", "dev", &rif, "root"]);
        let _ = sh(&["tc", "-n", &host.ns, "qdisc", "del", "dev", "eth0", "root"]);

        ensure!((0.0..1.0).contains(&profile.loss), "loss must be in [0, 1)");
        ensure!(profile.one_way_jitter() <= profile.one_way(), "jitter must not exceed the delay");
        // Host to network on PREROUTING (-i), network to host on POSTROUTING (-o): two hooks,
        // so a packet between two shaped hosts gets both impairments.
        for (chain, queue) in [(format!("sb-up-{i}"), 2 * i as u16), (format!("sb-dn-{i}"), 2 * i as u16 + 1)] {
            if profile.loss > 0.0 {
                let p = format!("{:.6}", profile.loss);
                self.iptables(&[
                    "-t",
                    "mangle",
                    "-A",
                    &chain,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ])?;
            }
            if !profile.one_way().is_zero() {
                let child = self.spawn_helper(queue, profile)?;
                self.helpers.push(Helper { host: i, child });
                let q = queue.to_string();
                self.iptables(&["-t", "mangle", "-A", &chain, "-j", "NFQUEUE", "--queue-num", &q])?;
            }
        }
        if let Some(bps) = profile.rate_bps {
            // Bucket: 10 ms at the rate, at least two full frames.
            let burst = (bps / 8 / 100).max(2 * 1514).to_string();
            let rate = format!("{bps}bit");
            let latency = format!("{TBF_LATENCY_MS}ms");
            for (ns, dev) in [(self.router.as_str(), rif.as_str()), (host.ns.as_str(), "eth0")] {
                let args =
                    ["qdisc", "add", "dev", dev, "root", "tbf", "rate", &rate, "burst", &burst, "latency", &latency];
                sh(&[&["tc", "-n", ns][..], &args[..]].concat())?;
            }
        }
        Ok(())
    }

    /// Cap what `host` receives at `bps` (`None`: lift the cap), leaving its uplink and its
    /// profile's delay and loss as they are: a link thin one way, such as a congested
    /// downlink or an ADSL line. Replaces the profile's rate cap on that direction.
    pub fn limit_downlink(&self, host: &Host, bps: Option<u64>) -> anyhow::Result<()> {
        let rif = host.router_if();
        let Some(bps) = bps else {
            let _ = sh(&["tc", "-n", &self.router, "qdisc", "del", "dev", &rif, "root"]);
            return Ok(());
        };
        ensure!(bps >= 8_000, "a downlink cap below 8 kbit/s carries nothing useful");
        let burst = (bps / 8 / 100).max(2 * 1514).to_string();
        let rate = format!("{bps}bit");
        let latency = format!("{TBF_LATENCY_MS}ms");
        let args =
            ["qdisc", "replace", "dev", &rif, "root", "tbf", "rate", &rate, "burst", &burst, "latency", &latency];
        sh(&[&["tc", "-n", self.router.as_str()][..], &args[..]].concat())
    }

    /// Take `host`'s link down (both ends lose carrier; nothing passes).
    pub fn link_down(&self, host: &Host) -> anyhow::Result<()> {
        sh(&["ip", "-n", &self.router, "link", "set", &host.router_if(), "down"])
    }

    /// Bring `host`'s link back up.
    pub fn link_up(&self, host: &Host) -> anyhow::Result<()> {
        sh(&["ip", "-n", &self.router, "link", "set", &host.router_if(), "up"])
    }

    /// Give `host` `count` more addresses on its link, `10.77.<i>.3` onwards (a load host
    /// emulating clients behind many addresses; bind to them, e.g. `switchboard-cli bench
    /// --source-ip`). Faults apply to them as to the host's own: they are per link.
    pub fn add_addresses(&self, host: &Host, count: usize) -> anyhow::Result<Vec<Ipv4Addr>> {
        ensure!(count <= 250, "at most 250 more addresses per host");
        let mut added = Vec::with_capacity(count);
        for k in 0..count {
            let ip = Ipv4Addr::new(10, 77, host.index as u8, 3 + k as u8);
            sh(&["ip", "-n", &host.ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            added.push(ip);
        }
        Ok(added)
    }

    /// Drop everything between `a` and `b` (both directions) at the router.
    pub fn partition(&self, a: &Host, b: &Host) -> anyhow::Result<()> {
        for (x, y) in [(a, b), (b, a)] {
            self.iptables(&["-A", "sb-part", "-i", &x.router_if(), "-o", &y.router_if(), "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Undo [`Lab::partition`] of `a` and `b`.
    pub fn heal(&self, a: &Host, b: &Host) -> anyhow::Result<()> {
        for (x, y) in [(a, b), (b, a)] {
            self.iptables(&["-D", "sb-part", "-i", &x.router_if(), "-o", &y.router_if(), "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Undo every [`Lab::partition`].
    pub fn heal_all(&self) -> anyhow::Result<()> {
        self.iptables(&["-F", "sb-part"])
    }

    fn iptables(&self, args: &[&str]) -> anyhow::Result<()> {
        in_ns(&self.router, &[&["iptables", "-w", "5"][..], args].concat()).map(drop)
    }

    /// Start an `sb-netem` for `queue` and wait until it has bound the queue (its first line).
    fn spawn_helper(&self, queue: u16, profile: Profile) -> anyhow::Result<Child> {
        // Beside the running program (a binary of this package), else where tests find binaries.
        let beside = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.join("sb-netem")));
        let bin = match beside.filter(|p| p.exists() && std::env::var_os("SWITCHBOARD_BIN_DIR").is_none()) {
            Some(path) => path,
            None => crate::binary("sb-netem"),
        };
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.router])
            .arg(bin)
            .args(["--queue", &queue.to_string()])
            .args(["--delay-us", &profile.one_way().as_micros().to_string()])
            .args(["--jitter-us", &profile.one_way_jitter().as_micros().to_string()])
            .args(["--limit", &HELPER_QUEUE_LIMIT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting sb-netem")?;
        let mut line = String::new();
        let mut err = BufReader::new(child.stderr.take().expect("piped stderr"));
        // Ends at its first line, or at EOF if it exits.
        err.read_line(&mut line).context("reading sb-netem")?;
        child.stderr = Some(err.into_inner());
        if !line.starts_with("sb-netem: queue") {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("sb-netem did not start: {line}");
        }
        Ok(child)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        stop_helpers(std::mem::take(&mut self.helpers));
        let mut all: Vec<String> = self.hosts.iter().map(|h| h.ns.clone()).collect();
        all.push(self.router.clone());
        for ns in all {
            remove_namespace(&ns);
        }
    }
}

/// SIGTERM the helpers (they print their counts), wait up to 2 s, then SIGKILL.
fn stop_helpers(helpers: Vec<Helper>) {
    for h in &helpers {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(h.child.id() as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    for mut h in helpers {
        while Instant::now() < deadline && matches!(h.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = h.child.kill();
        let _ = h.child.wait();
        let mut rest = String::new();
        if let Some(mut err) = h.child.stderr.take() {
            let _ = err.read_to_string(&mut rest);
        }
        if !rest.trim().is_empty() {
            eprintln!("{}", rest.trim());
        }
    }
}

/// Kill every process in `ns` and delete it.
fn remove_namespace(ns: &str) {
    if let Ok(pids) = sh_out(&["ip", "netns", "pids", ns]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<libc::pid_t>().ok()) {
            if pid as u32 != std::process::id() {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    if let Err(e) = sh(&["ip", "netns", "del", ns]) {
        eprintln!("netns: could not delete {ns}: {e:#}");
    }
}

/// Namespaces whose names start with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    sh_out(&["ip", "netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Remove the lab namespaces of processes that no longer exist.
pub fn remove_stale() {
    for ns in namespaces_with_prefix(&format!("{PREFIX}-")) {
        let pid = ns.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            eprintln!("netns: removing {ns}, left by a process that is gone");
            remove_namespace(&ns);
        }
    }
}

fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    sh_out(&[&["ip", "netns", "exec", ns][..], args].concat())
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    sh_out(args).map(drop)
}

fn sh_out(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    ensure!(out.status.success(), "`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
