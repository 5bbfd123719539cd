//! The ingester: a persistent MQTT session (QoS 1, its own client id) on the units' topics,
//! each message stored before the broker is told it arrived. A message the fleet has not
//! acknowledged is delivered again, after a crash of the ingester or a broker restart, so
//! nothing is lost; a message delivered twice is stored once (results by `id`, statuses and
//! heartbeats by unit and timestamp).

use crate::settings::{Settings, Zones};
use crate::store::{
    now_ms, FindingKey, HeartbeatRow, Record, RejectedRow, ResultRow, StatusRow, Store, UnitState,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use serde::Deserialize;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The largest batch written in one transaction.
const BATCH: usize = 500;

/// The message kinds a unit publishes under `PREFIX/SITE/DEVICE/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Result,
    Status,
    Heartbeat,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Result, Kind::Status, Kind::Heartbeat];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Result => "result",
            Kind::Status => "status",
            Kind::Heartbeat => "heartbeat",
        }
    }
}

/// The topic filters the ingester subscribes to; in a shared subscription's group, each
/// message goes to one ingester of the group.
pub fn filters(prefix: &str, share_group: Option<&str>) -> Vec<String> {
    let share = share_group
        .map(|g| format!("$share/{g}/"))
        .unwrap_or_default();
    Kind::ALL
        .iter()
        .map(|k| format!("{share}{prefix}/+/+/{}", k.as_str()))
        .collect()
}

/// `(site, device, kind)` of a unit's topic, or None for anything else.
pub fn parse_topic<'a>(prefix: &str, topic: &'a str) -> Option<(&'a str, &'a str, Kind)> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let (site, device, kind) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || site.is_empty() || device.is_empty() {
        return None;
    }
    let kind = Kind::ALL.into_iter().find(|k| k.as_str() == kind)?;
    Some((site, device, kind))
}

#[derive(Deserialize)]
struct IncomingResult {
    id: String,
    processed_at: String,
    #[serde(default)]
    finding: Option<fv_core::result::Finding>,
    #[serde(default)]
    fracture_probability: Option<f64>,
    #[serde(default)]
    boxes: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    error: Option<IncomingError>,
}

#[derive(Deserialize)]
struct IncomingError {
    code: String,
}

#[derive(Deserialize)]
struct IncomingStatus {
    state: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    models: Option<serde_json::Value>,
    ts: String,
}

#[derive(Deserialize)]
struct IncomingHeartbeat {
    ts: String,
    #[serde(default)]
    interval_s: Option<i64>,
    #[serde(default)]
    outbox_depth: Option<i64>,
    #[serde(default)]
    pacs_outbox_depth: Option<i64>,
    #[serde(default)]
    processed: Option<i64>,
    #[serde(default)]
    failed: Option<i64>,
    #[serde(default)]
    models: Option<serde_json::Value>,
}

/// What to store for one message. Never fails: a message that cannot be read becomes a
/// `Rejected` record naming the topic and the reason.
pub fn record(
    prefix: &str,
    zones: &Zones,
    topic: &str,
    payload: &[u8],
    received_ms: i64,
) -> Record {
    let reject = |reason: String| {
        Record::Rejected(RejectedRow {
            topic: topic.to_owned(),
            received_ms,
            reason,
            payload: String::from_utf8_lossy(payload).into_owned(),
        })
    };
    let Some((site, device, kind)) = parse_topic(prefix, topic) else {
        return reject(format!("not a unit topic under `{prefix}/SITE/DEVICE/`"));
    };
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
    match kind {
        Kind::Result => {
            let mut message: serde_json::Value = match serde_json::from_slice(payload) {
                Ok(v) => v,
                Err(e) => return reject(format!("result is not JSON: {e}")),
            };
            // Read from the parsed value by reference: no second parse, no copy.
            let r = match IncomingResult::deserialize(&message) {
                Ok(r) => r,
                Err(e) => return reject(format!("not a fractuvision.result/1 message: {e}")),
            };
            let processed: jiff::Timestamp = match r.processed_at.parse() {
                Ok(t) => t,
                Err(e) => {
                    return reject(format!(
                        "processed_at `{}` is not an RFC 3339 time: {e}",
                        r.processed_at
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
                probability: r.fracture_probability.filter(|p| p.is_finite()),
                boxes: r.boxes.len() as i64,
                error: r.error.map(|e| e.code),
                received_ms,
                message: message.to_string(),
            })
        }
        Kind::Status => match serde_json::from_slice::<IncomingStatus>(payload) {
            Ok(s) => Record::Status(StatusRow {
                site,
                device,
                ts: s.ts,
                state: if s.state == "online" {
                    UnitState::Online
                } else {
                    UnitState::Offline
                },
                reason: s.reason,
                version: s.version,
                models: s.models.map(|m| m.to_string()),
                received_ms,
            }),
            Err(e) => reject(format!("status: {e}")),
        },
        Kind::Heartbeat => match serde_json::from_slice::<IncomingHeartbeat>(payload) {
            Ok(h) => Record::Heartbeat(HeartbeatRow {
                site,
                device,
                ts: h.ts,
                received_ms,
                interval_s: h.interval_s,
                outbox_depth: h.outbox_depth,
                pacs_outbox_depth: h.pacs_outbox_depth,
                processed: h.processed,
                failed: h.failed,
                models: h.models.map(|m| m.to_string()),
            }),
            Err(e) => reject(format!("heartbeat: {e}")),
        },
    }
}

/// The client options: a persistent session (the broker keeps what arrives while the
/// ingester is away) and manual acknowledgement (a message is acknowledged once stored).
pub fn options(s: &Settings) -> MqttOptions {
    let mut o = MqttOptions::new(&s.client_id, &s.broker.host, s.broker.port);
    o.set_clean_session(false);
    o.set_manual_acks(true);
    o.set_keep_alive(Duration::from_secs(15));
    // A result with many boxes is larger than rumqttc's 10 KiB default.
    o.set_max_packet_size(1 << 20, 64 * 1024);
    if let Some((user, password)) = &s.credentials {
        o.set_credentials(user, password);
    }
    o
}

/// Runs until `shutdown` turns true: receives, stores in batches, acknowledges.
pub async fn run(store: Store, settings: Settings, mut shutdown: watch::Receiver<bool>) {
    // The request queue holds acknowledgements: larger than anything the broker can have in
    // flight to us, so that acknowledging never waits on the loop that sends them.
    let (client, mut eventloop) = AsyncClient::new(options(&settings), 4096);
    let (tx, mut rx) = mpsc::channel::<Publish>(1024);
    let writer_client = client.clone();
    let prefix = settings.prefix.clone();
    let zones = settings.zones.clone();
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
                .map(|p| record(&prefix, &zones, &p.topic, &p.payload, received))
                .collect();
            for r in &records {
                if let Record::Rejected(r) = r {
                    tracing::warn!("rejected a message on {}: {}", r.topic, r.reason);
                }
            }
            // Until the database takes the batch, nothing is acknowledged: on a crash the
            // broker sends it all again.
            loop {
                match store.write(&records).await {
                    Ok(w) => {
                        tracing::debug!(?w, "stored a batch of {}", records.len());
                        backoff = Duration::from_millis(200);
                        break;
                    }
                    Err(e) => {
                        tracing::error!("database write failed (retrying in {backoff:?}): {e}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
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

    #[test]
    fn topics() {
        let p = "fractuvision/v1";
        assert_eq!(
            parse_topic(p, "fractuvision/v1/clinic-a/unit-1/result"),
            Some(("clinic-a", "unit-1", Kind::Result))
        );
        assert_eq!(parse_topic(p, "fractuvision/v1/a/b/other"), None);
        assert_eq!(parse_topic(p, "fractuvision/v1/a/b/result/x"), None);
        assert_eq!(parse_topic(p, "fractuvision/v2/a/b/result"), None);
        assert_eq!(filters(p, None)[0], "fractuvision/v1/+/+/result");
        assert_eq!(
            filters(p, Some("fleet"))[2],
            "$share/fleet/fractuvision/v1/+/+/heartbeat"
        );
    }

    #[test]
    fn a_result_loses_its_file_name_and_gets_its_site_day() {
        let zones = Zones::parse("UTC", &[("clinic-a".into(), "Asia/Tokyo".into())]).unwrap();
        let msg = br#"{"schema":"fractuvision.result/1","id":"r1","site":"clinic-a",
            "device":"unit-1","source":{"kind":"file","name":"SMITH_JOHN.jpg"},
            "processed_at":"2026-12-04T20:00:00Z","models":[],"timing_ms":{},
            "finding":"suspicious","fracture_probability":0.4,"boxes":[{}, {}]}"#;
        let Record::Result(r) = record(
            "fractuvision/v1",
            &zones,
            "fractuvision/v1/clinic-a/unit-1/result",
            msg,
            7,
        ) else {
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
        let zones = Zones::parse("UTC", &[]).unwrap();
        for (topic, payload, why) in [
            ("fractuvision/v1/a/b/result", &b"not json"[..], "not JSON"),
            (
                "fractuvision/v1/a/b/result",
                br#"{"id":"x"}"#,
                "processed_at",
            ),
            ("fractuvision/v1/a/b/heartbeat", b"[]", "heartbeat"),
        ] {
            match record("fractuvision/v1", &zones, topic, payload, 1) {
                Record::Rejected(r) => assert!(r.reason.contains(why), "{}", r.reason),
                other => panic!("{other:?}"),
            }
        }
    }
}
