//! The chart's monitoring against real nodes: every alert expression (rendered from
//! `helm/switchboard/files/prometheus-rules.yaml` with the defaults of values.yaml) and every
//! dashboard query (`files/grafana-dashboard.json`) is parsed as PromQL, and each metric,
//! label and label value it selects must be one a running node exports. And the gauges the
//! alerts rest on follow the node: readiness, NATS, drain, caps and certificate expiry.

use bytes::Bytes;
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{self, Expr, LabelModifier};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchboard_client::{Client, ClientConfig, Event};
use switchboard_protocol::pb::server_frame;
use switchboard_protocol::ErrorCode;
use switchboard_tests::raw::{RawWs, Received};
use switchboard_tests::{token, wait_for, within, NatsServer, NodeOptions, TestNode, WAIT};

/// Labels Prometheus adds to every scraped series (the chart's ServiceMonitor: `namespace`,
/// `pod`, `job`, `instance`, ...): selectors may use them although the node does not export them.
const TARGET_LABELS: [&str; 6] = ["namespace", "pod", "job", "instance", "service", "container"];

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/switchboard")
}

// ----------------------------------------------------------------------------- rendering

/// A value of values.yaml as Helm prints it into a template.
fn helm_print(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        other => panic!("a template prints only scalars, not {other:?}"),
    }
}

/// `files/prometheus-rules.yaml` rendered as Helm renders it with the chart's default values
/// in `namespace`. Only the three kinds of actions that file may use are understood; any
/// other fails the test (it would need this renderer extended, and checking).
fn render_rules(namespace: &str) -> String {
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("values.yaml")).expect("values.yaml"))
            .expect("values.yaml parses");
    let template = std::fs::read_to_string(chart().join("files/prometheus-rules.yaml")).expect("rules file");
    let mut out = String::new();
    let mut rest = template.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let action = rest[start + 2..].trim_start();
        let (printed, after) = if let Some(raw) = action.strip_prefix('`') {
            let end = raw.find('`').expect("a closed raw string");
            let after = raw[end + 1..].trim_start().strip_prefix("}}").expect("}} after a raw string");
            (raw[..end].to_owned(), after)
        } else {
            let end = action.find("}}").expect("a closed action");
            let expr = action[..end].trim();
            let printed = if expr == ".Release.Namespace" {
                namespace.to_owned()
            } else if let Some(path) = expr.strip_prefix(".Values.") {
                let mut v = &values;
                for key in path.split('.') {
                    v = v.get(key).unwrap_or_else(|| panic!("values.yaml has no {path}"));
                }
                helm_print(v)
            } else {
                panic!("unsupported template action in the rules file: {{{{ {expr} }}}}");
            };
            (printed, &action[end + 2..])
        };
        out.push_str(&printed);
        rest = after;
    }
    out.push_str(rest);
    out
}

/// (alert name, expression) of every rule.
fn alert_rules() -> Vec<(String, String)> {
    let doc: serde_yaml::Value = serde_yaml::from_str(&render_rules("test")).expect("rendered rules are YAML");
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name").to_owned();
            out.push((name, rule["expr"].as_str().expect("expr").to_owned()));
        }
    }
    out
}

/// (panel title, expression) of every dashboard query, Grafana's variables in place: the
/// range `$__rate_interval` becomes 5m; `$namespace` and `$pod` stay inside their strings.
fn dashboard_queries() -> Vec<(String, String)> {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("files/grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target's expr");
            out.push((panel["title"].as_str().unwrap_or("?").to_owned(), expr.replace("$__rate_interval", "5m")));
        }
    }
    for var in dash["templating"]["list"].as_array().expect("variables") {
        if let Some(query) = var["query"]["query"].as_str() {
            // label_values(<selector>, <label>): the selector must be exported.
            let inner = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).expect("label_values()");
            let (selector, label) = inner.rsplit_once(',').expect("label_values(selector, label)");
            assert!(TARGET_LABELS.contains(&label.trim()), "variable {query}: a target label");
            out.push((format!("variable {}", var["name"]), selector.trim().to_owned()));
        }
    }
    out
}

// ----------------------------------------------------------------------------- PromQL

/// What an expression selects: every vector selector and every grouping label.
#[derive(Default, Debug)]
struct Uses {
    selectors: Vec<(String, Vec<Matcher>)>,
    grouping: BTreeSet<String>,
}

fn walk(e: &Expr, uses: &mut Uses) {
    let modifier = |m: &Option<LabelModifier>, uses: &mut Uses| {
        if let Some(m) = m {
            uses.grouping.extend(m.labels().labels.iter().cloned());
        }
    };
    match e {
        Expr::Aggregate(a) => {
            modifier(&a.modifier, uses);
            walk(&a.expr, uses);
            if let Some(p) = &a.param {
                walk(p, uses);
            }
        }
        Expr::Unary(u) => walk(&u.expr, uses),
        Expr::Binary(b) => {
            if let Some(m) = &b.modifier {
                modifier(&m.matching, uses);
            }
            walk(&b.lhs, uses);
            walk(&b.rhs, uses);
        }
        Expr::Paren(p) => walk(&p.expr, uses),
        Expr::Subquery(s) => walk(&s.expr, uses),
        Expr::VectorSelector(vs) => selector(vs, uses),
        Expr::MatrixSelector(ms) => selector(&ms.vs, uses),
        Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, uses)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn selector(vs: &promql_parser::parser::VectorSelector, uses: &mut Uses) {
    let name = vs.name.clone().expect("every selector names its metric");
    let matchers: Vec<Matcher> = vs.matchers.matchers.iter().filter(|m| m.name != "__name__").cloned().collect();
    assert!(vs.matchers.or_matchers.is_empty(), "{name}: no `or` matchers");
    uses.selectors.push((name, matchers));
}

// ----------------------------------------------------------------------------- exposition

/// Sample name -> label -> values seen, over every scrape given.
type Exported = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn parse_exposition(text: &str, into: &mut Exported) {
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, _value) = line.rsplit_once(' ').expect("a sample line");
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').expect("closed labels")),
            None => (series, ""),
        };
        let entry = into.entry(name.to_owned()).or_default();
        // Label values here never hold commas or quotes, so a plain split is exact.
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (label, value) = pair.split_once('=').expect("label=value");
            entry.entry(label.to_owned()).or_default().insert(value.trim_matches('"').to_owned());
        }
    }
}

/// Check `expr` (from `what`) against what the nodes exported; `scope` are the labels every
/// selector must match on (the release's namespace; the dashboard's pod too).
fn check_expr(what: &str, expr: &str, exported: &Exported, scope: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    let parsed = match parser::parse(expr) {
        Ok(e) => e,
        Err(e) => return vec![format!("{what}: does not parse as PromQL ({e}): {expr}")],
    };
    let mut uses = Uses::default();
    walk(&parsed, &mut uses);
    if uses.selectors.is_empty() {
        problems.push(format!("{what}: selects no metric: {expr}"));
    }
    let mut labels_in_reach: BTreeSet<String> = TARGET_LABELS.iter().map(|s| s.to_string()).collect();
    for (name, matchers) in &uses.selectors {
        let Some(labels) = exported.get(name) else {
            problems.push(format!("{what}: {name} is not exported by the node"));
            continue;
        };
        labels_in_reach.extend(labels.keys().cloned());
        for label in scope {
            if !matchers.iter().any(|m| m.name == *label) {
                problems.push(format!("{what}: {name} is not scoped by {label}"));
            }
        }
        for m in matchers {
            if TARGET_LABELS.contains(&m.name.as_str()) {
                continue;
            }
            let Some(values) = labels.get(&m.name) else {
                problems.push(format!("{what}: {name} has no label {} (it has {:?})", m.name, labels.keys()));
                continue;
            };
            // What a positive matcher asks for must be something the node says.
            let wanted: Vec<&str> = match &m.op {
                MatchOp::Equal => vec![m.value.as_str()],
                MatchOp::Re(_) => m.value.split('|').collect(),
                _ => vec![],
            };
            for w in wanted {
                if !values.contains(w) {
                    problems
                        .push(format!("{what}: {name}{{{}}} never takes the value {w:?} (seen: {values:?})", m.name));
                }
            }
        }
    }
    for label in &uses.grouping {
        if !labels_in_reach.contains(label) {
            problems.push(format!("{what}: groups by {label}, which none of its metrics has"));
        }
    }
    problems
}

// ----------------------------------------------------------------------------- helpers

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
}

/// A self-signed certificate for `127.0.0.1`/`localhost` valid until `not_after`, written to
/// `dir` as `cert.pem` and `key.pem` (each complete before it is renamed into place).
fn write_certificate(dir: &Path, not_after: (i32, u8, u8)) -> i64 {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key pair");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    for (name, pem) in [("key.pem", key.serialize_pem()), ("cert.pem", cert.pem())] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, pem).expect("writing a PEM file");
        std::fs::rename(&tmp, dir.join(name)).expect("renaming a PEM file into place");
    }
    params.not_after.unix_timestamp()
}

async fn scrape(node: &TestNode) -> String {
    let (status, body) = node.get("/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn next_event(events: &mut switchboard_client::Events) -> Event {
    within(WAIT, "a client event", events.recv()).await.expect("event stream ended")
}

// ----------------------------------------------------------------------------- tests

/// Every alert and dashboard query selects metrics, labels and values that real nodes
/// export: a combined node (generated certificate) and a WebTransport-only node (configured
/// certificate) on NATS, after a room has carried a message and a connection was refused.
#[tokio::test]
async fn alerts_and_dashboard_select_what_nodes_export() {
    let nats = NatsServer::start().await;
    let dir = std::env::temp_dir().join(format!("switchboard-monitoring-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    write_certificate(&dir, (2031, 1, 1));
    let combined = TestNode::start(NodeOptions {
        nats_url: Some(nats.url()),
        args: vec!["--max-pending-per-ip".into(), "2".into()],
        ..Default::default()
    })
    .await;
    let wt_only = TestNode::start_webtransport_only(NodeOptions {
        nats_url: Some(nats.url()),
        args: vec![
            "--tls-cert".into(),
            dir.join("cert.pem").display().to_string(),
            "--tls-key".into(),
            dir.join("key.pem").display().to_string(),
        ],
        ..Default::default()
    })
    .await;

    // A room carries a message: deliveries, joins, delivery latency.
    let (alice, _alice_events) =
        Client::connect(ClientConfig::new(combined.ws_url(), token("alice", &["demo"]))).await.expect("alice");
    let (bob, mut bob_events) =
        Client::connect(ClientConfig::new(combined.ws_url(), token("bob", &["demo"]))).await.expect("bob");
    alice.join("demo").await.expect("alice joins");
    bob.join("demo").await.expect("bob joins");
    alice.publish("demo", Bytes::from_static(b"hello"), true, "chat").await.expect("publish");
    loop {
        if let Event::Message(m) = next_event(&mut bob_events).await {
            assert_eq!(&m.payload[..], b"hello");
            break;
        }
    }
    // Two connections that never authenticate fill the address's budget: the third is refused.
    let idle = [RawWs::connect(&combined.ws_url()).await, RawWs::connect(&combined.ws_url()).await];
    let mut third = RawWs::connect(&combined.ws_url()).await;
    match third.next().await {
        Received::Frame(server_frame::Kind::Error(e)) => assert_eq!(e.code(), ErrorCode::TooManyConnections),
        other => panic!("expected TOO_MANY_CONNECTIONS, got {other:?}"),
    }
    drop(idle);

    let mut exported = Exported::new();
    parse_exposition(&scrape(&combined).await, &mut exported);
    parse_exposition(&scrape(&wt_only).await, &mut exported);
    assert!(exported.contains_key("switchboard_admission_refusals_total"), "the refusal was counted");

    let mut problems = Vec::new();
    let rules = alert_rules();
    assert!(rules.len() >= 8, "the alerts of the issue: {rules:?}");
    for (alert, expr) in &rules {
        problems.extend(check_expr(&format!("alert {alert}"), expr, &exported, &["namespace"]));
    }
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "the dashboard's queries: {queries:?}");
    for (panel, expr) in &queries {
        let scope: &[&str] = if panel.starts_with("variable") { &[] } else { &["namespace", "pod"] };
        problems.extend(check_expr(&format!("panel {panel:?}"), expr, &exported, scope));
    }
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));

    // The checker itself refuses what it must (else the above proves nothing).
    let bogus = check_expr(
        "self-test",
        r#"rate(switchboard_no_such_metric_total{namespace="x"}[5m]) > 1"#,
        &exported,
        &["namespace"],
    );
    assert!(bogus.iter().any(|p| p.contains("not exported")), "{bogus:?}");
    let bad_label = check_expr(
        "self-test",
        r#"switchboard_ready{namespace="x", transport="websocket"}"#,
        &exported,
        &["namespace"],
    );
    assert!(bad_label.iter().any(|p| p.contains("no label transport")), "{bad_label:?}");
    let bad_value =
        check_expr("self-test", r#"switchboard_bus_connected{namespace="x", bus="kafka"}"#, &exported, &["namespace"]);
    assert!(bad_value.iter().any(|p| p.contains("never takes the value")), "{bad_value:?}");
    let unscoped = check_expr("self-test", "switchboard_ready == 0", &exported, &["namespace"]);
    assert!(unscoped.iter().any(|p| p.contains("not scoped")), "{unscoped:?}");
    assert!(!check_expr("self-test", "switchboard_ready{namespace=\"x\"} ==", &exported, &[]).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ready`, `draining` and `bus_connected` say what `/readyz` says, through a NATS outage
/// and a drain; the caps are the configured ones; the generated certificate's expiry is 13
/// days from its start.
#[tokio::test]
async fn state_gauges_follow_the_node() {
    let mut nats = NatsServer::start().await;
    let mut node = TestNode::start(NodeOptions {
        nats_url: Some(nats.url()),
        args: [
            "--max-pending-connections",
            "123",
            "--http-workers",
            "2",
            "--wt-max-sessions",
            "777",
            "--drain-timeout",
            "60",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
    .await;
    let value = |body: &str, series: &str| -> Option<f64> {
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.parse().ok()))
    };
    let body = scrape(&node).await;
    assert_eq!(value(&body, "switchboard_ready"), Some(1.0), "{body}");
    assert_eq!(value(&body, "switchboard_draining"), Some(0.0));
    assert_eq!(value(&body, "switchboard_bus_connected{bus=\"nats\"}"), Some(1.0));
    assert_eq!(value(&body, "switchboard_pending_connections_limit"), Some(123.0));
    assert_eq!(value(&body, "switchboard_connection_limit{transport=\"websocket\"}"), Some(50_000.0));
    assert_eq!(value(&body, "switchboard_connection_limit{transport=\"webtransport\"}"), Some(777.0));
    let expiry = value(
        &body,
        "switchboard_tls_certificate_expiry_timestamp_seconds{listener=\"webtransport\",source=\"generated\"}",
    )
    .expect("the generated certificate's expiry") as i64;
    let now = now_secs();
    let days = |d: i64| d * 86_400;
    assert!(
        expiry > now + days(13) - 7200 && expiry <= now + days(13),
        "13 days from a start an hour back: {expiry} vs now {now}"
    );

    // NATS goes away: the node turns unready, and the gauges say so.
    nats.kill();
    let http_port = node.http_port;
    wait_for(Duration::from_secs(60), "the node to see NATS gone", || async move {
        let (_, body) = switchboard_tests::http::get(http_port, "/metrics").await.ok()?;
        (value(&body, "switchboard_bus_connected{bus=\"nats\"}") == Some(0.0)).then_some(())
    })
    .await;
    let body = scrape(&node).await;
    assert_eq!(value(&body, "switchboard_ready"), Some(0.0), "unready without NATS");
    assert_eq!(node.get("/readyz").await.0, 503);
    nats.restart().await;
    wait_for(Duration::from_secs(60), "the node to be ready again", || async move {
        let (_, body) = switchboard_tests::http::get(http_port, "/metrics").await.ok()?;
        (value(&body, "switchboard_ready") == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(value(&scrape(&node).await, "switchboard_bus_connected{bus=\"nats\"}"), Some(1.0));
    assert_eq!(node.get("/readyz").await.0, 200);

    // SIGTERM with a client that stays: the node drains (and keeps serving /metrics) until
    // the client leaves.
    let (client, _events) =
        Client::connect(ClientConfig::new(node.ws_url(), token("stayer", &[]))).await.expect("client");
    node.terminate();
    wait_for(Duration::from_secs(30), "the node to drain", || async move {
        let (_, body) = switchboard_tests::http::get(http_port, "/metrics").await.ok()?;
        (value(&body, "switchboard_draining") == Some(1.0)).then_some(body)
    })
    .await;
    let body = scrape(&node).await;
    assert_eq!(value(&body, "switchboard_ready"), Some(0.0), "unready while draining");
    assert_eq!(value(&body, "switchboard_bus_connected{bus=\"nats\"}"), Some(1.0), "NATS is still there");
    drop(client);
    assert_eq!(node.wait_exit(Duration::from_secs(30)).await, Some(0));
}

/// A configured WebTransport certificate's expiry is shown, and follows the files when they
/// are replaced.
#[tokio::test]
async fn certificate_expiry_follows_the_configured_files() {
    let dir = std::env::temp_dir().join(format!("switchboard-monitoring-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let first = write_certificate(&dir, (2031, 1, 1));
    let node = TestNode::start_webtransport_only(NodeOptions {
        args: vec![
            "--tls-cert".into(),
            dir.join("cert.pem").display().to_string(),
            "--tls-key".into(),
            dir.join("key.pem").display().to_string(),
        ],
        ..Default::default()
    })
    .await;
    const SERIES: &str =
        "switchboard_tls_certificate_expiry_timestamp_seconds{listener=\"webtransport\",source=\"file\"}";
    assert_eq!(node.metric(SERIES).await as i64, first);
    let second = write_certificate(&dir, (2032, 6, 1));
    assert_ne!(first, second);
    let node = &node;
    wait_for(Duration::from_secs(30), "the new certificate's expiry", || async move {
        (node.metric(SERIES).await as i64 == second).then_some(())
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
