//! Rolling upgrade under load, on the multi-host cluster (3 JetStream NATS servers, 4 nodes,
//! HAProxy, the nginx UDP balancer, 2 load hosts; `switchboard_tests::netns::cluster`).
//!
//! While a workload runs (`switchboard_tests::workload`: members over WebSocket through
//! HAProxy and WebTransport through nginx, reliable chat in several rooms, 1:1 calls placed,
//! answered, held and ended one after another), every node is drained (SIGTERM) and started
//! again, one after another, then every NATS server is restarted, one after another. Checked,
//! by counts:
//! - every acknowledged reliable message reached every member of its room exactly once, in
//!   order (members resume their room across each reconnect);
//! - every call placed ended, and both parties saw the same end (calls in progress at a
//!   restart too); calls placed after the last restart are answered and completed;
//! - presence ends with exactly the connected participants in every member's view;
//! - each member lost its connection at most once per restart of the node it was on (NATS
//!   restarts: none).
//!
//! The small run is part of the test command. The benchmark (`--ignored`) runs the same at
//! 1,000 clients (RELIABILITY.md, "Rolling upgrade"):
//! `cargo build --release --workspace --bins && cargo test --release -p switchboard-tests
//! --test rolling_upgrade -- --ignored --nocapture` (sizes: `SB_UPGRADE_CLIENTS`,
//! `SB_UPGRADE_ROOMS`, `SB_UPGRADE_PUBLISH_MS`, `SB_UPGRADE_CALL_PAIRS`).
//!
//! Needs root, nats-server, haproxy and nginx with its stream module (scripts/test.sh
//! installs them); elsewhere it prints `SKIPPED: <why>` and returns.

use std::time::{Duration, Instant};
use switchboard_tests::netns::cluster::node_id;
use switchboard_tests::netns::{self, Cluster, ClusterConfig};
use switchboard_tests::workload::{checks, Scale, Workload};

/// Bounds of waits (not timing asserts): a debug build of the whole cluster shares a loaded
/// 2-core machine.
const SETTLE: Duration = Duration::from_secs(90);
const CONVERGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_under_load_loses_nothing() {
    run(Scale::small().from_env(), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: 1,000 clients; run with --release --ignored --nocapture"]
async fn rolling_upgrade_benchmark() {
    run(Scale::full().from_env(), 4).await;
}

async fn wait(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

async fn run(scale: Scale, load_hosts: usize) {
    let config = ClusterConfig {
        name: "upgrade".into(),
        load_hosts,
        // Dead connections noticed in ~3 heartbeats, a silent node reported in 3 s, a drain
        // bounded to 5 s (its GoAway spreads reconnects over 5 s anyway), unanswered calls
        // missed after 10 s. (The harness already lifts the per-address budget of
        // unauthenticated connections: behind the balancers clients share addresses.)
        node_args: ["--heartbeat", "2", "--node-timeout", "3", "--drain-timeout", "5", "--call-ring-timeout", "10"]
            .map(String::from)
            .to_vec(),
        log_level: std::env::var("SB_UPGRADE_LOG").unwrap_or_else(|_| "warn".into()),
        ..Default::default()
    };
    let Some(mut cluster) = Cluster::start_or_skip(config).await else { return };
    let tag = cluster.lab().tag().to_owned();
    let began = Instant::now();
    let mut work = Workload::start(&cluster, &scale).await.expect("the workload starts");
    let members = work.members.clone();
    eprintln!("{} clients in {} rooms connected in {:?}", members.len(), scale.rooms, began.elapsed());

    // Warm up: messages in every room and a call answered per pair.
    wait(CONVERGE, "traffic in every room and a call per pair", || {
        work.fewest_acked_in_a_room() >= 3 && work.calls_completed_since(began) >= scale.call_pairs
    })
    .await;

    // Every node, one after another: SIGTERM (drain), start again, wait for every member to
    // be back in its room before the next.
    let mut restarts_on = vec![0usize; members.len()];
    let mut in_progress = 0;
    for i in 0..cluster.node_count() {
        let id = node_id(i);
        let on = work.on_node(&id);
        on.iter().for_each(|&m| restarts_on[m] += 1);
        let stopped = Instant::now();
        cluster.restart_node(i).await.unwrap_or_else(|e| panic!("{id} drains and starts again: {e:#}"));
        let restarted = stopped.elapsed();
        wait(SETTLE, &format!("{id}'s clients back"), || {
            on.iter().all(|&m| members[m].seen().rejoined_at.is_some_and(|t| t > stopped))
        })
        .await;
        work.wait_settled(SETTLE).await.expect("every member back in its room");
        let back = on.iter().filter_map(|&m| members[m].seen().rejoined_at).map(|t| t - stopped).max();
        let gap = on
            .iter()
            .filter_map(|&m| {
                let s = members[m].seen();
                Some(s.rejoined_at? - s.disconnected_at?)
            })
            .max();
        let calls = {
            let ledger = work.ledger.lock().unwrap();
            let parties =
                |p: &switchboard_tests::workload::calls::Placed| on.contains(&p.caller) || on.contains(&p.callee);
            ledger
                .iter()
                .filter(|p| {
                    parties(p) && p.accepted.is_some_and(|a| a < stopped) && p.ended.is_none_or(|e| e > stopped)
                })
                .count()
        };
        in_progress += calls;
        eprintln!(
            "{id}: {} clients moved; restart {restarted:?}; last back {back:?} after SIGTERM; longest disconnected {gap:?}; {calls} calls in progress",
            on.len()
        );
    }

    // Every NATS server, one after another; the rooms go on after each.
    for i in 0..cluster.nats_count() {
        let started = Instant::now();
        cluster.restart_nats(i).await.unwrap_or_else(|e| panic!("nats{} restarts: {e:#}", i + 1));
        let restarted = started.elapsed();
        let before = work.acked_count();
        let more = wait(CONVERGE, "messages acknowledged after a NATS restart", || {
            work.acked_count() >= before + members.len()
        })
        .await;
        eprintln!(
            "nats{}: restart {restarted:?}; then {} more messages acknowledged in {more:?}",
            i + 1,
            members.len()
        );
    }
    let last = Instant::now();
    let mut differs = String::new();
    if let Ok(dir) = std::env::var("SB_UPGRADE_KEEP_LOGS") {
        let _ = std::process::Command::new("cp").arg("-r").arg(cluster.work_dir()).arg(&dir).status();
    }
    let presence_after = wait(CONVERGE, "presence exact", || match checks::presence(&members) {
        Ok(()) => true,
        Err(e) => {
            if e != differs {
                eprintln!("presence not exact yet: {e}");
                differs = e;
            }
            false
        }
    })
    .await;
    let calls_after = wait(CONVERGE, "a call per pair completed after the last restart", || {
        work.calls_completed_since(last) >= scale.call_pairs
    })
    .await;

    let failed_invites = work.stop().await.expect("the workload stops");
    // Bounded waits for the stragglers; the checks below say what is missing if any.
    let start = Instant::now();
    while !checks::messages_arrived(&members, &work.acked) && start.elapsed() < CONVERGE {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let placed = work.ledger.lock().unwrap().clone();
    while !checks::calls_settled(&members, &placed) && start.elapsed() < 2 * CONVERGE {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let checked = checks::messages(&members, &work.acked).unwrap_or_else(|e| panic!("messages: {e}"));
    let calls = checks::calls(&members, &placed).unwrap_or_else(|e| panic!("calls: {e}"));
    checks::presence(&members).unwrap_or_else(|e| panic!("presence at the end: {e}"));
    let mut reconnects = 0;
    for (m, member) in members.iter().enumerate() {
        let seen = member.seen();
        assert!(seen.closed.is_none(), "{} stopped: {:?}", member.user, seen.closed);
        assert!(
            seen.disconnects <= restarts_on[m],
            "{} ({:?}) reconnected {} times for {} restarts of its nodes",
            member.user,
            member.via,
            seen.disconnects,
            restarts_on[m]
        );
        reconnects += seen.disconnects;
    }
    eprintln!(
        "FIGURES: {} clients, {} acknowledged messages ({} publishes failed), {checked} deliveries checked: 0 lost, 0 duplicated, 0 out of order; \
         {} reconnects for {} node restarts of their nodes; calls: {} placed, {} completed, {} offline (callee moving), {} ended otherwise ({failed_invites} invitations failed), \
         {in_progress} in progress at a node restart, a call per pair completed {calls_after:?} after the last restart; \
         presence exact {presence_after:?} after the last restart; total {:?}",
        members.len(),
        work.acked_count(),
        work.publish_failures.load(std::sync::atomic::Ordering::Relaxed),
        reconnects,
        restarts_on.iter().sum::<usize>(),
        calls.placed,
        calls.completed,
        calls.offline,
        calls.other,
        began.elapsed(),
    );

    work.close().await;
    drop(work);
    drop(cluster);
    assert_eq!(netns::namespaces_with_prefix(&tag), Vec::<String>::new(), "namespaces left after the drop");
}
