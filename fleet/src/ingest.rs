//! The ingester: a persistent MQTT session (QoS 1, its own client id) on the units' topics,
//! each message stored before the broker is told it arrived. A message the fleet has not
//! acknowledged is delivered again, after a crash of the ingester or a broker restart, so
//! nothing is lost; a message delivered twice is stored once (results by `id`, statuses and
//! heartbeats by unit and timestamp).

use crate::settings::{Settings, Zones};
use crate::store::{
    now_ms, FindingKey, HeartbeatRow, Record, RejectedRow, ResultRow, StatusRow, Store, UnitState,
};
use fv_core::result::RESULT_SCHEMA;
use fv_core::wire::{
    self, filters, parse_topic, HeartbeatMessage, Kind, ResultMessage, StatusMessage,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use serde::Deserialize;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The largest batch written in one transaction.
const BATCH: usize = 500;

/// The largest message stored as what it says. Set the broker's limit to it (Mosquitto:
/// `message_size_limit 1048576`), so that a larger one never travels; one that still arrives
/// is stored as `rejected` and acknowledged.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// What the client accepts: anything MQTT can carry (its packets are at most 256 MiB), so
/// that no message can fail to decode, be left unacknowledged and come back on every
/// reconnect. The broker's `message_size_limit` bounds the memory one message takes.
pub const MAX_PACKET_BYTES: usize = 268_435_460;

/// The longest id, site, device, timestamp or code stored.
const MAX_FIELD_CHARS: usize = 128;

/// How much of a rejected message is kept.
const MAX_REJECTED_PAYLOAD: usize = 4096;

/// Text as the database may store it: a NUL (PostgreSQL refuses it in text) written as
/// `\u0000`, at most `max` characters (the cut marked).
fn storable(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .collect::<String>()
        .replace('\0', "\\u0000");
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

/// A field that names or keys a row (id, site, device, timestamp, code): 1 to
/// [`MAX_FIELD_CHARS`] characters, none of them a control character.
fn key_field<'a>(what: &str, v: &'a str) -> Result<&'a str, String> {
    if v.is_empty() || v.chars().count() > MAX_FIELD_CHARS || v.chars().any(char::is_control) {
        Err(format!(
            "{what} `{}` is not 1 to {MAX_FIELD_CHARS} printable characters",
            storable(v, 40)
        ))
    } else {
        Ok(v)
    }
}

/// A count as the database's signed integer.
fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Which units may write into the fleet's history: every unit (auto-enrolment), or those a
/// registry lists.
#[derive(Clone, Debug, Default)]
pub enum Admission {
    /// Any site and device that publishes is admitted.
    #[default]
    Any,
    /// Only these `(site, device)` pairs; others are stored as `rejected`.
    Registered(std::collections::BTreeSet<(String, String)>),
}

impl Admission {
    /// The registry file: one `SITE/DEVICE` a line, `#` comments.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Admission> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--units {}: cannot read: {e}", path.display()))?;
        let mut units = std::collections::BTreeSet::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (site, device) = line
                .split_once('/')
                .filter(|(s, d)| !s.is_empty() && !d.is_empty() && !d.contains('/'))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--units {} line {}: `{line}` is not SITE/DEVICE",
                        path.display(),
                        n + 1
                    )
                })?;
            units.insert((site.to_owned(), device.to_owned()));
        }
        Ok(Admission::Registered(units))
    }

    fn admits(&self, site: &str, device: &str) -> bool {
        match self {
            Admission::Any => true,
            Admission::Registered(u) => u.contains(&(site.to_owned(), device.to_owned())),
        }
    }
}

/// What the ingester checks a message against.
#[derive(Clone, Debug)]
pub struct Rules {
    /// The topic prefix.
    pub prefix: String,
    /// Each site's time zone (a result's day).
    pub zones: Zones,
    /// Which units are admitted.
    pub admission: Admission,
}

/// What to store for one message. Never fails: a message that cannot be read, is too large,
/// keys a row with text the database cannot hold, names another site or device than its
/// topic, or comes from a unit the registry does not list becomes a `Rejected` record naming
/// the topic and the reason (its payload escaped and cut to 4 KiB).
pub fn record(rules: &Rules, topic: &str, payload: &[u8], received_ms: i64) -> Record {
    let prefix = rules.prefix.as_str();
    let reject = |reason: String| {
        let kept = &payload[..payload.len().min(MAX_REJECTED_PAYLOAD)];
        Record::Rejected(RejectedRow {
            topic: storable(topic, 512),
            received_ms,
            reason: storable(&reason, 1024),
            payload: storable(&String::from_utf8_lossy(kept), MAX_REJECTED_PAYLOAD),
        })
    };
    if payload.len() > MAX_MESSAGE_BYTES {
        return reject(format!(
            "a message of {} bytes, over the {MAX_MESSAGE_BYTES} fv-fleet reads (set the broker's message_size_limit)",
            payload.len()
        ));
    }
    let Some((site, device, kind)) = parse_topic(prefix, topic) else {
        return reject(format!("not a unit topic under `{prefix}/SITE/DEVICE/`"));
    };
    if let Err(why) = key_field("site", site).and_then(|_| key_field("device", device)) {
        return reject(why);
    }
    if !rules.admission.admits(site, device) {
        return reject(format!(
            "unit {site}/{device} is not in the registry of units (--units)"
        ));
    }
    let (site, device) = (site.to_owned(), device.to_owned());
    if kind == Kind::Status && payload.is_empty() {
        // An empty retained status clears a decommissioned unit.
        return Record::Status(StatusRow {
            site,
            device,
            ts: format!("removed@{received_ms}"),
            state: UnitState::Removed,
            reason: None,
            version: None,
            models: None,
            received_ms,
        });
    }
    let zones = &rules.zones;
    match kind {
        Kind::Result => {
            let mut message: serde_json::Value = match serde_json::from_slice(payload) {
                Ok(v) => v,
                Err(e) => return reject(format!("result is not JSON: {e}")),
            };
            // Read from the parsed value by reference: no second parse, no copy.
            let r = match ResultMessage::deserialize(&message) {
                Ok(r) => r,
                Err(e) => return reject(format!("not a {RESULT_SCHEMA} message: {e}")),
            };
            if r.schema != RESULT_SCHEMA {
                return reject(format!(
                    "schema `{}`, not {RESULT_SCHEMA}",
                    storable(&r.schema, 40)
                ));
            }
            if let Err(why) = key_field("id", &r.id) {
                return reject(why);
            }
            for (what, said, topic_says) in
                [("site", &r.site, &site), ("device", &r.device, &device)]
            {
                if said != topic_says {
                    return reject(format!(
                        "published under {what} `{topic_says}` but its {what} is `{}`",
                        storable(said, 40)
                    ));
                }
            }
            let processed: jiff::Timestamp = match r.processed_at.parse() {
                Ok(t) => t,
                Err(e) => {
                    return reject(format!(
                        "processed_at `{}` is not an RFC 3339 time: {e}",
                        storable(&r.processed_at, 40)
                    ))
                }
            };
            // A clinic may name files after patients: the name stays at the unit.
            if let Some(source) = message.get_mut("source").and_then(|s| s.as_object_mut()) {
                source.remove("name");
            }
            let finding = if r.error.is_some() {
                FindingKey::Failed
            } else {
                FindingKey::from(r.finding)
            };
            Record::Result(ResultRow {
                id: r.id,
                day: zones.day(&site, processed),
                site,
                device,
                processed_ms: processed.as_millisecond(),
                finding,
                probability: r.fracture_probability.map(|p| p.get()),
                boxes: r.boxes.len() as i64,
                error: r.error.map(|e| storable(&e.code, MAX_FIELD_CHARS)),
                received_ms,
                // serde_json writes a NUL inside a string as \u0000: storable as it is.
                message: message.to_string(),
            })
        }
        Kind::Status => match serde_json::from_slice::<StatusMessage>(payload) {
            Ok(s) => {
                if let Err(why) = key_field("ts", &s.ts) {
                    return reject(format!("status: {why}"));
                }
                Record::Status(StatusRow {
                    site,
                    device,
                    ts: s.ts,
                    state: match s.state {
                        wire::UnitState::Online => UnitState::Online,
                        wire::UnitState::Offline => UnitState::Offline,
                    },
                    reason: s.reason.map(|r| storable(&r, 1024)),
                    version: Some(storable(&s.version, MAX_FIELD_CHARS)),
                    models: Some(serde_json::to_string(&s.models).expect("models are JSON")),
                    received_ms,
                })
            }
            Err(e) => reject(format!("status: {e}")),
        },
        Kind::Heartbeat => match serde_json::from_slice::<HeartbeatMessage>(payload) {
            Ok(h) => {
                if let Err(why) = key_field("ts", &h.ts) {
                    return reject(format!("heartbeat: {why}"));
                }
                Record::Heartbeat(HeartbeatRow {
                    site,
                    device,
                    ts: h.ts,
                    received_ms,
                    interval_s: Some(saturating_i64(h.interval_s)),
                    outbox_depth: Some(saturating_i64(h.outbox_depth)),
                    pacs_outbox_depth: h.pacs_outbox_depth.map(saturating_i64),
                    processed: Some(saturating_i64(h.processed)),
                    failed: Some(saturating_i64(h.failed)),
                    models: Some(serde_json::to_string(&h.models).expect("models are JSON")),
                })
            }
            Err(e) => reject(format!("heartbeat: {e}")),
        },
    }
}

/// What the database refused to hold, as a `rejected` row of its own.
fn refused(r: &Record, e: &sqlx::Error) -> Record {
    let (topic, received_ms, payload) = match r {
        Record::Result(r) => (
            format!("{}/{}/result", r.site, r.device),
            r.received_ms,
            r.message.clone(),
        ),
        Record::Status(s) => (
            format!("{}/{}/status", s.site, s.device),
            s.received_ms,
            s.ts.clone(),
        ),
        Record::Heartbeat(h) => (
            format!("{}/{}/heartbeat", h.site, h.device),
            h.received_ms,
            h.ts.clone(),
        ),
        Record::Rejected(r) => (r.topic.clone(), r.received_ms, r.payload.clone()),
    };
    Record::Rejected(RejectedRow {
        topic: storable(&topic, 512),
        received_ms,
        reason: storable(&format!("the database refused it: {e}"), 1024),
        payload: storable(&payload, MAX_REJECTED_PAYLOAD),
    })
}

/// Stores a batch: in one transaction, or, when the database refuses it, one record at a
/// time, so that a record it cannot hold is stored as `rejected` and nothing after it waits.
/// Fails only when the database takes nothing (it is down): then nothing is acknowledged.
pub async fn store_batch(store: &Store, records: &[Record]) -> Result<(), sqlx::Error> {
    let Err(e) = store.write(records).await else {
        return Ok(());
    };
    tracing::warn!(
        "a batch of {} was refused ({e}); storing one at a time",
        records.len()
    );
    for r in records {
        let one = std::slice::from_ref(r);
        if let Err(e) = store.write(one).await {
            let instead = refused(r, &e);
            if let Record::Rejected(row) = &instead {
                tracing::warn!("rejected a message on {}: {}", row.topic, row.reason);
            }
            // If even this cannot be written, the database is down: retry it all later.
            store.write(std::slice::from_ref(&instead)).await?;
        }
    }
    Ok(())
}

/// The client options: a persistent session (the broker keeps what arrives while the
/// ingester is away) and manual acknowledgement (a message is acknowledged once stored).
pub fn options(s: &Settings) -> MqttOptions {
    let mut o = MqttOptions::new(&s.client_id, &s.broker.host, s.broker.port);
    o.set_clean_session(false);
    o.set_manual_acks(true);
    o.set_keep_alive(Duration::from_secs(15));
    // Whatever arrives is decoded and then judged by `record` (see MAX_PACKET_BYTES).
    o.set_max_packet_size(MAX_PACKET_BYTES, 64 * 1024);
    if let Some((user, password)) = &s.credentials {
        o.set_credentials(user, password);
    }
    if let Some(tls) = &s.tls {
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Simple {
                ca: tls.ca.clone(),
                alpn: None,
                client_auth: tls.client.clone(),
            },
        ));
    }
    o
}

/// Runs until `shutdown` turns true: receives, stores in batches, acknowledges.
pub async fn run(store: Store, settings: Settings, mut shutdown: watch::Receiver<bool>) {
    // rumqttc's TLS is rustls without a chosen provider: ring, as fv-edge's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The request queue holds acknowledgements: larger than anything the broker can have in
    // flight to us, so that acknowledging never waits on the loop that sends them.
    let (client, mut eventloop) = AsyncClient::new(options(&settings), 4096);
    let (tx, mut rx) = mpsc::channel::<Publish>(1024);
    let writer_client = client.clone();
    let rules = Rules {
        prefix: settings.prefix.clone(),
        zones: settings.zones.clone(),
        admission: settings.admission.clone(),
    };
    let mut stop_writing = shutdown.clone();
    let writer = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let received = now_ms();
            let records: Vec<Record> = batch
                .iter()
                .map(|p| record(&rules, &p.topic, &p.payload, received))
                .collect();
            for r in &records {
                if let Record::Rejected(r) = r {
                    tracing::warn!("rejected a message on {}: {}", r.topic, r.reason);
                }
            }
            // Until the database takes the batch, nothing is acknowledged: on a crash the
            // broker sends it all again.
            // A shutdown while the database is down leaves the batch unacknowledged: the
            // broker delivers it again to the next ingester.
            let stored = loop {
                match store_batch(&store, &records).await {
                    Ok(()) => {
                        tracing::debug!("stored a batch of {}", records.len());
                        backoff = Duration::from_millis(200);
                        break true;
                    }
                    Err(e) => {
                        tracing::error!("database write failed (retrying in {backoff:?}): {e}");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop_writing.changed() => break false,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            };
            if !stored {
                break;
            }
            for p in &batch {
                if p.qos != QoS::AtMostOnce {
                    if let Err(e) = writer_client.ack(p).await {
                        tracing::warn!("acknowledging {}: {e}", p.topic);
                    }
                }
            }
        }
    });

    let topics = filters(&settings.prefix, settings.share_group.as_deref());
    let mut backoff = Duration::from_millis(500);
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = shutdown.changed() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(500);
                tracing::info!(
                    "connected to {} (session {})",
                    settings.broker,
                    if ack.session_present {
                        "resumed"
                    } else {
                        "new"
                    }
                );
                if !ack.session_present {
                    let subs = topics
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                    if let Err(e) = client.subscribe_many(subs).await {
                        tracing::error!("subscribe: {e}");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                tracing::info!("subscribed to {}", topics.join(", "));
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(p).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(
                    "broker {}: {e}; reconnecting in {backoff:?}",
                    settings.broker
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    // Store and acknowledge what arrived; then leave (the session stays at the broker).
    drop(tx);
    let _ = writer.await;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(e) = eventloop.poll().await {
            if matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A complete result message with `changes` applied on top.
    fn result(changes: serde_json::Value) -> Vec<u8> {
        let mut m = serde_json::json!({"schema": "fractuvision.result/1", "id": "r",
            "site": "a", "device": "b", "source": {"kind": "file", "name": "SMITH_JOHN.jpg"},
            "study": null, "captured_at": null, "processed_at": "2026-12-04T20:00:00Z",
            "models": [], "boxes": [],
            "timing_ms": {"decode": 1.0, "preprocess": 1.0, "classify": 1.0, "detect": null,
                "total": 3.0}});
        for (k, v) in changes.as_object().unwrap() {
            m[k] = v.clone();
        }
        m.to_string().into_bytes()
    }

    #[test]
    fn a_result_loses_its_file_name_and_gets_its_site_day() {
        let rules = Rules {
            prefix: "fractuvision/v1".into(),
            zones: Zones::parse("UTC", &[("clinic-a".into(), "Asia/Tokyo".into())]).unwrap(),
            admission: Admission::Any,
        };
        let b = serde_json::json!({"x1": 1.0, "y1": 2.0, "x2": 3.0, "y2": 4.0, "score": 0.5,
            "level": "definite"});
        let msg = result(
            serde_json::json!({"id": "r1", "site": "clinic-a", "device": "unit-1",
            "finding": "suspicious", "fracture_probability": 0.4, "boxes": [b, b]}),
        );
        let Record::Result(r) = record(&rules, "fractuvision/v1/clinic-a/unit-1/result", &msg, 7)
        else {
            panic!("not a result")
        };
        // 20:00 UTC is the next morning in Tokyo.
        assert_eq!(r.day, "2026-12-05");
        assert_eq!(
            (r.finding, r.boxes, r.probability),
            (FindingKey::Suspicious, 2, Some(0.4))
        );
        assert!(!r.message.contains("SMITH"), "{}", r.message);
        assert!(r.message.contains("\"kind\":\"file\""));
    }

    #[test]
    fn unreadable_messages_are_kept_as_rejected() {
        let mut rules = Rules {
            prefix: "fractuvision/v1".into(),
            zones: Zones::parse("UTC", &[]).unwrap(),
            admission: Admission::Any,
        };
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        let nul_id = result(serde_json::json!({"id": "a\u{0}b"}));
        let long_id = result(serde_json::json!({"id": "x".repeat(8192)}));
        let other_site = result(serde_json::json!({"site": "clinic-b"}));
        let bad_time = result(serde_json::json!({"processed_at": "yesterday"}));
        let mut no_time: serde_json::Value =
            serde_json::from_slice(&result(serde_json::json!({}))).unwrap();
        no_time.as_object_mut().unwrap().remove("processed_at");
        let no_time = no_time.to_string();
        let leak = result(serde_json::json!({"patient_name": "DOE^JOHN"}));
        let other_schema = result(serde_json::json!({"schema": "fractuvision.result/2"}));
        let renamed_heartbeat = br#"{"uptime_s":1,"interval":10,"outbox_depth":0,"processed":0,
            "failed":0,"ts":"2026-12-04T20:00:00Z"}"#;
        let bad_status = br#"{"state":"asleep","site":"a","device":"b","version":"1",
            "models":[],"heartbeat_s":10,"ts":"2026-12-04T20:00:00Z"}"#;
        for (topic, payload, why) in [
            ("fractuvision/v1/a/b/result", &big[..], "over the 1048576"),
            ("fractuvision/v1/a/b/result", &nul_id[..], "id `a\\u0000b`"),
            ("fractuvision/v1/a/b/result", &long_id[..], "not 1 to 128"),
            (
                "fractuvision/v1/a/b/result",
                &other_site[..],
                "its site is `clinic-b`",
            ),
            ("fractuvision/v1/a/b/result", &b"not json"[..], "not JSON"),
            (
                "fractuvision/v1/a/b/result",
                no_time.as_bytes(),
                "processed_at",
            ),
            (
                "fractuvision/v1/a/b/result",
                &bad_time[..],
                "not an RFC 3339",
            ),
            ("fractuvision/v1/a/b/result", &leak[..], "patient_name"),
            (
                "fractuvision/v1/a/b/result",
                &other_schema[..],
                "fractuvision.result/2",
            ),
            ("fractuvision/v1/a/b/heartbeat", b"[]", "heartbeat"),
            (
                "fractuvision/v1/a/b/heartbeat",
                &renamed_heartbeat[..],
                "interval_s",
            ),
            ("fractuvision/v1/a/b/status", &bad_status[..], "asleep"),
        ] {
            match record(&rules, topic, payload, 1) {
                Record::Rejected(r) => {
                    assert!(r.reason.contains(why), "{}", r.reason);
                    assert!(!r.payload.contains('\0') && r.payload.len() <= 3 * 4096 + 8);
                }
                other => panic!("{other:?}"),
            }
        }
        // A registry admits the units it lists and no other.
        rules.admission = Admission::Registered([("a".into(), "b".into())].into());
        let ok = result(serde_json::json!({}));
        assert!(matches!(
            record(&rules, "fractuvision/v1/a/b/result", &ok, 1),
            Record::Result(_)
        ));
        match record(&rules, "fractuvision/v1/a/c/result", &ok, 1) {
            Record::Rejected(r) => assert!(r.reason.contains("registry"), "{}", r.reason),
            other => panic!("{other:?}"),
        }
    }
}
