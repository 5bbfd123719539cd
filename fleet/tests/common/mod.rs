//! Real parts for fv-fleet's tests: Mosquitto (fv-e2e's, which keeps sessions across
//! restarts), a PostgreSQL started from Debian's packages, the fv-fleet binary, a publisher.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// Each test binary uses its own part of these.
#[allow(unused_imports)]
pub use fv_e2e::{free_port, running_as_root, unsafe_kill, wait_until, Broker};

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A PostgreSQL server of its own, from Debian's packages, on a free port; None (with a
/// message) when it is not installed, unless FV_REQUIRE_POSTGRES=1.
pub struct Postgres {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start() -> Option<Postgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .filter(|p| p.join("initdb").exists())
                .max()
        });
        let Some(bin) = bin else {
            fv_e2e::missing(
                "POSTGRES",
                "PostgreSQL is not installed (apt-get install postgresql)",
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        // PostgreSQL refuses to run as root: as root, run it as the package's `postgres` user.
        let as_user = |cmd: &Path| -> Command {
            if running_as_root() {
                let uid = id("-u");
                let gid = id("-g");
                std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
                std::os::unix::fs::chown(&data, Some(uid), Some(gid)).unwrap();
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={gid}"),
                    "--clear-groups",
                    "--",
                ])
                .arg(cmd);
                c
            } else {
                Command::new(cmd)
            }
        };
        let out = as_user(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let child = as_user(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-k",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        wait_until("PostgreSQL to listen", Duration::from_secs(30), || {
            listening(port)
        });
        // Listening comes a moment before accepting logins.
        std::thread::sleep(Duration::from_millis(500));
        Some(Postgres {
            port,
            child,
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

fn id(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a `postgres` user")
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown.
        unsafe_kill(self.child.id(), "QUIT");
        let _ = self.child.wait();
    }
}

/// A running fv-fleet.
pub struct Fleet {
    child: Child,
    log: PathBuf,
    pub api: String,
}

impl Fleet {
    pub fn start(dir: &Path, broker: &str, db: &str, extra: &[&str]) -> Fleet {
        let log = dir.join(format!(
            "fleet-{}.log",
            std::process::id() as u128 + rand_suffix()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_fv-fleet"))
            .args(["--mqtt", broker, "--db", db, "--listen", "127.0.0.1:0"])
            .args(if extra.contains(&"--client-id") {
                &[][..]
            } else {
                &["--client-id", "fleet-test"][..]
            })
            .arg("-v")
            .args(extra)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start fv-fleet");
        let mut api = String::new();
        // Listening, and subscribed (or its session resumed): from then on nothing published
        // is missed.
        wait_until(
            "fv-fleet to listen and subscribe",
            Duration::from_secs(30),
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let subscribed = text.contains("subscribed to") || text.contains("session resumed");
                if let (Some(i), true) = (text.find("dashboard and API on "), subscribed) {
                    let rest = &text[i + "dashboard and API on ".len()..];
                    api = rest
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .trim_end_matches('/')
                        .to_owned();
                    return true;
                }
                assert!(
                    !text.contains("error:"),
                    "fv-fleet failed to start:\n{text}"
                );
                false
            },
        );
        Fleet { child, log, api }
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        fv_fleet::http_get(&format!("{}{path}", self.api), token).unwrap()
    }

    pub fn json(&self, path: &str, token: Option<&str>) -> serde_json::Value {
        let (status, body) = self.get(path, token);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stop(&mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), "TERM");
        self.child.wait().unwrap()
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes like a unit does, QoS 1, and waits for the broker's PUBACKs.
pub fn publish(broker_port: u16, client: &str, messages: &[(String, String, bool)]) {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let mut o = MqttOptions::new(client, "127.0.0.1", broker_port);
    // Large enough for the oversized messages a hostile unit sends.
    o.set_max_packet_size(4 << 20, 4 << 20);
    let (c, mut conn) = Client::new(o, messages.len() + 10);
    for (topic, payload, retain) in messages {
        c.publish(topic, QoS::AtLeastOnce, *retain, payload.as_bytes())
            .unwrap();
    }
    let mut acked = 0;
    let t0 = Instant::now();
    for event in conn.iter() {
        if let Ok(Event::Incoming(Packet::PubAck(_))) = event {
            acked += 1;
            if acked == messages.len() {
                break;
            }
        }
        if let Err(e) = event {
            panic!("publisher: {e}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "publisher: no PUBACKs"
        );
    }
    c.disconnect().ok();
}

/// A result message as fv-edge writes it.
pub fn result(id: &str, site: &str, device: &str, finding: &str, at: &str) -> String {
    serde_json::json!({
        "schema": "fractuvision.result/1",
        "id": id,
        "site": site,
        "device": device,
        "source": {"kind": "file", "name": "DOE_JANE_1970.jpg"},
        "study": null,
        "captured_at": null,
        "processed_at": at,
        "models": [],
        "timing_ms": {"decode": 1.0, "preprocess": 1.0, "classify": 8.0, "detect": null, "total": 10.0},
        "finding": finding,
        "fracture_probability": 0.5,
        "boxes": [],
    })
    .to_string()
}
