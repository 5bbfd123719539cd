//! fv-edge against a real Mosquitto broker: results arrive and validate, survive a broker
//! outage and a SIGKILL of the daemon, and the retained status and last will work.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

#[test]
fn results_arrive_validate_and_shutdown_is_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("broker"), free_port());
    let sub = Subscriber::start(broker.port, "test-sub-1");
    // Large JPEGs decoded at the scale the models need: the overlay must still be whole.
    let config = tmp.path().join("fv-edge.toml");
    std::fs::write(&config, "reduced_decode = true\n").unwrap();
    let mut d = Daemon::spawn(tmp.path(), Some(&broker.url()), &[], Some(&config));
    d.drop_file(&sample("IMG0002588.jpg"), "a.jpg");
    d.drop_file(&sample("IMG0000002.jpg"), "b.jpg");
    // Truncated: quarantined, and its failure still reported.
    d.drop_file(&sample("IMG0004092.jpg"), "broken.jpg");
    wait_until("three results", T, || sub.on("/result").len() >= 3);
    wait_until("a heartbeat", T, || !sub.on("/heartbeat").is_empty());

    for m in sub.on("/result") {
        assert_valid(&m.json);
        assert_eq!(m.json["site"], "test-site");
        assert_eq!(m.json["device"], "unit-1");
        assert!(
            m.topic == "fractuvision/v1/test-site/unit-1/result",
            "{}",
            m.topic
        );
    }
    let results = sub.on("/result");
    let broken = results
        .iter()
        .find(|m| !m.json["error"].is_null())
        .expect("the truncated file's result");
    assert_eq!(broken.json["error"]["code"], "truncated");
    // File names stay on the device: the fleet sees a pseudonym, in the message too.
    let pseudonym = broken.json["source"]["name"].as_str().unwrap();
    assert!(
        pseudonym.starts_with("file-") && pseudonym.ends_with(".jpg"),
        "{pseudonym}"
    );
    let message = broken.json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(pseudonym) && !message.contains("broken"),
        "{message}"
    );
    for m in &results {
        let name = m.json["source"]["name"].as_str().unwrap();
        assert!(
            name.starts_with("file-") && !["a.jpg", "b.jpg", "broken.jpg"].contains(&name),
            "{}",
            m.json
        );
    }

    // Local results: the done files with result JSON and overlay, the quarantined one with
    // its error; the same ids as published.
    let done = d.done_results();
    assert_eq!(done.len(), 2);
    assert!(d.watch.join("done/a.jpg").is_file());
    assert!(d.watch.join("done/a.jpg.overlay.png").is_file());
    // b.jpg (1760×2140) was read from a half-scale decode (`reduced_decode`): its overlay
    // is still the whole radiograph.
    for name in ["a.jpg", "b.jpg"] {
        let overlay = image::open(d.watch.join(format!("done/{name}.overlay.png"))).unwrap();
        let original = image::open(d.watch.join(format!("done/{name}"))).unwrap();
        assert_eq!(
            (overlay.width(), overlay.height()),
            (original.width(), original.height()),
            "{name}"
        );
    }
    assert!(d.watch.join("quarantine/broken.jpg").is_file());
    assert_eq!(d.quarantined().len(), 1);
    let mut local = ids(&done);
    local.extend(ids(&d.quarantined()));
    assert_eq!(local, sub.result_ids());

    let hb = &sub.on("/heartbeat")[0].json;
    assert_valid_as("heartbeat", hb);
    for k in [
        "uptime_s",
        "outbox_depth",
        "processed",
        "failed",
        "last_error",
        "models",
        "interval_s",
    ] {
        assert!(hb.get(k).is_some(), "heartbeat lacks {k}: {hb}");
    }

    let status = d.stop("TERM");
    assert!(status.success(), "SIGTERM must exit 0: {status:?}");
    let statuses = sub.on("/status");
    assert_eq!(statuses.first().unwrap().json["state"], "online");
    for m in &statuses {
        assert_valid_as("status", &m.json);
    }
    wait_until("the offline status", T, || {
        sub.on("/status")
            .last()
            .is_some_and(|m| m.json["state"] == "offline" && m.json["reason"] == "shutdown")
    });
    assert_eq!(d.outbox_depth(), 0, "everything acknowledged");
}

#[test]
fn broker_outage_queues_on_disk_then_delivers_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&tmp.path().join("broker"), free_port());
    // A persistent session: messages for it are kept while it is away.
    let sub = Subscriber::start(broker.port, "test-sub-2");
    let d = Daemon::start(tmp.path(), Some(&broker.url()), &[]);
    d.drop_file(&sample("IMG0002322.jpg"), "first.jpg");
    wait_until("the first result", T, || sub.on("/result").len() == 1);

    broker.stop();
    let names = ["o1.jpg", "o2.jpg", "o3.jpg", "o4.jpg"];
    for (i, n) in names.iter().enumerate() {
        let src = [
            "IMG0000429.jpg",
            "IMG0002296.jpg",
            "IMG0002941.jpg",
            "IMG0003297.jpg",
        ][i];
        d.drop_file(&sample(src), n);
    }
    wait_until("four results processed offline", T, || {
        d.done_results().len() == 5
    });
    assert_eq!(
        d.outbox_depth(),
        4,
        "queued on disk while the broker is down"
    );
    broker.restart();
    wait_until("all results after the outage", T, || {
        sub.result_ids() == ids(&d.done_results())
    });
    wait_until("the outbox to drain", T, || d.outbox_depth() == 0);
    for m in sub.on("/result") {
        assert_valid(&m.json);
    }
}

#[test]
fn sigkill_then_restart_delivers_the_queue_and_last_will_fires() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    // No broker yet: everything queues.
    let mut d = Daemon::start(tmp.path(), Some(&format!("mqtt://127.0.0.1:{port}")), &[]);
    for (n, src) in [
        ("k1.jpg", "IMG0002628.jpg"),
        ("k2.jpg", "IMG0003733.jpg"),
        ("k3.jpg", "IMG0004062.jpg"),
    ] {
        d.drop_file(&sample(src), n);
    }
    // The outbox is written before the local result: wait for both, or the kill can land
    // between them (seen under load) and the local copy below would lack the last one.
    wait_until("three results queued and written locally", T, || {
        d.outbox_depth() == 3 && ids(&d.done_results()).len() == 3
    });
    let _ = d.stop("KILL");
    let queued = ids(&d.done_results());
    assert_eq!(queued.len(), 3);

    let broker = Broker::start(&tmp.path().join("broker"), port);
    let sub = Subscriber::start(port, "test-sub-3");
    let mut d = Daemon::start(tmp.path(), Some(&broker.url()), &[]);
    wait_until("the queued results after the restart", T, || {
        sub.result_ids() == queued
    });
    wait_until("the outbox to drain", T, || d.outbox_depth() == 0);

    // A late subscriber gets the retained status, online.
    let late = Subscriber::start(port, "test-sub-late");
    wait_until("the retained status", T, || {
        late.on("/status")
            .iter()
            .any(|m| m.retain && m.json["state"] == "online")
    });
    // Killed without a goodbye: the broker publishes the last will (keep-alive 5 s).
    let _ = d.stop("KILL");
    wait_until("the last will", T, || {
        sub.on("/status")
            .last()
            .is_some_and(|m| m.json["state"] == "offline" && m.json["reason"] == "connection lost")
    });
}

#[test]
fn runs_without_a_broker_writing_local_results() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path(), None, &[]);
    d.drop_file(&sample("IMG0002588.jpg"), "local.jpg");
    wait_until("the local result", T, || d.done_results().len() == 1);
    assert_valid(&d.done_results()[0]);
    assert_eq!(
        d.outbox_depth(),
        0,
        "no outbox without a broker to drain it"
    );
    assert!(d.stop("TERM").success());
}

#[test]
fn tls_with_username_and_password() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("broker");
    std::fs::create_dir_all(&dir).unwrap();
    fv_e2e::make_certs(&dir, false);
    let ok = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(dir.join("passwd"))
        .args(["unit-1", "s3cret"])
        .status()
        .expect("mosquitto_passwd (package mosquitto)")
        .success();
    assert!(ok);
    let (tls_port, plain_port) = (free_port(), free_port());
    let d = dir.display();
    let conf = format!(
        "per_listener_settings true\n\
         listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
         allow_anonymous false\npassword_file {d}/passwd\n\
         listener {plain_port} 127.0.0.1\nallow_anonymous true\n"
    );
    let broker = Broker::start_with(&dir, plain_port, &conf);
    let sub = Subscriber::start(broker.port, "test-sub-tls");
    let config = tmp.path().join("fv-edge.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nurl = \"mqtts://127.0.0.1:{tls_port}\"\nusername = \"unit-1\"\npassword_file = \"{d}/pw\"\nca_file = \"{d}/ca.pem\"\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
    let d = Daemon::start_with_config(tmp.path(), &config);
    d.drop_file(&sample("IMG0002588.jpg"), "tls.jpg");
    wait_until("the result over TLS", T, || sub.on("/result").len() == 1);
    assert_valid(&sub.on("/result")[0].json);

    // A wrong password is refused by the broker: results stay queued.
    let tmp2 = tempfile::tempdir().unwrap();
    let config2 = tmp2.path().join("fv-edge.toml");
    std::fs::write(
        &config2,
        format!(
            "[mqtt]\nurl = \"mqtts://127.0.0.1:{tls_port}\"\nusername = \"unit-1\"\npassword = \"wrong\"\nca_file = \"{}/ca.pem\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let d2 = Daemon::start_with_config(tmp2.path(), &config2);
    d2.drop_file(&sample("IMG0002588.jpg"), "refused.jpg");
    wait_until("the refused result to be queued", T, || {
        d2.outbox_depth() == 1
    });
    // Refused again and again, it backs off (up to 5 s) instead of spinning: over 8 s the
    // daemon uses little CPU, and says what is wrong once.
    let cpu0 = cpu_seconds(d2.child.id());
    std::thread::sleep(Duration::from_secs(8));
    let cpu = cpu_seconds(d2.child.id()) - cpu0;
    assert!(cpu < 1.5, "{cpu:.2} s of CPU in 8 s while refused");
    assert_eq!(d2.outbox_depth(), 1);
    assert_eq!(sub.on("/result").len(), 1);
    let log = std::fs::read_to_string(tmp2.path().join("fv-edge.log")).unwrap();
    let refusals = log.matches("refused the connection").count();
    assert_eq!(refusals, 1, "logged once, not per retry:\n{log}");
    assert!(log.contains("username, password"), "{log}");
}

/// User plus system CPU time of a process, from /proc/PID/stat (clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}
