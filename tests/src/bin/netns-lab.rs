//! `netns-lab`: bring up an impaired-network lab (`switchboard_tests::netns`) by hand — a
//! router and hosts in network namespaces, each host's link shaped with a profile — print how
//! to reach each host, and tear everything down on Ctrl-C (SIGINT) or SIGTERM.
//!
//! `deploy/netns-lab` builds and runs it. Needs root.

use clap::Parser;
use switchboard_tests::netns::{Lab, Profile};

#[derive(Parser, Debug)]
#[command(about = "Hosts in network namespaces behind a router, links shaped (clean, wifi, mobile, bad)")]
struct Args {
    /// A host, `NAME` or `NAME=PROFILE` (profiles: clean, wifi, mobile, bad, long); repeatable.
    #[arg(long = "host", required = true)]
    hosts: Vec<String>,
    /// Name of the lab (part of the namespace names).
    #[arg(long, default_value = "lab")]
    name: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut lab = Lab::start(&args.name)?;
    for spec in &args.hosts {
        let (name, profile) = spec.split_once('=').unwrap_or((spec, "clean"));
        let profile = Profile::named(profile).ok_or_else(|| anyhow::anyhow!("unknown profile {profile}"))?;
        let host = lab.host(name)?;
        lab.shape(&host, profile)?;
        println!(
            "host {name} {} profile {} (RTT {:?} ±{:?}, loss {}%/direction, rate {}): ip netns exec {} <command>",
            host.addr(),
            profile.name,
            profile.rtt,
            profile.jitter,
            profile.loss * 100.0,
            profile.rate_bps.map_or("unlimited".into(), |r| format!("{} Mbit/s", r as f64 / 1e6)),
            host.namespace()
        );
    }
    println!("ready: lab {} up; Ctrl-C tears it down", lab.tag());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(lab);
    println!("lab torn down");
    Ok(())
}
