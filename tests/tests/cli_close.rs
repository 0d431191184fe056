//! `switchboard-cli` ends its connections properly, on normal exit and on a signal: the
//! node sees a close (a WebSocket close frame, a WebTransport session close), not a
//! connection that vanished and has to time out.

use std::process::Stdio;
use std::time::Duration;
use switchboard_tests::{binary, token, wait_for, within, NodeOptions, TestNode, WAIT};
use tokio::io::{AsyncBufReadExt, BufReader};

const WT_CONNECTIONS: &str = "switchboard_connections{transport=\"webtransport\"}";
const WS_CONNECTIONS: &str = "switchboard_connections{transport=\"websocket\"}";
const BAD_FRAMES: &str = "switchboard_errors_total{code=\"ERROR_CODE_BAD_FRAME\"}";

/// The node's QUIC idle timeout (`WtConfig::idle_timeout`, not a flag): a WebTransport
/// client that disappears without closing stays counted this long. The heartbeat is set far
/// above it, so that only a close can end a session before it.
const QUIC_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// `switchboard-cli join` over WebTransport, until it printed `joined`.
async fn wt_join(node: &TestNode, hash: &str, user: &str) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(binary("switchboard-cli"))
        .args(["--url", &node.wt_url(), "--cert-hash", hash, "--token", &token(user, &["lobby"])])
        .args(["join", "--room", "lobby"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("starting switchboard-cli");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    within(WAIT, "the CLI to join", async {
        while let Some(line) = lines.next_line().await.expect("reading the CLI") {
            if line.contains("\"joined\"") {
                return;
            }
        }
        panic!("the CLI ended before joining");
    })
    .await;
    // Keep reading its output, so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().expect("a running CLI").to_string();
    let status = std::process::Command::new("kill").args([sig, &pid]).status().expect("running kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// Ctrl-C'd (and SIGTERM'd) WebTransport `join`s close their sessions: the node counts
/// them gone long before the QUIC idle timeout would have ended them. Before the fix, the
/// CLI exited without letting quinn send the CONNECTION_CLOSE (or, on SIGTERM, died at
/// once), and the sessions stayed until the idle timeout.
#[tokio::test]
async fn signalled_webtransport_joins_close_their_sessions() {
    let node =
        TestNode::start(NodeOptions { args: vec!["--heartbeat".into(), "120".into()], ..Default::default() }).await;
    let hash = node.cert_hash().await;
    let signals = ["-INT", "-INT", "-INT", "-TERM", "-TERM"];
    let mut clients = Vec::new();
    for (i, _) in signals.iter().enumerate() {
        clients.push(wt_join(&node, &hash, &format!("user{i}")).await);
    }
    assert_eq!(node.metric(WT_CONNECTIONS).await, signals.len() as f64);
    for (client, sig) in clients.iter().zip(signals) {
        signal(client, sig);
    }
    for mut client in clients {
        let status = within(WAIT, "the CLI to exit after a signal", client.wait()).await.expect("wait");
        assert!(status.success(), "the CLI exits normally on a signal: {status}");
    }
    // A third of the idle timeout: only a session close ends them this early.
    wait_for(QUIC_IDLE_TIMEOUT / 3, "the node to see every WebTransport session closed", || async {
        (node.metric(WT_CONNECTIONS).await == 0.0).then_some(())
    })
    .await;
}

/// `switchboard-cli send` over WebSocket ends with a close frame: the node counts no
/// `BAD_FRAME` for it (it did for the TCP connection ending without one). With the node's
/// own fix (abrupt ends counted apart from `BAD_FRAME`) this holds either way; the close
/// frame is what this test is about.
#[tokio::test]
async fn websocket_send_closes_with_a_close_frame() {
    let node = TestNode::start(NodeOptions::default()).await;
    for i in 0..5 {
        let status = tokio::process::Command::new(binary("switchboard-cli"))
            .args(["--url", &node.ws_url(), "--token", &token(&format!("sender{i}"), &["lobby"])])
            .args(["send", "--room", "lobby", "--message", "hello"])
            .stdout(Stdio::null())
            .status()
            .await
            .expect("running switchboard-cli");
        assert!(status.success());
    }
    wait_for(WAIT, "the node to see the WebSocket connections end", || async {
        (node.metric(WS_CONNECTIONS).await == 0.0).then_some(())
    })
    .await;
    assert_eq!(node.metric(BAD_FRAMES).await, 0.0, "a CLI connection ended without a close frame");
}
