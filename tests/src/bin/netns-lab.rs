//! `netns-lab`: bring up an impaired-network lab (`switchboard_tests::netns`) by hand — a
//! router and hosts in network namespaces, each host's link shaped with a profile — print how
//! to reach each host, and tear everything down on Ctrl-C (SIGINT) or SIGTERM.
//!
//! With `--exit-on-stdin-eof`, standard input also takes commands, one per line, answered on
//! standard output with `ok: <command>` or `error: <command>: <why>`:
//!
//! - `downlink HOST KBIT` caps what HOST receives at KBIT kbit/s (its uplink unchanged);
//!   `downlink HOST off` lifts the cap.
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
    /// child: the lab goes when that program does, however it ends), and take commands
    /// from it (`downlink HOST KBIT|off`).
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
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    if args.exit_on_stdin_eof {
        // Ends at EOF or a read error (dropping the sender closes the channel).
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::stdin().lock()) {
                let Ok(line) = line else { break };
                if lines_tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
    } else {
        std::mem::forget(lines_tx); // never closes
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            line = lines.recv() => match line {
                None => break,
                Some(line) if line.trim().is_empty() => {}
                Some(line) => match command(&lab, line.trim()) {
                    Ok(()) => println!("ok: {}", line.trim()),
                    Err(e) => println!("error: {}: {e:#}", line.trim()),
                },
            },
        }
    }
    drop(lab);
    println!("lab torn down");
    Ok(())
}

/// Run one standard-input command.
fn command(lab: &Lab, line: &str) -> anyhow::Result<()> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["downlink", host, rate] => {
            let host =
                lab.hosts().iter().find(|h| h.name() == *host).ok_or_else(|| anyhow::anyhow!("no host {host}"))?;
            let bps = match *rate {
                "off" => None,
                kbit => Some(
                    kbit.parse::<u64>()
                        .ok()
                        .and_then(|k| k.checked_mul(1000))
                        .ok_or_else(|| anyhow::anyhow!("KBIT must be a number (kbit/s) or off"))?,
                ),
            };
            lab.limit_downlink(host, bps)
        }
        _ => anyhow::bail!("unknown command (try: downlink HOST KBIT|off)"),
    }
}
