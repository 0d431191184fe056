//! A long-lived process on a lab host that can be signalled, stopped, killed and started
//! again with the same command line: the unit of a [`Cluster`](super::Cluster)'s pieces
//! (NATS servers, nodes, balancers).

use super::Host;
use anyhow::{bail, Context};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// A program run on a [`Host`] (`ip netns exec`), its output appended to a log file. Killed
/// (SIGKILL) on drop, and with its lab at the latest.
pub struct HostProcess {
    host: Host,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl HostProcess {
    /// A process (not started yet) running `program` with `args` on `host`, stdout and
    /// stderr appended to `log`.
    pub fn new(host: &Host, program: impl Into<PathBuf>, args: Vec<OsString>, log: impl Into<PathBuf>) -> Self {
        Self { host: host.clone(), program: program.into(), args, env: Vec::new(), log: log.into(), child: None }
    }

    /// Set an environment variable for every start.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The host it runs on.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Start it (an error if it is running). `ip netns exec` execs the program, so the child's
    /// pid is the program's.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.running() {
            bail!("{} is running already", self.program.display());
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).context("opening a log")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.host.namespace()]).arg(&self.program).args(&self.args);
        // The node picks these up from the environment: a caller's must not leak in.
        cmd.env_remove("SWITCHBOARD_NATS_URL");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cloning a log handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} on {}", self.program.display(), self.host.name()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether it is running (started and not exited).
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its process id while started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Send `signal` (e.g. `libc::SIGTERM`) if it is running.
    pub fn signal(&mut self, signal: libc::c_int) -> anyhow::Result<()> {
        if !self.running() {
            bail!("{} is not running", self.program.display());
        }
        let pid = self.pid().context("a started process")? as libc::pid_t;
        // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill");
        }
        Ok(())
    }

    /// Wait (polling, at most `limit`) for it to exit; its exit status. An error on timeout
    /// (it keeps running) or if it was never started.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        let child = self.child.as_mut().context("never started")?;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{} still running after {limit:?}", self.program.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Send `signal`, then wait up to `limit` for the exit; on timeout SIGKILL it and fail.
    pub async fn stop(&mut self, signal: libc::c_int, limit: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(signal)?;
        match self.wait_exit(limit).await {
            Ok(status) => Ok(status),
            Err(e) => {
                self.kill9();
                Err(e.context("killed with SIGKILL"))
            }
        }
    }

    /// SIGKILL it (if running) and reap it.
    pub fn kill9(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
