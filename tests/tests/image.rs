//! The image's runtime stage without a container engine: `deploy/Dockerfile`'s last stage is
//! read (its user, environment, entrypoint, command, and the binaries it copies) and run as
//! written, with the release binaries built from this tree, in a bubblewrap sandbox like a
//! container's: the whole root filesystem read-only (Kubernetes' `readOnlyRootFilesystem`,
//! as the chart sets), `/usr/local/bin` holding only the image's binaries, fresh network,
//! PID, IPC and UTS namespaces, the entrypoint as PID 1, no capabilities, and an environment
//! of exactly what the image and the container runtime set. The node must serve `/healthz`
//! and a WebSocket session from there, and stop cleanly on SIGTERM.
//!
//! The release binaries come from `cargo build --release --locked -p switchboard -p
//! switchboard-webtransport` (the Dockerfile's build command; `scripts/test.sh` runs it before
//! the tests) in `target/release`, or `SWITCHBOARD_RELEASE_DIR`. Needs root and `bwrap`
//! (Debian's bubblewrap, which `scripts/test.sh` installs).

use bytes::Bytes;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use switchboard_client::{Client, ClientConfig, Event};
use switchboard_relay::auth::{Minter, DEV_SECRET};
use switchboard_tests::{claims, wait_for, within, WAIT};

/// What the base image (`debian:bookworm-slim`) and the container runtime add to the
/// Dockerfile's own `ENV`: the base image's PATH; HOSTNAME and HOME from Docker (HOME from the
/// user's passwd entry: `useradd --no-create-home` leaves it at a directory that does not exist).
const BASE_ENV: [(&str, &str); 3] = [
    ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
    ("HOSTNAME", "sb-image-test"),
    ("HOME", "/home/switchboard"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

// ----------------------------------------------------------------------------- the Dockerfile

/// The runtime stage of `deploy/Dockerfile`, as far as running it goes.
#[derive(Debug)]
struct RuntimeStage {
    user: (u32, u32),
    env: BTreeMap<String, String>,
    /// ENTRYPOINT then CMD (exec form).
    argv: Vec<String>,
    /// Files copied from the build stage into /usr/local/bin, by name.
    binaries: Vec<String>,
    workdir: String,
}

/// `deploy/Dockerfile` as instructions: continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (word, rest) = current.trim().split_once(char::is_whitespace).unwrap_or((current.trim(), ""));
                out.push((word.to_ascii_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

fn exec_form(what: &str, args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("{what} must be in exec form (a JSON array): {args} ({e})"))
}

fn runtime_stage() -> RuntimeStage {
    let text = std::fs::read_to_string(repo().join("deploy/Dockerfile")).expect("deploy/Dockerfile");
    let all = instructions(&text);
    let last_from = all.iter().rposition(|(w, _)| w == "FROM").expect("a FROM");
    assert_eq!(all[last_from].1, "debian:bookworm-slim", "BASE_ENV describes debian:bookworm-slim");
    let mut stage = RuntimeStage {
        user: (0, 0),
        env: BTreeMap::new(),
        argv: Vec::new(),
        binaries: Vec::new(),
        workdir: "/".into(),
    };
    let (mut entrypoint, mut cmd) = (Vec::new(), Vec::new());
    for (word, args) in &all[last_from + 1..] {
        match word.as_str() {
            "USER" => {
                let (u, g) = args.split_once(':').expect("USER uid:gid, numeric (runAsNonRoot needs numbers)");
                stage.user = (u.parse().expect("numeric uid"), g.parse().expect("numeric gid"));
            }
            "ENV" => {
                for pair in args.split_whitespace() {
                    let (k, v) = pair.split_once('=').expect("ENV key=value pairs, unquoted");
                    stage.env.insert(k.to_owned(), v.to_owned());
                }
            }
            "ENTRYPOINT" => entrypoint = exec_form("ENTRYPOINT", args),
            "CMD" => cmd = exec_form("CMD", args),
            "WORKDIR" => stage.workdir = args.clone(),
            "COPY" => {
                let mut parts: Vec<&str> = args.split_whitespace().collect();
                assert_eq!(parts.first(), Some(&"--from=build"), "the runtime stage copies only from the build stage");
                parts.remove(0);
                let dest = parts.pop().expect("a destination");
                assert_eq!(dest, "/usr/local/bin/", "binaries go to /usr/local/bin");
                for src in parts {
                    let name = src.strip_prefix("/usr/local/bin/").expect("built binaries from /usr/local/bin");
                    stage.binaries.push(name.to_owned());
                }
            }
            "RUN" | "EXPOSE" | "LABEL" | "STOPSIGNAL" => {}
            other => panic!("{other} in the runtime stage: teach tests/tests/image.rs what it changes"),
        }
    }
    stage.argv = entrypoint.into_iter().chain(cmd).collect();
    stage
}

impl RuntimeStage {
    /// The environment a container of the image starts with.
    fn environment(&self) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = BASE_ENV.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        env.extend(self.env.clone());
        env
    }
}

// ----------------------------------------------------------------------------- the sandbox

fn release_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHBOARD_RELEASE_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<this test> -> target/release
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(3).expect("the target directory").join("release")
}

/// `argv` run as the image would run it: `bwrap` (as root) builds the container, `setpriv`
/// drops to the image's user, no capabilities, no new privileges, and (through `env`, which
/// only removes the PWD bwrap adds) execs `argv` as PID 1.
fn sandbox(stage: &RuntimeStage, argv: &[String]) -> Command {
    let release = release_dir();
    let mut c = Command::new("bwrap");
    c.args(["--die-with-parent", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"])
        .args(["--as-pid-1", "--hostname", BASE_ENV[1].1])
        // The whole tree read-only, submounts included (/tmp, /run, /work, ...).
        .args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"])
        .args(["--tmpfs", "/usr/local/bin"]);
    for name in &stage.binaries {
        let path = release.join(name);
        assert!(
            path.is_file(),
            "{} not found: build the release binaries first \
             (`cargo build --release --locked -p switchboard -p switchboard-webtransport`, as scripts/test.sh does)",
            path.display()
        );
        c.arg("--ro-bind").arg(path).arg(format!("/usr/local/bin/{name}"));
    }
    c.args(["--remount-ro", "/usr/local/bin", "--chdir", &stage.workdir, "--clearenv"]);
    for (k, v) in stage.environment() {
        c.args(["--setenv", &k, &v]);
    }
    let (uid, gid) = (stage.user.0.to_string(), stage.user.1.to_string());
    c.args(["--", "/usr/bin/setpriv", "--reuid", &uid, "--regid", &gid, "--clear-groups"])
        .args(["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"])
        // bwrap exports PWD for its --chdir; a container runtime does not.
        .args(["/usr/bin/env", "-u", "PWD", "--"])
        .args(argv)
        .stdin(Stdio::null());
    c
}

/// Run `argv` in the sandbox to the end; its exit status and output.
fn sandboxed_output(stage: &RuntimeStage, argv: &[&str]) -> (bool, String, String) {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let out = sandbox(stage, &argv).output().expect("running bwrap (Debian's bubblewrap; scripts/test.sh installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The host pid of the sandbox's PID 1 (bwrap's only child), once it runs `comm`.
async fn pid_one(bwrap: u32, comm: &str) -> u32 {
    wait_for(Duration::from_secs(10), "the sandboxed process", || async move {
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if ppid == Some(bwrap) && name.trim() == comm {
                return Some(pid);
            }
        }
        None
    })
    .await
}

/// Run the future made by `make` on a thread inside `pid`'s network namespace (its own
/// current-thread runtime: every socket it opens is the sandbox's).
async fn in_netns<T, F, Fut>(pid: u32, make: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        let ns = File::open(format!("/proc/{pid}/ns/net")).expect("the sandbox's network namespace");
        // SAFETY: a valid namespace descriptor; CLONE_NEWNET changes only this thread.
        assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let _ = tx.send(rt.block_on(make()));
    });
    match rx.await {
        Ok(v) => v,
        Err(_) => std::panic::resume_unwind(thread.join().expect_err("the thread ended without an answer")),
    }
}

struct Sandboxed(Child);

impl Drop for Sandboxed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ----------------------------------------------------------------------------- .dockerignore

/// Whether `.dockerignore`'s `patterns` leave `path` (relative, `/`-separated) out of the
/// build context: a pattern that matches the path or one of its parent directories excludes
/// it (Docker's rules for the patterns used here: `*` within a segment, `**` any segments).
fn ignored(patterns: &[&str], path: &str) -> bool {
    fn seg(p: &str, s: &str) -> bool {
        match p.split_once('*') {
            None => p == s,
            Some((head, tail)) => {
                s.starts_with(head) && (0..=s.len() - head.len()).any(|i| seg(tail, &s[head.len() + i..]))
            }
        }
    }
    fn segs(p: &[&str], s: &[&str]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(&"**"), _) => segs(&p[1..], s) || (!s.is_empty() && segs(p, &s[1..])),
            (Some(a), Some(b)) => seg(a, b) && segs(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let parts: Vec<&str> = path.split('/').collect();
    patterns.iter().any(|pattern| {
        let p: Vec<&str> = pattern.trim_matches('/').split('/').collect();
        (1..=parts.len()).any(|n| segs(&p, &parts[..n]))
    })
}

// ----------------------------------------------------------------------------- tests

#[test]
fn the_build_context_leaves_out_target_and_node_modules_but_keeps_the_sources() {
    let text = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    let patterns: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert!(patterns.iter().all(|p| !p.starts_with('!')), "the matcher here knows no exceptions");
    for out in ["target/release/switchboard", "web/node_modules/esbuild/package.json", "fuzz/target/x", ".git/HEAD"] {
        assert!(ignored(&patterns, out), "{out} must stay out of the build context");
    }
    // What the build reads: every tracked file but the web client's tests and tooling is kept.
    let tracked = Command::new("git").arg("-C").arg(repo()).args(["ls-files", "-z"]).output().expect("git ls-files");
    let tracked = String::from_utf8(tracked.stdout).expect("UTF-8 paths");
    let files: Vec<&str> = tracked.split('\0').filter(|f| !f.is_empty()).collect();
    assert!(files.len() > 100, "git ls-files lists the tree");
    let dropped: Vec<&&str> = files.iter().filter(|f| ignored(&patterns, f)).collect();
    assert!(dropped.is_empty(), "tracked files left out of the build context: {dropped:?}");
    for needed in ["Cargo.lock", "web/dist/demo.js", "protocol/proto/switchboard.proto", "actix-api/src/main.rs"] {
        assert!(files.contains(&needed) && !ignored(&patterns, needed), "{needed} is in the context");
    }
    // The matcher itself.
    assert!(ignored(&["**/node_modules"], "node_modules/x") && ignored(&["**/node_modules"], "a/b/node_modules"));
    assert!(
        !ignored(&["target"], "bench/target.rs") && ignored(&["*.swp"], "x.swp") && !ignored(&["*.swp"], "a/x.swp")
    );
}

#[tokio::test]
async fn the_runtime_stage_serves_as_uid_10001_on_a_read_only_root_with_only_the_image_environment() {
    let stage = runtime_stage();
    assert_eq!(stage.user, (10001, 10001), "{stage:?}");
    assert_eq!(stage.argv, ["/usr/local/bin/switchboard", "serve"], "{stage:?}");
    assert!(
        stage.binaries.contains(&"switchboard".to_owned())
            && stage.binaries.contains(&"webtransport-server".to_owned())
    );
    let expected_env: Vec<String> = stage.environment().iter().map(|(k, v)| format!("{k}={v}")).collect();

    // The sandbox first proves what it is: its user, its environment, nothing writable.
    let (ok, out, err) = sandboxed_output(&stage, &["/usr/bin/id", "-u"]);
    assert!(ok && out.trim() == "10001", "id -u: {out} {err}");
    let (ok, out, err) = sandboxed_output(&stage, &["/usr/bin/env"]);
    let mut seen: Vec<String> = out.lines().map(str::to_owned).collect();
    seen.sort();
    assert!(ok && seen == expected_env, "env in the sandbox: {seen:?}, want {expected_env:?} ({err})");
    let probe = "for d in / /tmp /var/tmp /run /etc /home /usr/local/bin \"$0\"; do \
                 if true 2>/dev/null >\"$d/.sb-write-probe\"; then echo \"writable: $d\"; rm -f \"$d/.sb-write-probe\"; fi; done; echo probed";
    let here = repo().canonicalize().expect("the repository");
    let (ok, out, err) = sandboxed_output(&stage, &["/bin/sh", "-c", probe, &here.display().to_string()]);
    assert!(ok && out.trim() == "probed", "writable in the sandbox: {out} {err}");
    let (ok, out, _) = sandboxed_output(&stage, &["/bin/sh", "-c", "ls /usr/local/bin"]);
    let mut listed: Vec<&str> = out.split_whitespace().collect();
    listed.sort();
    let mut want: Vec<&str> = stage.binaries.iter().map(String::as_str).collect();
    want.sort();
    assert!(ok && listed == want, "/usr/local/bin holds the image's binaries only: {listed:?}");

    // The image's entrypoint and command, as PID 1.
    let log = std::env::temp_dir().join(format!("switchboard-image-{}.log", std::process::id()));
    let mut cmd = sandbox(&stage, &stage.argv);
    cmd.stdout(Stdio::null()).stderr(File::create(&log).expect("log file"));
    let mut node = Sandboxed(cmd.spawn().expect("starting bwrap"));
    let pid = pid_one(node.0.id(), "switchboard").await;
    assert_eq!(status_field(pid, "Uid:"), "10001 10001 10001 10001", "runs as the image's user");
    assert_eq!(status_field(pid, "Gid:"), "10001 10001 10001 10001");
    assert_eq!(status_field(pid, "CapEff:"), "0000000000000000", "no capabilities");
    assert_eq!(status_field(pid, "NSpid:").split(' ').next_back(), Some("1"), "PID 1 in its namespace");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let mut environ: Vec<String> =
        environ.split(|b| *b == 0).filter(|v| !v.is_empty()).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
    environ.sort();
    assert_eq!(environ, expected_env, "the node sees exactly the image's environment");

    let token = |sub: &str| Minter::hmac(DEV_SECRET.as_bytes()).mint(&claims(sub, &["demo"])).expect("token");
    let (alice, bob) = (token("alice"), token("bob"));
    in_netns(pid, move || async move {
        // The image's address, 0.0.0.0:8080, inside the sandbox's own network.
        wait_for(Duration::from_secs(30), "/healthz in the sandbox", || async {
            matches!(switchboard_tests::http::get(8080, "/healthz").await, Ok((200, _))).then_some(())
        })
        .await;
        let (status, body) = switchboard_tests::http::get(8080, "/readyz").await.expect("/readyz");
        assert_eq!(status, 200, "{body}");
        let url = "ws://127.0.0.1:8080/ws";
        let (a, _) = Client::connect(ClientConfig::new(url, alice)).await.expect("alice connects");
        let (b, mut events) = Client::connect(ClientConfig::new(url, bob)).await.expect("bob connects");
        a.join("demo").await.expect("alice joins");
        b.join("demo").await.expect("bob joins");
        a.publish("demo", Bytes::from_static(b"from the image"), true, "chat").await.expect("publish");
        within(WAIT, "bob's message", async {
            loop {
                match events.recv().await.expect("bob's events") {
                    Event::Message(m) => break assert_eq!(&m.payload[..], b"from the image"),
                    _ => continue,
                }
            }
        })
        .await;
        a.close().await;
        b.close().await;
    })
    .await;

    // `docker stop`: SIGTERM to PID 1; the node drains and exits 0 (bwrap passes its status on).
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
    let exit = within(Duration::from_secs(30), "the node to exit", async {
        loop {
            if let Some(status) = node.0.try_wait().expect("try_wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(exit.success(), "exit {exit:?}; log:\n{logged}");
    // SWITCHBOARD_LOG_FORMAT=json from the image: every log line is a JSON object.
    assert!(logged.lines().count() >= 2, "the node logged: {logged}");
    let messages: Vec<String> = logged
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            v["message"].as_str().unwrap_or_else(|| panic!("a message: {line}")).to_owned()
        })
        .collect();
    eprintln!("the node's log in the sandbox: {messages:?}");
    for said in ["HTTP and WebSocket listening", "shutdown signal: draining", "stopped"] {
        assert!(messages.iter().any(|m| m == said), "the node logged {said:?}: {messages:?}");
    }
    let _ = std::fs::remove_file(&log);
}
