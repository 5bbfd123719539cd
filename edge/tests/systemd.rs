//! Under systemd (`Type=notify`): READY once running, watchdog pings at a third of
//! `WatchdogSec`, STOPPING on SIGTERM, through a real notify socket.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

#[test]
fn notifies_ready_pings_the_watchdog_and_says_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let sock_env = sock_path.to_string_lossy().into_owned();
    let mut d = Daemon::start(
        tmp.path(),
        None,
        &[("NOTIFY_SOCKET", &sock_env), ("WATCHDOG_USEC", "600000")],
    );
    let mut got: Vec<String> = Vec::new();
    let mut buf = [0u8; 512];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        if got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3 {
            break;
        }
    }
    assert!(
        got.first().is_some_and(|m| m.contains("READY=1")),
        "{got:?}"
    );
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{got:?}"
    );
    assert!(d.stop("TERM").success());
    let mut stopping = false;
    for _ in 0..10 {
        if let Ok(n) = sock.recv(&mut buf) {
            stopping |= String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
        }
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
}
