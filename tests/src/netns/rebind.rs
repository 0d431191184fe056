//! NAT rebinding of a lab host: mid-session, the packets of its existing flows suddenly come
//! from another address and port, and what the rest of the lab sends to the old ones is lost.
//!
//! This is what a client behind a NAT sees when the NAT replaces its mapping (a reboot, a
//! carrier-grade NAT reassigning, a mobile handover behind the same NAT): QUIC can migrate the
//! connection to the new address (RFC 9000 §9), TCP cannot.
//!
//! How, all in the router's namespace (gone with the lab):
//! - `raw` PREROUTING, chain `sb-nat-<i>`: every packet from the host (`-i h<i>`), and every
//!   packet to its new public address, is tracked in a fresh conntrack zone (`CT --zone`).
//!   NAT decides once per tracked flow, when the flow is first seen: a new zone makes the
//!   host's existing flows new flows, so the rule below applies to them mid-session;
//! - `nat` POSTROUTING, chain `sb-nat-<i>`: the host's new flows leave as
//!   `10.77.<i>.<10+k>:<20000+100k..+99>` after the k-th rebinding (a port outside Linux's
//!   ephemeral range, so the port changes as well as the address);
//! - `filter` FORWARD, chain `sb-nat-<i>`: towards the host passes only what belongs to a
//!   source-NATed flow of the current zone; replies to the old address (the flows from
//!   before, the previous public address) are dropped, as a NAT drops what no longer
//!   matches a mapping. So are connections opened towards the host from outside.
//!
//! The public address is not assigned to any interface: the other hosts route it to the
//! router (their default route), where conntrack maps replies back to the host before routing.

use super::{Host, Lab};
use anyhow::ensure;
use std::net::Ipv4Addr;

/// Rebindings of one host at most (each takes a public address and a range of 100 ports).
pub const MAX_REBINDS: u8 = 99;

/// First port of the k-th rebinding's range is `REBIND_PORT_BASE + 100 k`: below Linux's
/// ephemeral range (32768-60999), so never the host's own port.
const REBIND_PORT_BASE: u16 = 20_000;

impl Lab {
    /// Simulate NAT rebinding of `host` (see the [module docs](self)): from now on its
    /// packets, those of flows already open included, leave the router from a new public
    /// address and port, and packets for the old ones are dropped. Returns the new public
    /// address (the source the other hosts see). May be called again (up to
    /// [`MAX_REBINDS`] times per host); each call moves the host to a new address.
    pub fn rebind(&mut self, host: &Host) -> anyhow::Result<Ipv4Addr> {
        let i = host.index;
        let k = self.rebinds.get(&i).copied().unwrap_or(0) + 1;
        ensure!(k <= MAX_REBINDS, "{} was rebound {MAX_REBINDS} times already", host.name);
        let public = Ipv4Addr::new(10, 77, i as u8, 10 + k);
        let chain = format!("sb-nat-{i}");
        if k == 1 {
            for (table, hook) in [("raw", "PREROUTING"), ("nat", "POSTROUTING"), ("filter", "FORWARD")] {
                self.iptables(&["-t", table, "-N", &chain])?;
                self.iptables(&["-t", table, "-A", hook, "-j", &chain])?;
            }
        }
        // One zone per (host, rebinding): host indexes are below 256, k below 100.
        let zone = (i * 256 + usize::from(k)).to_string();
        let (rif, addr, public_s) = (host.router_if(), host.addr().to_string(), public.to_string());
        // The NAT and filter rules first, the switch of zones (raw) last: NAT is bound at a
        // connection's first packet, so a packet that reached the new zone before the SNAT
        // rules existed made an un-NATed entry, and its flow stayed broken for good (the
        // filter drops what is not SNAT'd). On a loaded machine that window was hit in most
        // runs of `tests/tests/migration.rs`.
        self.iptables(&["-t", "nat", "-F", &chain])?;
        let first = REBIND_PORT_BASE + 100 * u16::from(k);
        let to = format!("{public}:{first}-{}", first + 99);
        self.iptables(&["-t", "nat", "-A", &chain, "-s", &addr, "-p", "udp", "-j", "SNAT", "--to-source", &to])?;
        self.iptables(&["-t", "nat", "-A", &chain, "-s", &addr, "-p", "tcp", "-j", "SNAT", "--to-source", &to])?;
        self.iptables(&["-t", "nat", "-A", &chain, "-s", &addr, "-j", "SNAT", "--to-source", &public_s])?;
        self.iptables(&["-t", "filter", "-F", &chain])?;
        self.iptables(&[
            "-t",
            "filter",
            "-A",
            &chain,
            "-o",
            &rif,
            "-m",
            "conntrack",
            "!",
            "--ctstate",
            "SNAT",
            "-j",
            "DROP",
        ])?;
        self.iptables(&["-t", "raw", "-F", &chain])?;
        self.iptables(&["-t", "raw", "-A", &chain, "-i", &rif, "-j", "CT", "--zone", &zone])?;
        self.iptables(&["-t", "raw", "-A", &chain, "-d", &public_s, "-j", "CT", "--zone", &zone])?;
        self.rebinds.insert(i, k);
        Ok(public)
    }
}
