//! Delivery over the links and inputs a clinic really has, against a real Mosquitto: a slow
//! uplink (a delay proxy on loopback), a link that drops every few seconds, and a result too
//! large for one MQTT packet. Each of these delivered nothing before the publisher was
//! rebuilt (issue 16): the slow link's connect was cut short by the loop's own 100 ms poll,
//! and one oversized packet failed the connection again and again.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

/// Usable images of the committed sample, fractured and not, each dropped under a new name.
const IMAGES: [&str; 8] = [
    "IMG0002588.jpg",
    "IMG0000002.jpg",
    "IMG0002322.jpg",
    "IMG0000429.jpg",
    "IMG0002628.jpg",
    "IMG0003297.jpg",
    "IMG0002296.jpg",
    "IMG0003733.jpg",
];

fn new_client_lines(broker: &Broker) -> usize {
    broker
        .log()
        .lines()
        .filter(|l| l.contains("New client connected") && l.contains("unit-1"))
        .count()
}

#[test]
fn a_slow_uplink_delivers_every_result_without_a_reconnect_storm() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("broker"), free_port());
    let sub = Subscriber::start(broker.port, "test-sub-slow");
    // 150 ms each way: a 300 ms round trip, a poor cellular link.
    let proxy = DelayProxy::start(broker.port, Duration::from_millis(150), None);
    let mut d = Daemon::start(tmp.path(), Some(&proxy.url()), &[]);
    for (i, name) in [
        "IMG0002588.jpg",
        "IMG0000002.jpg",
        "IMG0002322.jpg",
        "IMG0000429.jpg",
        "IMG0002628.jpg",
    ]
    .iter()
    .enumerate()
    {
        d.drop_file(&sample(name), &format!("{i}.jpg"));
    }
    let t0 = std::time::Instant::now();
    wait_until("five results over the slow link", T, || {
        sub.result_ids().len() >= 5
    });
    eprintln!(
        "measured: 5 results over 150 ms each way in {:.1} s (since the last drop), {} connection(s)",
        t0.elapsed().as_secs_f64(),
        proxy.connection_count()
    );
    d.stop("TERM");
    let log = std::fs::read_to_string(tmp.path().join("fv-edge.log")).unwrap();
    assert!(
        proxy.connection_count() <= 2,
        "{} connections through the proxy for one session:\n{log}",
        proxy.connection_count()
    );
    assert_eq!(sub.result_ids().len(), 5);
    assert!(d.outbox_depth() == 0, "outbox not drained:\n{log}");
}

#[test]
fn an_oversized_value_does_not_stop_delivery_of_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("broker"), free_port());
    let sub = Subscriber::start(broker.port, "test-sub-big");
    let mut d = Daemon::start(tmp.path(), Some(&broker.url()), &[]);
    // A DX object whose Modality holds 12 000 characters: refused, and its error must not
    // quote the whole value into a message too large to publish.
    let big = tmp.path().join("big.dcm");
    dicom_from_jpeg(
        &sample("IMG0000002.jpg"),
        &big,
        &format!("DX{}", "X".repeat(12_000)),
        true,
    );
    d.drop_file(&big, "big.dcm");
    wait_until("the oversized input's result", T, || {
        !sub.on("/result").is_empty() || d.state.join("dropped.jsonl").exists()
    });
    d.drop_file(&sample("IMG0002588.jpg"), "a.jpg");
    d.drop_file(&sample("IMG0000429.jpg"), "b.jpg");
    wait_until("the two good results after it", T, || {
        sub.on("/result")
            .iter()
            .filter(|m| m.json["error"].is_null())
            .count()
            >= 2
    });
    // Heartbeats keep flowing, and each carries a bounded last_error.
    let before = sub.on("/heartbeat").len();
    wait_until("another heartbeat", T, || {
        sub.on("/heartbeat").len() > before + 1
    });
    d.stop("TERM");
    let log = std::fs::read_to_string(tmp.path().join("fv-edge.log")).unwrap();
    let results = sub.on("/result");
    let dropped = std::fs::read_to_string(d.state.join("dropped.jsonl")).unwrap_or_default();
    assert!(
        results.len() == 3 || (results.len() == 2 && dropped.lines().count() == 1),
        "{} results, dropped: {dropped}\n{log}",
        results.len()
    );
    for m in sub.on("/result").iter().chain(&sub.on("/heartbeat")) {
        let text = m.json.to_string();
        assert!(text.len() < 8 * 1024, "a {}-byte message", text.len());
    }
    assert!(
        new_client_lines(&broker) <= 1,
        "the unit reconnected {} times:\n{}",
        new_client_lines(&broker),
        broker.log()
    );
}

/// The soak over a bad link: 300 ms each way and the connection cut every 5 s, for a batch
/// of images dropped while the link comes and goes. Every result is delivered, each under
/// one id, and the local results carry exactly the published ids.
#[test]
fn a_slow_link_that_drops_every_few_seconds_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("broker"), free_port());
    let sub = Subscriber::start(broker.port, "test-sub-lossy");
    let proxy = DelayProxy::start(
        broker.port,
        Duration::from_millis(300),
        Some(Duration::from_secs(5)),
    );
    let mut d = Daemon::start(tmp.path(), Some(&proxy.url()), &[]);
    let names = IMAGES;
    for (i, name) in names.iter().enumerate() {
        d.drop_file(&sample(name), &format!("{i}.jpg"));
        // Over some 12 s: the link is cut at least twice while images arrive.
        std::thread::sleep(Duration::from_millis(1500));
    }
    let t0 = std::time::Instant::now();
    wait_until(
        "every result over the lossy link",
        Duration::from_secs(240),
        || sub.result_ids().len() >= names.len(),
    );
    eprintln!(
        "measured: {} results over 300 ms each way, cut every 5 s: {:.1} s after the last drop, {} connections, {} messages at the subscriber",
        names.len(),
        t0.elapsed().as_secs_f64(),
        proxy.connection_count(),
        sub.on("/result").len()
    );
    d.stop("TERM");
    let mut local = ids(&d.done_results());
    local.extend(ids(&d.quarantined()));
    assert_eq!(local.len(), names.len());
    assert_eq!(
        local,
        sub.result_ids(),
        "one id per input, the same at both ends"
    );
    assert!(
        proxy.connection_count() >= 3,
        "the link was cut only {} times",
        proxy.connection_count() - 1
    );
}

fn python3() -> Option<&'static str> {
    std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        .then_some("python3")
}

/// A scripted broker acknowledges the first 2 results of a burst, withholds the PUBACKs of
/// the next ones and resets the connection after the 4th; later sessions get every PUBACK.
/// A record may leave the outbox only on its own PUBACK: every result the daemon stops
/// holding was acknowledged by the broker under its own packet id.
#[test]
fn records_leave_the_outbox_only_on_their_own_puback_across_a_reset() {
    let Some(py) = python3() else {
        fv_e2e::missing(
            "PYTHON",
            "python3 not found (the scripted broker is a Python script)",
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = tmp.path().join("broker.jsonl");
    let mut broker = std::process::Command::new(py)
        .arg(workspace().join("edge/tests/scripts/scripted_broker.py"))
        .arg(port.to_string())
        .arg(&log)
        .args(["--ack-first", "2", "--cut-after", "4"])
        .spawn()
        .unwrap();
    wait_until("the scripted broker", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    // The daemon starts offline so that the results queue and go out as one burst.
    let mut d = Daemon::start(tmp.path(), Some("mqtt://127.0.0.1:1"), &[]);
    let names = &IMAGES[..6];
    for (i, n) in names.iter().enumerate() {
        d.drop_file(&sample(n), &format!("{i}.jpg"));
    }
    wait_until("six queued results", T, || d.outbox_depth() == names.len());
    d.stop("TERM");
    let mut d = Daemon::start(tmp.path(), Some(&format!("mqtt://127.0.0.1:{port}")), &[]);
    wait_until("the outbox to drain", T, || d.outbox_depth() == 0);
    d.stop("TERM");
    let _ = broker.kill();
    let _ = broker.wait();
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let acked: std::collections::BTreeSet<String> = events
        .iter()
        .filter(|e| e["event"] == "ack")
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let local = ids(&d.done_results());
    assert_eq!(local.len(), names.len());
    let unacked: Vec<&String> = local.difference(&acked).collect();
    assert!(
        unacked.is_empty(),
        "left the outbox without their PUBACK: {unacked:?}\nbroker saw: {events:#?}"
    );
    assert!(
        events.iter().any(|e| e["conn"] == 2),
        "the reset was never exercised: {events:#?}"
    );
}

/// A sparse 3 GB file with `DICM` at byte 128 is refused from its size, before a byte is
/// read; the image behind it is read as usual.
#[test]
fn a_huge_input_is_refused_before_it_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), None, &[]);
    let huge = tmp.path().join("huge.dcm");
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::File::create(&huge).unwrap();
        f.seek(std::io::SeekFrom::Start(128)).unwrap();
        f.write_all(b"DICM").unwrap();
        f.set_len(3 << 30).unwrap();
    }
    // Renamed in, not copied: the file stays sparse (3 GB that take no disk).
    std::fs::create_dir_all(&d.watch).unwrap();
    std::fs::rename(&huge, d.watch.join("huge.dcm")).unwrap();
    d.drop_file(&sample("IMG0002588.jpg"), "a.jpg");
    wait_until("both inputs handled", T, || {
        d.quarantined().len() == 1 && d.done_results().len() == 1
    });
    let q = &d.quarantined()[0];
    assert_eq!(q["error"]["code"], "too_large", "{q}");
    let msg = q["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("huge.dcm") && msg.contains("max_input_bytes"),
        "{msg}"
    );
}

/// When storing an input's local result or moving it to done/ fails (the done folder is
/// gone, a full or read-only disk), the retries publish nothing new: one input, one result
/// id, at the broker and in the local result.
#[test]
fn a_failed_move_is_retried_without_a_second_result() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("broker"), free_port());
    let sub = Subscriber::start(broker.port, "test-sub-move");
    let mut d = Daemon::start(tmp.path(), Some(&broker.url()), &[]);
    d.drop_file(&sample("IMG0002588.jpg"), "b.jpg");
    wait_until("the first result", T, || !sub.on("/result").is_empty());
    // The done folder becomes a dangling link (a file there would itself be taken as an
    // input): every write into it and every move fails, even as root.
    let done = d.watch.join("done");
    std::fs::remove_dir_all(&done).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("gone/away"), &done).unwrap();
    d.drop_file(&sample("IMG0000429.jpg"), "c.jpg");
    let log_path = tmp.path().join("fv-edge.log");
    wait_until("three failed attempts at c.jpg", T, || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("c.jpg") && l.contains("retrying in"))
            .count()
            >= 3
    });
    // Mend the folder: the next retry finishes the first attempt.
    std::fs::remove_file(&done).unwrap();
    std::fs::create_dir_all(&done).unwrap();
    wait_until("c.jpg done", T, || done.join("c.jpg").is_file());
    wait_until("its result at the broker", T, || {
        sub.result_ids().len() >= 2
    });
    // The clean stop publishes `offline` after the outbox has drained, on the same
    // session: a second copy of a result under another id would have come before it.
    d.stop("TERM");
    wait_until("the offline status after the drain", T, || {
        sub.on("/status")
            .last()
            .is_some_and(|m| m.json["state"] == "offline")
    });
    let results = sub.on("/result");
    let ids_at_broker = sub.result_ids();
    assert_eq!(
        ids_at_broker.len(),
        2,
        "one id per input, however often it is retried: {results:#?}"
    );
    let local: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(done.join("c.jpg.result.json")).unwrap())
            .unwrap();
    assert!(ids_at_broker.contains(local["id"].as_str().unwrap()));
    assert!(done.join("c.jpg.overlay.png").is_file());
    // The heartbeat's last error named the file by its pseudonym only.
    let errors: Vec<String> = sub
        .on("/heartbeat")
        .iter()
        .filter_map(|hb| hb.json["last_error"].as_str().map(str::to_owned))
        .collect();
    assert!(!errors.is_empty(), "the failures reached the heartbeat");
    for e in &errors {
        // By path component: a pseudonym's hex may itself end in "c" ("file-…541c.jpg").
        let named = e
            .split(|c: char| c == '/' || c == ':' || c.is_whitespace())
            .any(|t| t == "c.jpg" || t.starts_with("c.jpg."));
        assert!(!named && e.contains("file-"), "{e}");
    }
}

#[test]
fn a_second_daemon_on_one_state_directory_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let mut first = Daemon::start(tmp.path(), None, &[]);
    wait_until("the first daemon's lock", T, || {
        first.state.join("lock").exists()
    });
    let second = output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_fv-edge"))
            .args(["run", "--watch"])
            .arg(tmp.path().join("watch2"))
            .arg("--state")
            .arg(&first.state)
            .arg("--models")
            .arg(models_dir()),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(err.contains("another fv-edge is running"), "{err}");
    first.stop("TERM");
}

/// Runs `cmd` to its end, or kills it after `limit` (a daemon that should have refused to
/// start would otherwise run for ever).
fn output_within(cmd: &mut std::process::Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn an_empty_uid_salt_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_fv-edge"))
            .args(["run", "--watch"])
            .arg(tmp.path().join("watch"))
            .arg("--state")
            .arg(tmp.path().join("state"))
            .arg("--models")
            .arg(models_dir())
            .env("FV_UID_SALT", ""),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("uid_salt"), "{err}");
}

/// An input that was being read when the daemon died twice (`STATE/inflight.json` says so:
/// out of memory, a decoder's abort) is quarantined as `crashed` at the next start instead
/// of being read a third time; the inputs behind it are read as usual.
#[test]
fn an_input_that_killed_the_daemon_twice_is_quarantined() {
    let tmp = tempfile::tempdir().unwrap();
    let watch = tmp.path().join("watch");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&watch).unwrap();
    std::fs::create_dir_all(state.join("journal")).unwrap();
    let input = watch.join("deadly.jpg");
    std::fs::copy(sample("IMG0002588.jpg"), &input).unwrap();
    // The journal entry of the input, named as the daemon names it (path, size, time).
    let journal = fv_edge::daemon::journal_path(&state, &input).unwrap();
    std::fs::write(
        state.join("inflight.json"),
        serde_json::to_vec(&serde_json::json!({"journal": journal, "attempts": 2})).unwrap(),
    )
    .unwrap();
    let mut d = Daemon::start(tmp.path(), None, &[]);
    d.drop_file(&sample("IMG0000429.jpg"), "next.jpg");
    wait_until("both inputs handled", T, || {
        d.quarantined().len() == 1 && d.done_results().len() == 1
    });
    d.stop("TERM");
    let q = &d.quarantined()[0];
    assert_eq!(q["error"]["code"], "crashed", "{q}");
    assert!(!state.join("inflight.json").exists());
}

/// A name taken in done/ makes the destination `NAME-1.jpg`: the input's real name with a
/// number. When storing there fails, neither that name nor the input's reaches the fleet.
#[test]
fn a_failed_store_under_a_numbered_name_names_nothing_in_the_heartbeat() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("broker"), free_port());
    let sub = Subscriber::start(broker.port, "test-sub-numbered");
    let d = Daemon::start(tmp.path(), Some(&broker.url()), &[]);
    let done = d.watch.join("done");
    std::fs::create_dir_all(done.join("SMITH_JOHN-1.jpg.result.json/x")).unwrap();
    std::fs::copy(sample("IMG0002588.jpg"), done.join("SMITH_JOHN.jpg")).unwrap();
    d.drop_file(&sample("IMG0000429.jpg"), "SMITH_JOHN.jpg");
    wait_until("a heartbeat with the failure", T, || {
        sub.on("/heartbeat")
            .iter()
            .any(|hb| hb.json["last_error"].is_string())
    });
    for hb in sub.on("/heartbeat") {
        let text = hb.json.to_string();
        assert!(!text.contains("SMITH") && !text.contains("JOHN"), "{text}");
    }
    let log = std::fs::read_to_string(tmp.path().join("fv-edge.log")).unwrap();
    assert!(
        !log.lines()
            .any(|l| l.contains("SMITH_JOHN") && l.contains("file-")),
        "no log line puts a name beside its pseudonym:\n{log}"
    );
}
