//! A coturn `turnserver` (Debian's `coturn` package) for tests: TURN REST API credentials
//! (`use-auth-secret` with a `static-auth-secret`), UDP only, on a loopback port, in the
//! foreground, its database, pid file and log in a temporary directory. Killed on drop.

use super::allocate::{allocate, Allocation};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The realm the test server announces.
pub const REALM: &str = "switchboard.test";

/// A running `turnserver`.
pub struct Coturn {
    child: Child,
    dir: PathBuf,
    /// Where it listens (UDP).
    pub addr: SocketAddr,
}

impl Coturn {
    /// Start `turnserver` on a free loopback UDP port with `secret`; returns once it answers
    /// an Allocate (with a 401 asking for credentials).
    pub async fn start(secret: &str) -> Self {
        let bin = which("turnserver")
            .expect("turnserver not found: install coturn (apt-get install -y coturn; scripts/test.sh does)");
        let port = crate::free_udp_port();
        let dir = std::env::temp_dir().join(format!("switchboard-coturn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("coturn temp dir");
        let log = std::fs::File::create(dir.join("turnserver.log")).expect("coturn log file");
        let child = Command::new(bin)
            .args(["-n", "--no-cli", "--no-tls", "--no-dtls", "--no-tcp", "--simple-log", "--log-file", "stdout"])
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string()])
            .args(["--use-auth-secret", "--static-auth-secret", secret, "--realm", REALM])
            .arg("--pidfile")
            .arg(dir.join("turnserver.pid"))
            .arg("--userdb")
            .arg(dir.join("turndb"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log fd")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting turnserver");
        let server = Self { child, dir, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
        // Ready when it refuses a credential-less allocation the TURN way (each attempt is
        // itself bounded; so is the wait).
        crate::wait_for(Duration::from_secs(10), "turnserver to answer", || async {
            match allocate(server.addr, "0:nobody", "x").await {
                Ok(Allocation::Refused(401, _)) => Some(()),
                _ => None,
            }
        })
        .await;
        server
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("turnserver.log")).unwrap_or_default()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The path of `name` on `PATH` (or in /usr/sbin, /usr/bin).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
