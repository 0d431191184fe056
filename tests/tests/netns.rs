//! The impaired-network harness (`switchboard_tests::netns`) measured against its own
//! configuration: round-trip time, loss and rate of each profile over real packets between
//! lab hosts, complete tear-down (after a panic, and after a process is killed), and a real
//! node used from a shaped client host. These check the EMULATOR, not Switchboard's
//! performance: only its figures compared with the profile it was given.
//!
//! Needs root (network namespaces, iptables, tc); elsewhere each test prints `SKIPPED: <why>`
//! and returns. All traffic stays between the lab's own namespace addresses (10.77.0.0/16).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_tests::netns::{Host, Lab, Profile};
use switchboard_tests::within;
use tokio::net::UdpSocket;

/// A lab, or `SKIPPED: <reason>` and return.
macro_rules! lab_or_skip {
    ($name:expr) => {
        match Lab::start($name) {
            Ok(lab) => lab,
            Err(e) => {
                eprintln!("SKIPPED: {e}");
                return;
            }
        }
    };
}

/// A UDP socket bound on `host` (it stays in the host's namespace).
fn udp_on(host: &Host, port: u16) -> UdpSocket {
    let addr = SocketAddr::from((host.addr(), port));
    let sock = host.within(|| std::net::UdpSocket::bind(addr)).expect("binding a UDP socket on a lab host");
    sock.set_nonblocking(true).unwrap();
    UdpSocket::from_std(sock).unwrap()
}

/// Packets of a loss measurement per direction, and their pace (well under the slowest rate
/// of a profile: 1000 packets/s of ~100 bytes on the wire is 0.8 Mbit/s).
const BLAST: u32 = 3000;
const BLAST_BATCH: u32 = 10;
const BLAST_EVERY: Duration = Duration::from_millis(10);
/// RTT probes per profile, sent at a fixed pace (not waiting for answers).
const PROBES: u32 = 200;

/// Send `BLAST` numbered datagrams from `from` to `to`, paced.
async fn blast(from: &UdpSocket, to: SocketAddr) {
    let mut tick = tokio::time::interval(BLAST_EVERY);
    let mut seq = 0u32;
    while seq < BLAST {
        tick.tick().await;
        for _ in 0..BLAST_BATCH {
            let mut pkt = [0u8; 64];
            pkt[..4].copy_from_slice(&seq.to_be_bytes());
            from.send_to(&pkt, to).await.expect("send");
            seq += 1;
        }
    }
}

/// Count distinct datagrams arriving on `sock` until it has been quiet for 1 s after the
/// first one (bounded: at most 60 s).
async fn count_until_quiet(sock: &UdpSocket) -> u32 {
    let mut seen = vec![false; BLAST as usize];
    let mut buf = [0u8; 128];
    let start = Instant::now();
    let first = Duration::from_secs(10);
    loop {
        let quiet = if seen.iter().any(|s| *s) { Duration::from_secs(1) } else { first };
        match tokio::time::timeout(quiet, sock.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) if n >= 4 => {
                let seq = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                if let Some(s) = seen.get_mut(seq) {
                    *s = true;
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
        assert!(start.elapsed() < Duration::from_secs(60), "counting datagrams took over 60 s");
    }
    seen.iter().filter(|s| **s).count() as u32
}

/// What one profile measured.
struct Measured {
    up_loss: f64,
    down_loss: f64,
    rtts_ms: Vec<f64>,
    probes_lost: u32,
}

/// Loss both ways (simultaneous blasts), then RTT probes, between `client` and `server`.
async fn measure(client: Host, server: Host, port: u16, profile: Profile) -> Measured {
    let (c_sock, s_sock) = (udp_on(&client, port), udp_on(&server, port));
    let (c_addr, s_addr) = (c_sock.local_addr().unwrap(), s_sock.local_addr().unwrap());
    let (up, down, (), ()) = tokio::join!(
        count_until_quiet(&s_sock),
        count_until_quiet(&c_sock),
        blast(&c_sock, s_addr),
        blast(&s_sock, c_addr)
    );

    // RTT: the server echoes; probes go out every `gap`, wider than the jitter's spread so
    // that the emulator's in-order release never holds one probe behind another.
    let gap = (profile.jitter + Duration::from_millis(10)).max(Duration::from_millis(20));
    let echo = async {
        let mut buf = [0u8; 64];
        let mut echoed = 0;
        while echoed < PROBES {
            match tokio::time::timeout(Duration::from_secs(3), s_sock.recv_from(&mut buf)).await {
                Ok(Ok((n, from))) => {
                    s_sock.send_to(&buf[..n], from).await.expect("echo");
                    echoed += 1;
                }
                _ => break,
            }
        }
    };
    let sent: Arc<std::sync::Mutex<HashMap<u32, Instant>>> = Arc::default();
    let send = async {
        let mut tick = tokio::time::interval(gap);
        for seq in 0..PROBES {
            tick.tick().await;
            sent.lock().unwrap().insert(seq, Instant::now());
            c_sock.send_to(&seq.to_be_bytes(), s_addr).await.expect("probe");
        }
    };
    let receive = async {
        let mut rtts = Vec::new();
        let mut buf = [0u8; 64];
        let deadline = Duration::from_secs(3);
        while let Ok(Ok((n, _))) = tokio::time::timeout(deadline, c_sock.recv_from(&mut buf)).await {
            let at = Instant::now();
            if n == 4 {
                let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
                if let Some(t) = sent.lock().unwrap().remove(&seq) {
                    rtts.push((at - t).as_secs_f64() * 1000.0);
                }
            }
            if rtts.len() as u32 == PROBES {
                break;
            }
        }
        rtts
    };
    let ((), (), rtts_ms) = tokio::join!(echo, send, receive);
    Measured {
        up_loss: 1.0 - f64::from(up) / f64::from(BLAST),
        down_loss: 1.0 - f64::from(down) / f64::from(BLAST),
        probes_lost: PROBES - rtts_ms.len() as u32,
        rtts_ms,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_rtt_and_loss_match_each_profile() {
    let mut lab = lab_or_skip!("emulator");
    let server = lab.host("server").unwrap();
    let mut clients = Vec::new();
    for profile in Profile::all() {
        let host = lab.host(profile.name).unwrap();
        lab.shape(&host, profile).unwrap();
        clients.push((host, profile));
    }
    // Every profile at once, each on its own host and link (the server's link is clean).
    let runs = clients.iter().enumerate().map(|(i, (host, profile))| {
        let (host, server, profile) = (host.clone(), server.clone(), *profile);
        tokio::spawn(async move { (profile, measure(host, server, 7000 + i as u16, profile).await) })
    });
    let results = within(Duration::from_secs(120), "the measurements", futures_util::future::join_all(runs)).await;

    let mut failures = Vec::new();
    for result in results {
        let (profile, m) = result.expect("a measurement task");
        let mut rtts = m.rtts_ms.clone();
        rtts.sort_by(f64::total_cmp);
        assert!(
            rtts.len() >= (PROBES / 2) as usize,
            "{}: only {} of {PROBES} probes answered",
            profile.name,
            rtts.len()
        );
        let mean = rtts.iter().sum::<f64>() / rtts.len() as f64;
        let target = profile.rtt.as_secs_f64() * 1000.0;
        let jitter = profile.jitter.as_secs_f64() * 1000.0;
        eprintln!(
            "netns {:>6}: RTT target {target:.0} ms ±{jitter:.0}: mean {mean:.2} min {:.2} p50 {:.2} p95 {:.2} max {:.2} ms \
             ({} probes, {} lost) | loss target {:.2}%: up {:.2}% down {:.2}% ({BLAST} datagrams each way)",
            profile.name,
            rtts[0],
            percentile(&rtts, 0.5),
            percentile(&rtts, 0.95),
            rtts[rtts.len() - 1],
            rtts.len(),
            m.probes_lost,
            profile.loss * 100.0,
            m.up_loss * 100.0,
            m.down_loss * 100.0,
        );
        // Delay: never early (the emulator holds at least delay - jitter each way), and the
        // mean within [0.95x, 1.5x + 5 ms] of the target (load only ever adds).
        if rtts[0] < 0.95 * (target - jitter) {
            failures.push(format!(
                "{}: a probe came back in {:.2} ms, under {target} - {jitter} ms",
                profile.name, rtts[0]
            ));
        }
        if !(0.95 * target..=1.5 * target + 5.0).contains(&mean) {
            failures.push(format!(
                "{}: mean RTT {mean:.2} ms is not within [0.95, 1.5 x + 5 ms] of {target} ms",
                profile.name
            ));
        }
        if jitter > 0.0 && percentile(&rtts, 0.95) - percentile(&rtts, 0.05) < jitter / 2.0 {
            failures.push(format!("{}: RTT spread under half the {jitter} ms jitter", profile.name));
        }
        // Loss: binomial, so within 5 standard deviations (+0.3 points for anything else).
        let sd = (profile.loss * (1.0 - profile.loss) / f64::from(BLAST)).sqrt();
        for (dir, loss) in [("up", m.up_loss), ("down", m.down_loss)] {
            if (loss - profile.loss).abs() > 5.0 * sd + 0.003 {
                failures.push(format!(
                    "{}: {dir} loss {:.2}% vs {:.2}%",
                    profile.name,
                    loss * 100.0,
                    profile.loss * 100.0
                ));
            }
        }
    }
    assert!(failures.is_empty(), "the emulator does not match its profiles:\n{}", failures.join("\n"));
}
