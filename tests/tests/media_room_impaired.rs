//! The `media-room` benchmark scenario over an impaired link, short: a node in a lab's server
//! host, `switchboard-cli bench --scenario media-room` run in the same namespace with its
//! receivers' connections inside a client host shaped with the `mobile` profile
//! (`--receiver-netns`), over WebSocket and over WebTransport. Every chat message must arrive
//! exactly once and media must get through; the figures are printed, not asserted on (no
//! absolute times). Needs root: without a lab it prints `SKIPPED: <reason>`.
//!
//! `cargo build -p switchboard -p switchboard-client -p switchboard-tests --bins` first (the
//! test runs the built `switchboard`, `switchboard-cli` and `sb-netem`).

use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use switchboard_tests::netns::{Host, Lab, LabNode, Profile};
use switchboard_tests::{binary, token, within};

/// Receivers (all on the one shaped host).
const RECEIVERS: u32 = 3;
/// Seconds of sending per run.
const SECONDS: u32 = 4;

/// Run the scenario from the server host against `url`; its JSON report.
async fn media_room(server: &Host, client: &Host, url: &str, cert_hash: Option<&str>, pid: u32) -> Value {
    let mut cmd = server.command(binary("switchboard-cli"));
    cmd.args(["--token", &token("bench", &["*"])]);
    if let Some(h) = cert_hash {
        cmd.args(["--cert-hash", h, "--wt-lanes", "on"]);
    }
    cmd.args(["bench", "--node", url, "--scenario", "media-room", "--receiver-netns", client.namespace()])
        .args(["--clients", &RECEIVERS.to_string(), "--duration", &SECONDS.to_string()])
        .args(["--server-pid", &pid.to_string()])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = within(Duration::from_secs(120), "the media-room run", cmd.output()).await.expect("running the bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed ({}): {stderr}", out.status);
    let line = stdout.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no report: {stdout} {stderr}"));
    serde_json::from_str(line).expect("a JSON report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_room_over_a_mobile_link_loses_no_chat_and_delivers_media() {
    let mut lab = match Lab::start("mediaroom") {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            return;
        }
    };
    let (server, client) = (lab.host("server").unwrap(), lab.host("client").unwrap());
    lab.shape(&client, Profile::mobile()).unwrap();
    let node = LabNode::start(&server, false, &[]).await;
    let pid = node.pid().expect("the node's pid");
    let (ws, wt) = (node.ws_url(), node.wt_url());

    for (name, url, hash) in [("WS", ws.as_str(), None), ("WT", wt.as_str(), Some(node.cert_hash.as_str()))] {
        let r = media_room(&server, &client, url, hash, pid).await;
        eprintln!(
            "media-room over mobile, {name}: frames {}/{}, media p50 {} p99 {} ms, freezes {}, chat {}/{} p99 {} ms, \
             lost {}, duplicated {}, node CPU {} µs per delivery",
            r["deliveries"],
            r["expected_deliveries"],
            r["latency_ms"]["p50"],
            r["latency_ms"]["p99"],
            r["freezes"],
            r["chat_delivered"],
            r["chat_expected"],
            r["chat_latency_ms"]["p99"],
            r["chat_lost"],
            r["chat_duplicated"],
            r["node_cpu_us_per_delivery"],
        );
        let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{name}: no {k} in {r}"));
        // Every member chatted once a second, each message acknowledged; each must reach
        // every other member exactly once.
        assert_eq!(n("receivers"), u64::from(RECEIVERS), "{name}");
        assert!(n("chat_sent") >= u64::from(RECEIVERS + 2), "{name}: every member chatted: {r}");
        assert_eq!(n("chat_send_errors"), 0, "{name}: {r}");
        assert_eq!(n("chat_expected"), n("chat_sent") * u64::from(RECEIVERS + 1), "{name}: {r}");
        assert_eq!(n("chat_lost"), 0, "{name}: chat lost: {r}");
        assert_eq!(n("chat_duplicated"), 0, "{name}: chat duplicated: {r}");
        assert_eq!(n("chat_undelivered_at_stop"), 0, "{name}: chat still on its way: {r}");
        assert_eq!(n("chat_delivered"), n("chat_expected"), "{name}: {r}");
        // Media got through the link to the receivers: most frames (lanes may drop some on a
        // lossy link, by design).
        assert!(n("sent") > 0 && n("deliveries") > 0, "{name}: no media delivered: {r}");
        let ratio = r["media_delivered_ratio"].as_f64().expect("media_delivered_ratio");
        assert!(ratio >= 0.5, "{name}: only {:.0} % of the frames delivered: {r}", ratio * 100.0);
        // ...and through the shaped link indeed (receivers inside the client host): no faster
        // than its one-way delay less jitter allows.
        let p = Profile::mobile();
        let floor = 0.9 * (p.one_way() - p.one_way_jitter()).as_secs_f64() * 1000.0;
        let p50 = r["latency_ms"]["p50"].as_f64().expect("media p50");
        assert!(p50 >= floor, "{name}: media p50 {p50} ms is faster than the link allows ({floor} ms): {r}");
    }
}
