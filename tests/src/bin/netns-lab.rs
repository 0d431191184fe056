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
    /// Drop everything between two hosts, `A,B` (both directions); repeatable.
    #[arg(long = "partition")]
    partitions: Vec<String>,
    /// Also tear down when standard input closes (for a program that runs the lab as its
    /// child: the lab goes when that program does, however it ends).
    #[arg(long)]
    exit_on_stdin_eof: bool,
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
    for pair in &args.partitions {
        let (a, b) = pair.split_once(',').ok_or_else(|| anyhow::anyhow!("--partition takes A,B, not {pair:?}"))?;
        let host = |name: &str| {
            lab.hosts().iter().find(|h| h.name() == name).cloned().ok_or_else(|| anyhow::anyhow!("no host {name}"))
        };
        lab.partition(&host(a)?, &host(b)?)?;
        println!("partition {a} {b}: nothing passes between them");
    }
    println!("ready: lab {} up; Ctrl-C tears it down", lab.tag());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    if args.exit_on_stdin_eof {
        // Ends at EOF or a read error; the input itself is ignored.
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while matches!(std::io::Read::read(&mut std::io::stdin(), &mut buf), Ok(n) if n > 0) {}
            let _ = closed_tx.send(());
        });
    } else {
        std::mem::forget(closed_tx); // never closes
    }
    let stdin_closed = closed_rx;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = stdin_closed => {}
    }
    drop(lab);
    println!("lab torn down");
    Ok(())
}
