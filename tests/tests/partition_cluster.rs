//! Partitions on the multi-host cluster (`switchboard_tests::netns::cluster`: 3 JetStream
//! NATS servers, 4 nodes, each on its own host), under a small workload: 4 rooms of 5
//! members on every node, a reliable publisher per room retrying what is refused, two calls
//! across the fault, members leaving and joining during it.
//!
//! - (b) `nats_split_two_one` (`--ignored`, see its note): the NATS cluster split 2|1 with
//!   nodes on both sides (`nats1 nats2 node1 node2 | nats3 node3 node4`).
//! - (a) `node_cut_from_nats` (`--ignored`): node1 cut from every NATS server, its clients
//!   still reach it.
//! - (c) `client_host_with_loss` (`--ignored`): a client host with 30 % loss both ways.
//!
//! Each checks after the heal, with generous waits: every member sees exactly the
//! remaining members' current sessions and the presence bucket holds exactly them (no
//! ghost, nobody missing); each call's parties see the state its record holds; every
//! acknowledged reliable message reached every member exactly once, in order; the members'
//! presence views converged within 15 s of the heal (the bucket's time, which waits for
//! JetStream, and the calls' are printed, RELIABILITY.md) and did not change again while
//! the bucket was repaired.
//!
//! Run: `cargo build -p switchboard --bins && cargo test -p switchboard-tests --test
//! partition_cluster -- --ignored --test-threads 1 --nocapture` (add the test's name for
//! one); `SB_CLUSTER_KEEP_LOGS=<dir>` keeps the pieces' logs.
//! Needs root, nats-server, haproxy and nginx; elsewhere it prints `SKIPPED`.

#[path = "partition_cluster/workload.rs"]
mod workload;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_protocol::pb::CallMedia;
use switchboard_tests::netns::{self, Cluster, ClusterConfig, Profile};
use switchboard_tests::{wait_for, within};
use workload::{call_mismatch, delivery, presence_mismatch, publish_loop, stored_presence_mismatch, Member, Published};

const ROOMS: usize = 4;
const PER_ROOM: usize = 5;
/// A debug build of 4 nodes and 3 NATS servers on a loaded 2-core machine: waits are long.
const WAIT: Duration = Duration::from_secs(60);

enum Fault {
    /// (a) node `0` cut from every NATS server.
    NodeCut,
    /// (b) `nats1 nats2 node1 node2 | nats3 node3 node4`.
    NatsSplit,
    /// (c) 30 % loss on load host 2's link.
    ClientLoss,
}

impl Fault {
    fn name(&self) -> &'static str {
        match self {
            Fault::NodeCut => "a-node-cut",
            Fault::NatsSplit => "b-nats-split",
            Fault::ClientLoss => "c-client-loss",
        }
    }

    /// (the node cut off or on the minority side, a node of the majority)
    fn sides(&self) -> (usize, usize) {
        match self {
            Fault::NodeCut => (0, 1),
            Fault::NatsSplit => (2, 1),
            Fault::ClientLoss => (0, 1),
        }
    }

    fn apply(&self, cluster: &mut Cluster) -> anyhow::Result<()> {
        match self {
            Fault::NodeCut => {
                let node = cluster.node_host(0).clone();
                let nats: Vec<_> = (0..cluster.nats_count()).map(|i| cluster.nats_host(i).clone()).collect();
                cluster.partition(&[&node], &nats.iter().collect::<Vec<_>>())
            }
            Fault::NatsSplit => {
                let a = [
                    cluster.nats_host(0).clone(),
                    cluster.nats_host(1).clone(),
                    cluster.node_host(0).clone(),
                    cluster.node_host(1).clone(),
                ];
                let b = [cluster.nats_host(2).clone(), cluster.node_host(2).clone(), cluster.node_host(3).clone()];
                cluster.partition(&a.iter().collect::<Vec<_>>(), &b.iter().collect::<Vec<_>>())
            }
            Fault::ClientLoss => {
                let host = cluster.load_host(1).clone();
                let lossy = Profile { name: "loss30", loss: 0.30, ..Profile::clean() };
                cluster.shape(&host, lossy)
            }
        }
    }

    fn heal(&self, cluster: &mut Cluster) -> anyhow::Result<()> {
        match self {
            Fault::ClientLoss => {
                let host = cluster.load_host(1).clone();
                cluster.shape(&host, Profile::clean())
            }
            _ => cluster.heal(),
        }
    }
}

async fn start(name: &str) -> Option<Cluster> {
    let config = ClusterConfig {
        name: name.into(),
        node_args: [
            "--heartbeat",
            "2",
            "--node-timeout",
            "3",
            "--nats-ping-interval",
            "1",
            "--call-ring-timeout",
            "8",
            "--drain-timeout",
            "5",
        ]
        .map(String::from)
        .to_vec(),
        // Calls' transitions and the repair after a heal show in the log tails on failure.
        log_level: "warn,switchboard_relay::calls=info,switchboard_relay::heal=info,switchboard_relay::node=info,switchboard_relay::bus::nats=info,switchboard_relay::rooms::roster=info,switchboard_relay::rooms::presence=info,switchboard_relay::rooms::presence_audit=info,switchboard_relay::rooms::reaper=info".into(),
        ..Default::default()
    };
    Cluster::start_or_skip(config).await
}

/// Presence as members see it converges within this time after a heal (issue 14).
const CONVERGED: Duration = Duration::from_secs(15);

/// The wall-clock time (UTC, `HH:MM:SS.mmm`), to find a moment in the pieces' logs.
fn wall_clock() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}.{:03}", s / 3600, s / 60 % 60, s % 60, ms % 1000)
}

/// Poll `check` (a mismatch description or `None`) until `None`; the time it took.
async fn converge<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < WAIT {
        match check().await {
            None => return started.elapsed(),
            Some(m) => last = Some(m),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not converge within {WAIT:?}: {}", last.unwrap_or_default());
}

/// The JetStream streams' leaders and replicas as each NATS server sees them (`/jsz`), for
/// the log: `nats1: KV_sb_calls leader nats3 [nats1 current, nats2 lag 3]; ...`.
async fn stream_leaders(cluster: &Cluster, streams: &[&str]) -> String {
    let mut out = Vec::new();
    for i in 0..cluster.nats_count() {
        let Some(jsz) = cluster.nats_monitor(i, "/jsz?accounts=true&streams=true").await else {
            out.push(format!("nats{}: no answer", i + 1));
            continue;
        };
        let mut seen = Vec::new();
        let accounts = jsz["account_details"].as_array().cloned().unwrap_or_default();
        for stream in accounts.iter().flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default()) {
            let name = stream["name"].as_str().unwrap_or_default();
            if !streams.contains(&name) {
                continue;
            }
            let cluster = &stream["cluster"];
            let replicas: Vec<String> = cluster["replicas"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    format!(
                        "{}{}{}",
                        r["name"].as_str().unwrap_or("?"),
                        if r["current"].as_bool() == Some(true) { " current" } else { " not current" },
                        r["lag"].as_u64().filter(|l| *l > 0).map(|l| format!(" lag {l}")).unwrap_or_default()
                    )
                })
                .collect();
            seen.push(format!(
                "{name} leader {} [{}]",
                cluster["leader"].as_str().unwrap_or("none"),
                replicas.join(", ")
            ));
        }
        out.push(format!("nats{}: {}", i + 1, seen.join("; ")));
    }
    out.join(" | ")
}

/// Move `stream`'s leader to `server` (a leader stepdown with a preferred placement,
/// nats-server 2.11+), retried until the stream reports it there.
async fn move_leader(js: &async_nats::jetstream::Context, stream: &str, server: &str) {
    let request = serde_json::json!({ "placement": { "preferred": server } });
    wait_for(WAIT, &format!("{stream}'s leader on {server}"), || async {
        let leader = |info: async_nats::jetstream::stream::Info| info.cluster.and_then(|c| c.leader);
        let info = js.get_stream(stream).await.ok()?.info().await.ok().cloned();
        if info.and_then(leader).as_deref() == Some(server) {
            return Some(());
        }
        let _: Result<serde_json::Value, _> = js.request(format!("STREAM.LEADER.STEPDOWN.{stream}"), &request).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        None
    })
    .await;
}

async fn c2_record_ended(kv: &async_nats::jetstream::kv::Store, call: &str) -> bool {
    use switchboard_protocol::ProstMessage as _;
    let Ok(Some(v)) = kv.get(call).await else { return false };
    switchboard_protocol::pb::Call::decode(v).is_ok_and(|c| c.state() == switchboard_protocol::pb::CallState::Ended)
}

async fn run(fault: Fault) {
    let began = Instant::now();
    let Some(mut cluster) = start(&format!("pc-{}", &fault.name()[..1])).await else { return };
    eprintln!("[{:.1?}] cluster up", began.elapsed());
    let tag = cluster.lab().tag().to_owned();
    let loads = [cluster.load_host(0).runtime().unwrap(), cluster.load_host(1).runtime().unwrap()];
    let (iso, maj) = fault.sides();

    // The test's own view of the buckets, from a load host (it reaches every NATS server).
    let url = cluster.nats_url();
    let nats = loads[0].spawn(async move { async_nats::connect(url.split(',').collect::<Vec<_>>()).await });
    let nats = nats.await.unwrap().expect("the test's NATS client");
    let js = async_nats::jetstream::new(nats);
    let presence_kv = js.get_key_value("sb_presence").await.expect("presence bucket");
    let calls_kv = js.get_key_value("sb_calls").await.expect("calls bucket");

    // Members: member j of room r on node (r + j) % 4, on load host j % 2.
    let mut members = Vec::new();
    for r in 0..ROOMS {
        for j in 0..PER_ROOM {
            let room = format!("room{r}");
            let m = Member::start(&cluster, &loads[j % 2], &format!("u{r}-{j}"), Some(&room), (r + j) % 4).await;
            members.push(m.expect("member joins"));
        }
    }
    converge("presence before the fault", || async { presence_mismatch(&members) }).await;

    // Calls: parties on the isolated node (callers) and a majority node (callees), on load
    // host 2 (the lossy one in (c)).
    let c1_caller = Member::start(&cluster, &loads[1], "c1-caller", None, iso).await.expect("c1 caller");
    let c1_callee = Member::start(&cluster, &loads[1], "c1-callee", None, maj).await.expect("c1 callee");
    let c2_caller = Member::start(&cluster, &loads[1], "c2-caller", None, iso).await.expect("c2 caller");
    let c2_callee = Member::start(&cluster, &loads[1], "c2-callee", None, maj).await.expect("c2 callee");
    let c1 = c1_caller.client.call_invite(&["c1-callee"], CallMedia::Audio).await.expect("c1 invite");
    wait_for(WAIT, "c1 ringing at the callee", || async {
        c1_callee.seen.lock().unwrap().calls.contains_key(&c1).then_some(())
    })
    .await;
    c1_callee.client.call_answer(&c1, true).await.expect("c1 accepted");
    converge("c1 accepted", || async { call_mismatch(&calls_kv, &c1, &[&c1_caller, &c1_callee]).await }).await;

    // Publishers: member r % 2 of room r (both load hosts, nodes 0 and 2).
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut publishers = Vec::new();
    for r in 0..ROOMS {
        let m = &members[r * PER_ROOM + r % 2];
        let out = Arc::new(Mutex::new(Published::default()));
        let task = tokio::spawn(publish_loop(
            m.client.clone(),
            m.user.clone(),
            format!("room{r}"),
            Duration::from_millis(300),
            stop.clone(),
            out.clone(),
        ));
        publishers.push((r, m.user.clone(), out, task));
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // some traffic before the fault

    // c2 rings across the fault: nobody answers, its ring timeout (8 s) falls inside it.
    let c2 = c2_caller.client.call_invite(&["c2-callee"], CallMedia::Audio).await.expect("c2 invite");
    wait_for(WAIT, "c2 ringing at the callee", || async {
        c2_callee.seen.lock().unwrap().calls.contains_key(&c2).then_some(())
    })
    .await;

    const STREAMS: [&str; 2] = ["KV_sb_calls", "KV_sb_presence"];
    if matches!(fault, Fault::NatsSplit) {
        // The hard case for the majority side: the buckets' stream leaders on nats3, so
        // nats1 and nats2 must elect new ones for anything to be written during the split.
        for stream in STREAMS {
            move_leader(&js, stream, "nats3").await;
        }
    }
    eprintln!("[{:.1?}] streams before the fault: {}", began.elapsed(), stream_leaders(&cluster, &STREAMS).await);
    eprintln!("[{:.1?}] workload running: fault {} at {}", began.elapsed(), fault.name(), wall_clock());
    let faulted = Instant::now();
    fault.apply(&mut cluster).expect("the fault");
    if !matches!(fault, Fault::ClientLoss) {
        // The sides notice each other's silence: somebody sees somebody leave.
        wait_for(WAIT, "the fault to show in presence", || async { presence_mismatch(&members).map(|_| ()) }).await;
    }
    let noticed = faulted.elapsed();
    // Churn during the fault: a member on each side leaves, one joins on the majority.
    let leave_iso = members.iter().position(|m| m.room.as_deref() == Some("room1") && !m.left).unwrap();
    let leave_maj = members.iter().position(|m| m.room.as_deref() == Some("room3") && !m.left).unwrap();
    for i in [leave_iso, leave_maj] {
        members[i].client.close().await;
        members[i].left = true;
    }
    let late = Member::start(&cluster, &loads[0], "late-0", Some("room0"), maj).await.expect("a join during the fault");
    members.push(late);
    // c1 ended by the callee (majority side) during the fault.
    let ended = Instant::now();
    let mut end_attempts = 0;
    loop {
        end_attempts += 1;
        match c1_callee.client.call_end(&c1).await {
            Ok(()) => break,
            Err(e) if ended.elapsed() < WAIT => {
                eprintln!("ending c1 during the fault: {e}");
                if end_attempts % 10 == 1 {
                    eprintln!("  streams: {}", stream_leaders(&cluster, &STREAMS).await);
                }
            }
            Err(e) => panic!("ending c1: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let c1_end_took = ended.elapsed();
    eprintln!("[{:.1?}] c1 ended during the fault after {c1_end_took:.1?} ({end_attempts} attempts)", began.elapsed());
    // c2's ring timeout ends it where the record can be written (the majority side), so
    // its caller misses the event; if JetStream is still electing leaders there, it ends
    // after the heal instead (checked below either way).
    let c2_ended = Instant::now();
    let mut c2_ended_in_fault = false;
    while c2_ended.elapsed() < Duration::from_secs(10) {
        if c2_record_ended(&calls_kv, &c2).await {
            c2_ended_in_fault = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("[{:.1?}] c2 ended by its ring timeout during the fault: {c2_ended_in_fault}", began.elapsed());
    // Hold the fault past the node timeout twice over; the lossy link for 30 s (long
    // enough for heartbeat timeouts, 3 s of silence, to happen if they would).
    let hold = Duration::from_secs(if matches!(fault, Fault::ClientLoss) { 30 } else { 8 });
    if faulted.elapsed() < hold {
        tokio::time::sleep(hold - faulted.elapsed()).await;
    }
    let fault_len = faulted.elapsed();

    eprintln!("[{:.1?}] healing at {}", began.elapsed(), wall_clock());
    fault.heal(&mut cluster).expect("heal");
    let healed = Instant::now();
    // Presence (what members see first, the target; then the bucket, which waits for
    // JetStream; then the members' views once more: a repair of the bucket must not make
    // them flap) and calls side by side, each timed from the heal.
    let presence = async {
        converge("presence as members see it after the heal", || async { presence_mismatch(&members) }).await;
        let views_after = healed.elapsed();
        eprintln!("[{:.1?}] members' presence views converged at {}", began.elapsed(), wall_clock());
        converge("the presence bucket after the heal", || async {
            stored_presence_mismatch(&presence_kv, &members).await
        })
        .await;
        let bucket_after = healed.elapsed();
        eprintln!("[{:.1?}] presence bucket converged at {}", began.elapsed(), wall_clock());
        (views_after, bucket_after, presence_mismatch(&members))
    };
    let calls = async {
        converge("calls after the heal", || async {
            if !c2_record_ended(&calls_kv, &c2).await {
                return Some("c2 still ringing after its ring timeout".into());
            }
            match call_mismatch(&calls_kv, &c1, &[&c1_caller, &c1_callee]).await {
                Some(m) => Some(m),
                None => call_mismatch(&calls_kv, &c2, &[&c2_caller, &c2_callee]).await,
            }
        })
        .await;
        eprintln!("[{:.1?}] calls converged at {}", began.elapsed(), wall_clock());
        healed.elapsed()
    };
    let ((views_after, bucket_after, flapped), calls_after) = tokio::join!(presence, calls);
    let healed_for = healed.elapsed();

    // Stop publishing; every acknowledged message reaches every member once, in order.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_tx.send(true).unwrap();
    for (_, _, _, task) in &mut publishers {
        within(WAIT, "a publisher to stop", task).await.unwrap();
    }
    let check = |final_check: bool| {
        let mut totals = (0, 0, 0, 0, 0);
        for (r, user, out, _) in &publishers {
            let acked = out.lock().unwrap().acked.clone();
            for m in
                members.iter().filter(|m| !m.left && m.room.as_deref() == Some(&format!("room{r}")) && m.user != *user)
            {
                let d = delivery(m, user, &acked);
                if final_check && (d.missing + d.duplicated + d.out_of_order) > 0 {
                    eprintln!(
                        "{} from {user}: {} expected, {} missing, {} duplicated, {} out of order",
                        m.user, d.expected, d.missing, d.duplicated, d.out_of_order
                    );
                }
                totals.0 += d.expected;
                totals.1 += d.missing;
                totals.2 += d.duplicated;
                totals.3 += d.out_of_order;
                totals.4 += d.unacked_delivered;
            }
        }
        totals
    };
    let delivered_after = converge("delivery of every acknowledged message", || async {
        let t = check(false);
        (t.1 > 0).then(|| format!("{} of {} deliveries missing", t.1, t.0))
    })
    .await;
    let (expected, missing, duplicated, out_of_order, unacked) = check(true);
    let acked: usize = publishers.iter().map(|p| p.2.lock().unwrap().acked.len()).sum();
    let refused: usize = publishers.iter().map(|p| p.2.lock().unwrap().refused).sum();
    let party_disconnects: usize =
        [&c1_caller, &c1_callee, &c2_caller, &c2_callee].iter().map(|m| m.seen.lock().unwrap().disconnects).sum();
    let disconnects: usize = members.iter().filter(|m| !m.left).map(|m| m.seen.lock().unwrap().disconnects).sum();
    eprintln!(
        "PARTITION {}: fault held {fault_len:.1?} (noticed in presence after {noticed:.1?}); after the heal: members' \
         presence views converged in {views_after:.1?}, the presence bucket in {bucket_after:.1?}, calls in \
         {calls_after:.1?} (all by {healed_for:.1?}), deliveries complete {delivered_after:.1?} later; {acked} \
         messages acknowledged ({refused} attempts refused and retried), \
         {expected} deliveries due: {missing} lost, {duplicated} duplicated, {out_of_order} out of order, {unacked} \
         unacknowledged attempts delivered; room members' disconnects {disconnects}; ending c1 from the majority \
         side took {c1_end_took:.1?} ({end_attempts} attempts); c2 ended during the fault: {c2_ended_in_fault}; \
         call parties' disconnects {party_disconnects}; run {:.1?}",
        fault.name(),
        began.elapsed()
    );
    assert_eq!((missing, duplicated, out_of_order), (0, 0, 0), "acknowledged messages lost, duplicated or reordered");
    assert_eq!(flapped, None, "members' presence views changed again while the bucket was repaired");
    assert!(
        views_after <= CONVERGED,
        "members' presence views took {views_after:.1?} after the heal (target {CONVERGED:?})"
    );
    // Calls must converge (within WAIT, `converge` above) but are not held to CONVERGED:
    // with the other core busy they once took 22.6 s after the heal, waiting for JetStream
    // to elect the calls bucket's leader again (RELIABILITY.md, case b).
    if calls_after > CONVERGED {
        eprintln!("calls took {calls_after:.1?} after the heal: over the {CONVERGED:?} target");
    }
    assert!(expected > 0, "nothing was checked");

    for m in members.iter().filter(|m| !m.left) {
        m.client.close().await;
    }
    for p in [&c1_caller, &c1_callee, &c2_caller, &c2_callee] {
        p.client.close().await;
    }
    drop(loads);
    drop(cluster);
    assert_eq!(netns::namespaces_with_prefix(&tag), Vec::<String>::new(), "namespaces left after the drop");
}

// In the test command since the presence audit (a node rewrites its records the bucket
// lost) and with the buckets' leaders moved to nats3 before every split (the majority must
// elect new ones each run); figures in RELIABILITY.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_split_two_one() {
    run(Fault::NatsSplit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "case (a), run by hand: cargo test -p switchboard-tests --test partition_cluster -- --ignored --test-threads 1"]
async fn node_cut_from_nats() {
    run(Fault::NodeCut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "case (c), run by hand: cargo test -p switchboard-tests --test partition_cluster -- --ignored --test-threads 1"]
async fn client_host_with_loss() {
    run(Fault::ClientLoss).await;
}
