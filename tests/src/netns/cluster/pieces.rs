//! How each piece of a [`Cluster`](super::Cluster) is started: its command line and
//! configuration file. Fixed ports on every host (each host is its own network stack).

use super::super::{Host, HostProcess};
use super::ClusterConfig;
use crate::binary;
use anyhow::Context;
use std::ffi::OsString;
use std::path::Path;

/// NATS client port on a NATS host.
pub const NATS_PORT: u16 = 4222;
/// NATS monitoring port (`/healthz`, `/varz`, `/routez`, `/jsz`, `/subsz`) on a NATS host.
pub const NATS_MONITOR_PORT: u16 = 8222;
/// NATS cluster (route) port on a NATS host.
pub const NATS_ROUTE_PORT: u16 = 6222;
/// HTTP and WebSocket port of a node, and HAProxy's frontend port.
pub const HTTP_PORT: u16 = super::super::node::HTTP_PORT;
/// WebTransport (UDP) port of a node, and the nginx UDP balancer's port.
pub const WT_PORT: u16 = super::super::node::WT_PORT;

/// NATS cluster route pings: every second, a route closed after 3 unanswered (the
/// nats-server default is every 2 minutes). Keep in step with the README's NATS values
/// ("NATS cluster settings") and `deploy/local-cluster`.
pub const ROUTE_PINGS: &str = "ping_interval: \"1s\"\n  ping_max: 3";

/// The nginx stream module as Debian ships it (`libnginx-mod-stream`).
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

fn os(args: &[String]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// NATS server `index` (0-based) of `hosts`, clustered with the others when there are
/// several; its configuration and JetStream store under `dir`.
pub fn nats(hosts: &[Host], index: usize, config: &ClusterConfig, dir: &Path) -> anyhow::Result<HostProcess> {
    let host = &hosts[index];
    let name = format!("nats{}", index + 1);
    let store = dir.join(&name);
    std::fs::create_dir_all(&store).context("a JetStream store directory")?;
    let mut conf = format!(
        "server_name: {name}\nlisten: \"0.0.0.0:{NATS_PORT}\"\nhttp: \"0.0.0.0:{NATS_MONITOR_PORT}\"\n\
         jetstream {{ store_dir: \"{}\" }}\n",
        store.display()
    );
    if let Some(duration) = config.nats_lame_duck {
        // Lame duck mode (SIGUSR2): clients are moved off over this time (nats-server's
        // minimum is 30 s).
        conf.push_str(&format!("lame_duck_duration: \"{}s\"\nlame_duck_grace_period: \"1s\"\n", duration.as_secs()));
    }
    if hosts.len() > 1 {
        let routes: Vec<String> =
            hosts.iter().map(|h| format!("\"nats-route://{}:{NATS_ROUTE_PORT}\"", h.addr())).collect();
        // Route pings as the README's NATS values set them (`ROUTE_PINGS`): a route that went
        // silent (a split that drops packets and closes nothing) is closed within seconds and
        // dialled again, instead of stalling in TCP's retransmission backoff and resuming
        // seconds to minutes after the network heals.
        conf.push_str(&format!(
            "cluster {{\n  name: switchboard\n  listen: \"0.0.0.0:{NATS_ROUTE_PORT}\"\n  routes: [{}]\n  {ROUTE_PINGS}\n}}\n",
            routes.join(", ")
        ));
    }
    let conf_path = dir.join(format!("{name}.conf"));
    std::fs::write(&conf_path, conf).context("writing a NATS configuration")?;
    let args = vec![OsString::from("-c"), conf_path.into_os_string()];
    Ok(HostProcess::new(host, crate::nats::nats_binary(), args, dir.join(format!("{name}.log"))))
}

/// The id of node `index` (0-based): `node1`, `node2`, ... (kept across restarts).
pub fn node_id(index: usize) -> String {
    format!("node{}", index + 1)
}

/// Switchboard node `index` on `host`, connected to every NATS server, with the cluster's
/// shared WebTransport certificate (in `dir`).
pub fn node(host: &Host, index: usize, nats_url: &str, config: &ClusterConfig, dir: &Path) -> HostProcess {
    let replicas = if config.nats >= 3 { 3 } else { 1 };
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--node-id".into(),
        node_id(index),
        "--http-addr".into(),
        format!("0.0.0.0:{HTTP_PORT}"),
        "--wt-addr".into(),
        format!("0.0.0.0:{WT_PORT}"),
        "--nats-url".into(),
        nats_url.into(),
        "--nats-replicas".into(),
        replicas.to_string(),
        "--tls-cert".into(),
        dir.join("cert.pem").display().to_string(),
        "--tls-key".into(),
        dir.join("key.pem").display().to_string(),
        // Behind the balancers every client arrives from the balancer's address.
        "--max-pending-per-ip".into(),
        "0".into(),
    ];
    args.extend(config.node_args.iter().cloned());
    let log = dir.join(format!("{}.log", node_id(index)));
    HostProcess::new(host, binary("switchboard"), os(&args), log)
        .env("SWITCHBOARD_JWT_SECRET", &config.jwt_secret)
        .env("RUST_LOG", &config.log_level)
}

/// HAProxy number `index` (0-based) on `host` over the nodes' HTTP ports, from
/// `deploy/haproxy/haproxy.cfg.tmpl`, with the template's global `maxconn` replaced by
/// `maxconn` if given.
pub fn haproxy(
    host: &Host,
    index: usize,
    nodes: &[Host],
    maxconn: Option<u32>,
    dir: &Path,
) -> anyhow::Result<HostProcess> {
    let mut template = std::fs::read_to_string(deploy_dir().join("haproxy/haproxy.cfg.tmpl"))
        .context("reading deploy/haproxy/haproxy.cfg.tmpl")?;
    if let Some(maxconn) = maxconn {
        template = template
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("maxconn ") {
                    format!("    maxconn {maxconn}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
    }
    let servers: Vec<String> = nodes
        .iter()
        .enumerate()
        .map(|(i, h)| format!("    server {} {}:{HTTP_PORT} check", node_id(i), h.addr()))
        .collect();
    let cfg =
        template.replace("{{FRONTEND}}", &format!("0.0.0.0:{HTTP_PORT}")).replace("{{SERVERS}}", &servers.join("\n"));
    let name = if index == 0 { "haproxy".to_string() } else { format!("haproxy{}", index + 1) };
    let path = dir.join(format!("{name}.cfg"));
    std::fs::write(&path, cfg).with_context(|| format!("writing {name}.cfg"))?;
    let args = vec![OsString::from("-f"), path.into_os_string(), OsString::from("-db")];
    Ok(HostProcess::new(host, haproxy_binary(), args, dir.join(format!("{name}.log"))))
}

/// nginx on `host` balancing UDP over the nodes' WebTransport ports by client address, from
/// `deploy/nginx/wt-udp.conf.tmpl`, with `workers` worker processes.
pub fn nginx(host: &Host, nodes: &[Host], workers: usize, dir: &Path) -> anyhow::Result<HostProcess> {
    let template = std::fs::read_to_string(deploy_dir().join("nginx/wt-udp.conf.tmpl"))
        .context("reading deploy/nginx/wt-udp.conf.tmpl")?;
    let servers: Vec<String> = nodes.iter().map(|h| format!("        server {}:{WT_PORT};", h.addr())).collect();
    let modules = if Path::new(NGINX_STREAM_MODULE).exists() {
        format!("load_module {NGINX_STREAM_MODULE};")
    } else {
        String::new()
    };
    let cfg = template
        .replace("{{MODULES}}", &modules)
        .replace("{{PID}}", &dir.join("nginx.pid").display().to_string())
        .replace("{{ERROR_LOG}}", &dir.join("nginx.log").display().to_string())
        .replace("{{LISTEN}}", &WT_PORT.to_string())
        .replace("{{WORKERS}}", &workers.to_string())
        .replace("{{SERVERS}}", &servers.join("\n"));
    let path = dir.join("nginx.conf");
    std::fs::write(&path, cfg).context("writing nginx.conf")?;
    let args = [
        OsString::from("-c"),
        path.into_os_string(),
        OsString::from("-p"),
        dir.as_os_str().to_owned(),
        // Before the configuration is read, nginx opens its built-in error log path.
        OsString::from("-e"),
        dir.join("nginx.log").into_os_string(),
    ];
    Ok(HostProcess::new(host, nginx_binary(), args.to_vec(), dir.join("nginx.out")))
}

/// `HAPROXY_BIN`, else `haproxy`.
pub fn haproxy_binary() -> String {
    std::env::var("HAPROXY_BIN").unwrap_or_else(|_| "haproxy".into())
}

/// `NGINX_BIN`, else `nginx` (looked up on `PATH`, then in `/usr/sbin`).
pub fn nginx_binary() -> String {
    if let Ok(bin) = std::env::var("NGINX_BIN") {
        return bin;
    }
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx".into()
    } else {
        "nginx".into()
    }
}

/// The repository's `deploy/` directory.
fn deploy_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}
