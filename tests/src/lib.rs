//! Helpers for the end-to-end tests: find the workspace's binaries, run them in a clean
//! environment, and on failure show everything needed to reproduce.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// The committed FracAtlas sample.
pub fn sample_dir() -> PathBuf {
    workspace().join("tests/data/fracatlas-sample")
}

/// The path of a workspace binary built for this test profile, building it if needed.
pub fn bin(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_owned();
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--bin", name]).current_dir(workspace());
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "cargo build --bin {name} failed");
    }
    path
}

/// The result of running a binary, printable in full.
pub struct Run {
    /// What ran.
    pub command: String,
    /// Where.
    pub cwd: PathBuf,
    /// Exit status, stdout and stderr.
    pub output: Output,
}

impl Run {
    /// Exit code (-1 when killed by a signal).
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }
    /// Standard output as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    /// Standard error as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    /// Everything, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\ncwd: {}\nexit: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.command,
            self.cwd.display(),
            self.code(),
            self.stdout(),
            self.stderr()
        )
    }
    /// Panics with [`Run::describe`] unless the exit code is `want`.
    #[track_caller]
    pub fn expect_code(self, want: i32) -> Self {
        assert_eq!(
            self.code(),
            want,
            "unexpected exit code\n{}",
            self.describe()
        );
        self
    }
}

/// Runs a workspace binary in `cwd` with only `PATH` and `HOME` from the environment, so
/// that no `FV_*` or `RUST_LOG` setting of the caller leaks in.
pub fn run(name: &str, args: &[&str], cwd: &Path) -> Run {
    let path = bin(name);
    let output = Command::new(&path)
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(
            ["PATH", "HOME"]
                .iter()
                .filter_map(|k| Some((k, std::env::var_os(k)?))),
        )
        .output()
        .unwrap_or_else(|e| panic!("{}: cannot run: {e}", path.display()));
    Run {
        command: format!("{} {}", path.display(), args.join(" ")),
        cwd: cwd.to_owned(),
        output,
    }
}

/// What a test needs is missing (`what`: what and how to install it): the test says so and
/// is skipped (returns true), unless `FV_REQUIRE_{switch}` is set to 1, as CI sets every
/// switch (`.ci/run`), which makes it a failure. The one place the skip rule lives.
pub fn missing(switch: &str, what: &str) -> bool {
    let var = format!("FV_REQUIRE_{switch}");
    if std::env::var(&var).as_deref() == Ok("1") {
        panic!("{var}=1 but {what}");
    }
    eprintln!("skipped: {what} ({var}=1 makes this a failure)");
    true
}

/// A missing tool for a browser test (see [`missing`]).
pub fn browser_missing(what: &str) -> bool {
    missing("BROWSER", what)
}

/// `node` on PATH.
pub fn node() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("node"))
            .find(|p| p.is_file())
    })
}

/// What the dashboard's browser tests need: node, `npm ci` in dashboard/ (playwright-core,
/// no browser download) and Debian's Chromium (or `CHROMIUM`). `(node, chromium)`, or None
/// after saying what is missing (see [`browser_missing`]).
pub fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let Some(node) = node() else {
        browser_missing("node is not installed");
        return None;
    };
    if !workspace()
        .join("dashboard/node_modules/playwright-core")
        .exists()
        && browser_missing("dashboard/node_modules is missing (npm ci --prefix dashboard)")
    {
        return None;
    }
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() && browser_missing("Chromium is not installed (apt-get install chromium)")
    {
        return None;
    }
    Some((node, chromium))
}

/// Runs a node script from the workspace root, printing its output; panics when it fails.
pub fn run_node(node: &Path, args: &[&str], envs: &[(&str, &std::ffi::OsStr)]) {
    let out = Command::new(node)
        .args(args)
        .current_dir(workspace())
        .envs(envs.iter().copied())
        .output()
        .expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "node {args:?} failed:\n{text}");
}

/// Polls `f` until it holds; panics after `timeout`, naming what it waited for.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn mosquitto_bin() -> PathBuf {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("mosquitto not found: install it (`apt-get install mosquitto`); .ci/run does")
}

/// The broker setting that goes with fv-fleet's `MAX_MESSAGE_BYTES` (README, "What a unit
/// cannot do"): a larger message never travels.
pub const MESSAGE_SIZE_LIMIT: &str = "message_size_limit 1048576\n";

/// A Mosquitto broker on 127.0.0.1:`port`, persisting to `dir` so that sessions survive a
/// restart, with the message size limit a fleet's broker should have.
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Broker {
    pub fn start(dir: &Path, port: u16) -> Broker {
        let mut b = Broker {
            port,
            dir: dir.to_owned(),
            child: None,
        };
        b.restart();
        b
    }

    /// A broker with the configuration `conf`; `port` is a plain listener in it.
    pub fn start_with(dir: &Path, port: u16, conf: &str) -> Broker {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
        let mut b = Broker {
            port,
            dir: dir.to_owned(),
            child: None,
        };
        b.spawn();
        b
    }

    pub fn restart(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        // Started as root, Mosquitto drops to the `mosquitto` user, which cannot write into
        // the test's root-owned temporary folder: its persistence file was never written and
        // every restart silently lost the subscribers' sessions and queued messages (found
        // by the soak). As root, it stays root.
        let user = if running_as_root() { "user root\n" } else { "" };
        std::fs::write(
            self.dir.join("mosquitto.conf"),
            format!(
                "{user}listener {} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nlog_dest file {}/mosquitto.log\n{MESSAGE_SIZE_LIMIT}",
                self.port,
                self.dir.display(),
                self.dir.display()
            ),
        )
        .unwrap();
        self.spawn();
    }

    /// The broker's own log (connections, persistence), for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let port = self.port;
        wait_until("mosquitto to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Stops it with SIGTERM (it saves its sessions) and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_kill(c.id(), "TERM");
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether the tests run as root (Mosquitto and PostgreSQL then need telling which user to be).
pub fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Sends a signal with kill(1): the tests need SIGTERM and SIGKILL without a libc binding.
pub fn unsafe_kill(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// A CA and a server certificate for 127.0.0.1 (`ca.pem`, `server.pem`, `server.key`), and,
/// with `client`, a client certificate from the same CA (`client.pem`, `client.key`), made
/// with the openssl command in `dir`; readable by the `mosquitto` user, as which a broker
/// started as root reads them.
pub fn make_certs(dir: &Path, client: bool) {
    let run = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl not found: install it (`apt-get install openssl`); .ci/run does")
            .success();
        assert!(ok, "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=fv-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    let mut names = vec![("server", "/CN=127.0.0.1")];
    if client {
        names.push(("client", "/CN=fv-fleet"));
    }
    for (name, subject) in names {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        run(&[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key, "-out", &csr,
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            &pem,
        ]);
    }
    use std::os::unix::fs::PermissionsExt as _;
    let parent = dir.parent().unwrap_or(dir);
    for (p, mode) in [
        (parent, 0o755),
        (dir, 0o755),
        (&dir.join("server.key"), 0o644),
    ] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}
