//! fv-fleet against a real Mosquitto, with SQLite and with a PostgreSQL started from Debian's
//! packages: results delivered twice are stored once; nothing is lost across `kill -9` of the
//! ingester (also in the middle of a burst) or a broker restart; the API answers from the
//! store. Hostile messages (2 MiB, a NUL in an id, an 8 kB id, another site's name) are stored
//! as `rejected` and nothing after them waits; SIGTERM ends the ingester promptly.

mod common;

use common::{publish, result, wait_until, Broker, Fleet, Postgres};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const P: &str = "fractuvision/v1";

fn topic(site: &str, device: &str, kind: &str) -> String {
    format!("{P}/{site}/{device}/{kind}")
}

fn results(n: std::ops::Range<usize>, tag: &str) -> Vec<(String, String, bool)> {
    n.map(|i| {
        let (site, device) = if i % 2 == 0 {
            ("clinic-a", "unit-1")
        } else {
            ("clinic-b", "unit-2")
        };
        let finding = ["fracture", "suspicious", "no_fracture"][i % 3];
        let at = jiff::Timestamp::now().to_string();
        (
            topic(site, device, "result"),
            result(&format!("{tag}-{i}"), site, device, finding, &at),
            false,
        )
    })
    .collect()
}

fn stored(fleet: &Fleet, token: Option<&str>) -> i64 {
    fleet.json("/api/stats", token)["results"].as_i64().unwrap()
}

fn all_ids(fleet: &Fleet, token: Option<&str>) -> Vec<String> {
    let mut ids = Vec::new();
    for page in 0.. {
        let v = fleet.json(
            &format!("/api/results?limit=1000&order=asc&offset={}", page * 1000),
            token,
        );
        let got = v.as_array().unwrap();
        ids.extend(got.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        if got.len() < 1000 {
            break;
        }
    }
    ids
}

fn wait_stored(fleet: &Fleet, token: Option<&str>, n: i64) {
    common::wait_until(
        &format!("{n} results stored"),
        Duration::from_secs(60),
        || stored(fleet, token) >= n,
    );
}

/// The whole story, on one database.
fn survives_everything(db: &str, token: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("broker"), common::free_port());
    let extra: Vec<&str> = match token {
        Some(t) => vec!["--site-zone", "clinic-b=Asia/Tokyo", "--token", t],
        None => vec!["--site-zone", "clinic-b=Asia/Tokyo"],
    };
    let mut fleet = Fleet::start(dir.path(), &broker.url(), db, &extra);

    // Units come online (retained status), beat, and deliver 20 results, each twice.
    let mut first = vec![
        (
            topic("clinic-a", "unit-1", "status"),
            r#"{"state":"online","site":"clinic-a","device":"unit-1","version":"0.1.0",
                "models":[],"heartbeat_s":10,"ts":"2026-12-05T08:00:00Z"}"#
                .into(),
            true,
        ),
        (
            topic("clinic-a", "unit-1", "heartbeat"),
            r#"{"ts":"2026-12-05T08:00:01Z","uptime_s":1,"interval_s":10,"outbox_depth":3,
                "processed":5,"failed":0}"#
                .into(),
            false,
        ),
        (
            topic("clinic-a", "unit-1", "result"),
            "not json".into(),
            false,
        ),
    ];
    let batch = results(0..20, "a");
    first.extend(batch.iter().cloned());
    first.extend(batch.iter().cloned());
    // Published last on the same session, so delivered after every duplicate before it.
    first.extend(results(0..1, "sentinel"));
    publish(broker.port, "unit-pub-1", &first);
    wait_until("the sentinel stored", Duration::from_secs(60), || {
        all_ids(&fleet, token).contains(&"sentinel-0".to_owned())
    });
    // Duplicates (QoS 1 delivers at least once) are stored once.
    let stats = fleet.json("/api/stats", token);
    assert_eq!(stats["results"], 21, "{stats}");
    assert_eq!(stats["rejected"], 1, "{stats}");

    // The ingester dies in the middle of a burst: once it has stored the burst's first 100
    // (waited for), while the other 300 are being published. What it had not stored, it had
    // not acknowledged, and the broker delivers it again.
    let burst = results(21..421, "b");
    let port = broker.port;
    publish(port, "unit-pub-2", &burst[..100]);
    wait_stored(&fleet, token, 121);
    let rest = burst[100..].to_vec();
    let publisher = std::thread::spawn(move || publish(port, "unit-pub-2", &rest));
    fleet.kill9();
    publisher.join().unwrap();
    // More arrive while it is down; then the broker restarts (sessions kept on disk).
    publish(broker.port, "unit-pub-3", &results(421..431, "c"));
    broker.stop();
    broker.restart();
    publish(broker.port, "unit-pub-4", &results(431..441, "d"));
    publish(broker.port, "unit-pub-4", &results(441..442, "sentinel"));
    let fleet2 = Fleet::start(dir.path(), &broker.url(), db, &extra);
    wait_until("the last sentinel stored", Duration::from_secs(60), || {
        all_ids(&fleet2, token).contains(&"sentinel-441".to_owned())
    });
    wait_stored(&fleet2, token, 442);
    let ids = all_ids(&fleet2, token);
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(
        (ids.len(), unique.len()),
        (442, 442),
        "fleet log:\n{}\nbroker log:\n{}",
        fleet2.log(),
        broker.log()
    );

    // Counts per site and day add up; clinic-b counts by Tokyo's day.
    let counts = fleet2.json("/api/counts?days=3", token);
    let total: i64 = counts
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            ["fracture", "suspicious", "no_fracture", "failed"]
                .iter()
                .map(|k| c[k].as_i64().unwrap())
                .sum::<i64>()
        })
        .sum();
    assert_eq!(total, 442, "{counts}");
    let sites = fleet2.json("/api/sites", token);
    let tokyo = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::get("Asia/Tokyo").unwrap())
        .date()
        .to_string();
    assert!(
        sites
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["site"] == "clinic-b"
                && s["zone"] == "Asia/Tokyo"
                && s["today"] == tokyo.as_str()),
        "{sites}"
    );
    let per_site = fleet2.json("/api/results?site=clinic-b&limit=1000", token);
    assert_eq!(per_site.as_array().unwrap().len(), 221);
    let csv = fleet2.get("/api/counts?format=csv", token).1;
    assert!(
        csv.starts_with("site,day,fracture,suspicious,no_fracture,not_applicable,failed"),
        "{csv}"
    );

    // One result by id: as sent, less the file name.
    let one = fleet2.json("/api/results/a-3", token);
    assert_eq!(one["id"], "a-3");
    assert_eq!(one["source"]["kind"], "file");
    assert!(one["source"].get("name").is_none(), "{one}");
    assert_eq!(fleet2.get("/api/results/nope", token).0, 404);

    // The unit: online, its heartbeat, its uptime.
    let units = fleet2.json("/api/units", token);
    let u1 = units
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["device"] == "unit-1")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(u1["state"], "online", "{units}");
    assert_eq!(u1["outbox_depth"], 3, "{units}");
    let up = fleet2.json("/api/units/clinic-a/unit-1/uptime", token);
    assert!(up["online_fraction"].as_f64().unwrap() > 0.0, "{up}");
    let outbox = fleet2.json("/api/units/clinic-a/unit-1/outbox", token);
    assert_eq!(outbox[0]["outbox_depth"], 3, "{outbox}");

    // Read-only, behind the token when there is one.
    if token.is_some() {
        assert_eq!(fleet2.get("/api/stats", None).0, 401);
        assert_eq!(fleet2.get("/api/stats", Some("wrong")).0, 401);
    }
    // The page and its settings are served without it.
    let (status, page) = fleet2.get("/", None);
    assert_eq!(status, 200);
    assert!(page.contains("FractuVision fleet"));
    let cfg: Value = serde_json::from_str(&fleet2.get("/config.json", None).1).unwrap();
    assert_eq!(cfg["history"], "api/");
    assert_eq!(cfg["token_required"], token.is_some());
}

#[test]
fn sqlite_loses_nothing_and_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.sqlite");
    survives_everything(db.to_str().unwrap(), Some("t0ken"));
}

#[test]
fn postgres_loses_nothing_and_counts_once() {
    let Some(pg) = Postgres::start() else {
        return;
    };
    survives_everything(&pg.url(), None);
}

#[test]
fn bad_settings_are_refused_with_the_fix() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fv-fleet"))
        .args(["--listen", "0.0.0.0:0", "--db", "/nonexistent/dir/x.sqlite"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--token"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fv-fleet"))
        .args([
            "--db",
            "/nonexistent/dir/x.sqlite",
            "--mqtt",
            "mqtt://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("/nonexistent/dir/x.sqlite"), "{err}");
}

#[test]
fn the_load_generator_measures_what_was_stored() {
    // `fv-fleet load` (BENCHMARKS.md) kept working: a few seconds of 5 units.
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"), common::free_port());
    let db = dir.path().join("fleet.sqlite");
    let fleet = Fleet::start(dir.path(), &broker.url(), db.to_str().unwrap(), &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fv-fleet"))
        .args(["load", "--mqtt", &broker.url(), "--api", &fleet.api])
        .args(["--units", "5", "--rate", "4", "--duration", "3s"])
        .args(["--drain-timeout", "30s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(&text).unwrap();
    let acked = summary["acked_by_broker"].as_i64().unwrap();
    assert!(acked >= 40, "{summary}");
    assert_eq!(summary["stored"].as_i64().unwrap(), acked, "{summary}");
    assert!(summary["lag_ms"]["p50"].as_i64().is_some(), "{summary}");
    assert_eq!(summary["database"], "sqlite");
}

#[test]
fn ingesters_in_a_share_group_split_the_stream_and_store_it_once() {
    // A fleet that outgrows one ingester: two, sharing the subscription, one PostgreSQL.
    let Some(pg) = Postgres::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"), common::free_port());
    let a = Fleet::start(
        dir.path(),
        &broker.url(),
        &pg.url(),
        &["--client-id", "ingest-a", "--share-group", "fleet"],
    );
    let b = Fleet::start(
        dir.path(),
        &broker.url(),
        &pg.url(),
        &["--client-id", "ingest-b", "--share-group", "fleet"],
    );
    publish(broker.port, "unit-pub", &results(0..200, "s"));
    // Every message is stored once: the count reaches 200, and two ingesters taking the
    // same message would show as a duplicate id or a larger count, not a smaller one.
    wait_stored(&a, None, 200);
    let ids = all_ids(&b, None);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 200);
    assert_eq!(ids.len(), 200);
    // Both took part.
    for f in [&a, &b] {
        assert!(f.log().contains("stored a batch"), "{}", f.log());
    }
}

/// What a misbehaving or hostile unit can publish, then five ordinary results.
fn hostile_then_ordinary(db: &str) {
    let dir = tempfile::tempdir().unwrap();
    // A broker without `message_size_limit`, as a misconfigured one is: the 2 MiB message
    // reaches fv-fleet, which must not choke on it.
    let port = common::free_port();
    let broker_dir = dir.path().join("broker");
    let broker = Broker::start_with(
        &broker_dir,
        port,
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest file {}/mosquitto.log\n",
            broker_dir.display()
        ),
    );
    let mut fleet = Fleet::start(dir.path(), &broker.url(), db, &[]);
    let at = jiff::Timestamp::now().to_string();
    let huge = format!(
        r#"{{"id":"huge","processed_at":"{at}","pad":"{}"}}"#,
        "x".repeat(2 << 20)
    );
    let nul = result("a\u{0}b", "clinic-a", "unit-1", "fracture", &at);
    let long = result(&"i".repeat(8 << 10), "clinic-a", "unit-1", "fracture", &at);
    // A unit of clinic-a writing into clinic-b's history.
    let impostor = result("imp-1", "clinic-b", "unit-9", "fracture", &at);
    let mut messages = vec![
        (topic("clinic-a", "unit-1", "result"), huge, false),
        (topic("clinic-a", "unit-1", "result"), nul, false),
        (topic("clinic-a", "unit-1", "result"), long, false),
        (topic("clinic-a", "unit-1", "result"), impostor, false),
    ];
    messages.extend((0..5).map(|i| {
        (
            topic("clinic-a", "unit-1", "result"),
            result(&format!("ok-{i}"), "clinic-a", "unit-1", "no_fracture", &at),
            false,
        )
    }));
    publish(broker.port, "hostile-unit", &messages);
    wait_stored(&fleet, None, 5);
    common::wait_until("four rejected", Duration::from_secs(60), || {
        fleet.json("/api/stats", None)["rejected"].as_i64() == Some(4)
    });
    let mut ids = all_ids(&fleet, None);
    ids.sort();
    assert_eq!(
        ids,
        ["ok-0", "ok-1", "ok-2", "ok-3", "ok-4"],
        "{}",
        fleet.log()
    );
    let sites = fleet.json("/api/counts?days=1", None);
    assert!(
        sites
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["site"] == "clinic-a"),
        "nothing counted for clinic-b: {sites}"
    );
    let started = std::time::Instant::now();
    fleet.stop();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?}",
        started.elapsed()
    );
}

#[test]
fn sqlite_stores_every_ordinary_result_after_hostile_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.sqlite");
    hostile_then_ordinary(db.to_str().unwrap());
}

#[test]
fn postgres_stores_every_ordinary_result_after_hostile_ones() {
    let Some(pg) = Postgres::start() else {
        return;
    };
    hostile_then_ordinary(&pg.url());
}

#[test]
fn a_registry_of_units_keeps_strangers_out_of_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"), common::free_port());
    let registry = dir.path().join("units.txt");
    std::fs::write(&registry, "# site/device\nclinic-a/unit-1\n").unwrap();
    let db = dir.path().join("fleet.sqlite");
    let fleet = Fleet::start(
        dir.path(),
        &broker.url(),
        db.to_str().unwrap(),
        &["--units", registry.to_str().unwrap()],
    );
    let at = jiff::Timestamp::now().to_string();
    publish(
        broker.port,
        "units",
        &[
            (
                topic("clinic-b", "unit-2", "result"),
                result("stranger", "clinic-b", "unit-2", "fracture", &at),
                false,
            ),
            (
                topic("clinic-a", "unit-1", "result"),
                result("known", "clinic-a", "unit-1", "fracture", &at),
                false,
            ),
        ],
    );
    wait_stored(&fleet, None, 1);
    common::wait_until("the stranger rejected", Duration::from_secs(60), || {
        fleet.json("/api/stats", None)["rejected"].as_i64() == Some(1)
    });
    assert_eq!(all_ids(&fleet, None), ["known"]);
    let units = fleet.json("/api/units", None);
    assert!(
        units
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["site"] == "clinic-a"),
        "{units}"
    );
}

#[test]
fn over_tls_with_a_client_certificate_to_a_broker_that_asks_for_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("broker");
    std::fs::create_dir_all(&dir).unwrap();
    fv_e2e::make_certs(&dir, true);
    let (tls_port, plain_port) = (common::free_port(), common::free_port());
    let d = dir.display();
    let conf = format!(
        "per_listener_settings true\n\
         listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
         require_certificate true\nallow_anonymous true\n\
         listener {plain_port} 127.0.0.1\nallow_anonymous true\n"
    );
    let broker = Broker::start_with(&dir, plain_port, &conf);
    let db = tmp.path().join("fleet.sqlite");
    let url = format!("mqtts://127.0.0.1:{tls_port}");
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("client.pem"),
        dir.join("client.key"),
    );
    let fleet = Fleet::start(
        tmp.path(),
        &url,
        db.to_str().unwrap(),
        &[
            "--ca-file",
            ca.to_str().unwrap(),
            "--client-cert",
            cert.to_str().unwrap(),
            "--client-key",
            key.to_str().unwrap(),
        ],
    );
    publish(broker.port, "unit-plain", &results(0..3, "tls"));
    wait_stored(&fleet, None, 3);
}

/// A unit's result with a probability (`None` for `not_applicable`).
fn reading(id: &str, device: &str, finding: &str, p: Option<f64>, at: &str) -> String {
    let mut v: Value = serde_json::from_str(&result(id, "clinic-a", device, finding, at)).unwrap();
    match p {
        Some(p) => v["fracture_probability"] = p.into(),
        None => {
            v.as_object_mut().unwrap().remove("fracture_probability");
        }
    }
    v.to_string()
}

#[test]
fn the_drift_watch_flags_a_unit_whose_stream_shifts_and_not_a_steady_one() {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/efficientnet-lite0-fracatlas.json");
    let expected = fv_core::manifest::Manifest::from_path(&manifest)
        .unwrap()
        .expected
        .expect("the shipped classifier carries its validation behaviour");
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"), common::free_port());
    let db = dir.path().join("fleet.sqlite");
    let fleet = Fleet::start(
        dir.path(),
        &broker.url(),
        db.to_str().unwrap(),
        &["--expect", manifest.to_str().unwrap()],
    );
    let at = jiff::Timestamp::now().to_string();
    // 120 images a day at FracAtlas' prevalence: the steady unit reads them as validation says
    // (each class's rates and mean probability); after a plate change the drifting one marks
    // nine in ten of those it reads, sure of each, and refuses a sixth as out of scope. (At
    // `suspicious`, set for 95 % sensitivity, an ordinary day already marks about half, up to
    // two thirds at a prevalence of 0.4: fewer images would leave nine in ten within reach.)
    let n = 120usize;
    let (pi, pos, neg) = (0.18, &expected.fractured, &expected.not_fractured);
    let count = |a: f64, b: f64| ((pi * a + (1.0 - pi) * b) * n as f64).round() as usize;
    let fractures = count(pos.fracture, neg.fracture);
    let marked = count(pos.positive, neg.positive);
    let mean = pi * pos.mean_probability + (1.0 - pi) * neg.mean_probability;
    let mut messages = Vec::new();
    for i in 0..n {
        let finding = match i {
            i if i < fractures => "fracture",
            i if i < marked => "suspicious",
            _ => "no_fracture",
        };
        messages.push((
            topic("clinic-a", "steady", "result"),
            reading(&format!("steady-{i}"), "steady", finding, Some(mean), &at),
            false,
        ));
        let (finding, p) = match i {
            i if i < n / 6 => ("not_applicable", None),
            i if i < n * 9 / 10 => ("suspicious", Some(0.7)),
            _ => ("no_fracture", Some(0.1)),
        };
        messages.push((
            topic("clinic-a", "drifting", "result"),
            reading(&format!("drifting-{i}"), "drifting", finding, p, &at),
            false,
        ));
    }
    publish(broker.port, "units", &messages);
    wait_stored(&fleet, None, 2 * n as i64);
    let report = fleet.json("/api/drift?days=2", None);
    let day = |device: &str| -> Value {
        report["days"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == device)
            .unwrap_or_else(|| panic!("no {device} in {report}"))
            .clone()
    };
    let steady = day("steady");
    assert_eq!(steady["flagged"], false, "{steady}");
    assert_eq!(steady["read"], n);
    let drifting = day("drifting");
    assert_eq!(drifting["flagged"], true, "{drifting}");
    let flags: Vec<&str> = drifting["judgement"]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for f in ["positive_rate", "mean_probability", "not_applicable_share"] {
        assert!(flags.contains(&f), "{f} not among {flags:?}");
    }
    // Flagged days come first, with the figures a person needs to act.
    assert_eq!(report["days"][0]["device"], "drifting");
    let j = &drifting["judgement"]["positive_rate"];
    assert!(j["value"].as_f64().unwrap() > j["expected"]["high"].as_f64().unwrap());

    // Without --expect the watch is off and says how to turn it on.
    let plain = Fleet::start(
        dir.path(),
        &broker.url(),
        dir.path().join("other.sqlite").to_str().unwrap(),
        &["--client-id", "fleet-plain"],
    );
    let off = plain.json("/api/drift", None);
    assert_eq!(off["enabled"], false, "{off}");
    assert!(off["why"].as_str().unwrap().contains("--expect"), "{off}");
}
