//! The MQTT contract between a unit (fv-edge) and the fleet (fv-fleet): the topics and the
//! three messages a unit publishes under them, as types. fv-edge builds its messages from
//! these types and fv-fleet reads them with the same ones; the JSON Schemas committed in
//! `core/schemas/` are generated from them ([`schemas`]), so a field renamed on one side
//! fails the schema test before it can break the other side.
//!
//! `PREFIX/SITE/DEVICE/result` (QoS 1): a [`ResultMessage`].
//! `PREFIX/SITE/DEVICE/status` (QoS 1, retained, also the last will): a [`StatusMessage`].
//! `PREFIX/SITE/DEVICE/heartbeat` (QoS 0, every `interval_s`): a [`HeartbeatMessage`].

pub use crate::result::{ModelRef, ResultMessage};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The first levels of every topic: the product and the version of the message schemas.
pub const TOPIC_PREFIX: &str = "fractuvision/v1";

/// The messages a unit publishes, by the last level of their topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// [`ResultMessage`].
    Result,
    /// [`StatusMessage`].
    Status,
    /// [`HeartbeatMessage`].
    Heartbeat,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Result, Kind::Status, Kind::Heartbeat];

    /// The topic's last level.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Result => "result",
            Kind::Status => "status",
            Kind::Heartbeat => "heartbeat",
        }
    }
}

/// One unit's topics: `{prefix}/{site}/{device}/{kind}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    /// Results.
    pub result: String,
    /// The retained online/offline status.
    pub status: String,
    /// Health.
    pub heartbeat: String,
}

impl Topics {
    /// The topics of `device` at `site` under `prefix` (normally [`TOPIC_PREFIX`]).
    pub fn new(prefix: &str, site: &str, device: &str) -> Self {
        let t = |k: Kind| format!("{prefix}/{site}/{device}/{}", k.as_str());
        Topics {
            result: t(Kind::Result),
            status: t(Kind::Status),
            heartbeat: t(Kind::Heartbeat),
        }
    }
}

/// `(site, device, kind)` of a unit's topic under `prefix`, or `None` for anything else.
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

/// The filters that receive every unit's messages under `prefix`; in a shared
/// subscription's `group`, each message goes to one subscriber of the group.
pub fn filters(prefix: &str, share_group: Option<&str>) -> Vec<String> {
    let share = share_group
        .map(|g| format!("$share/{g}/"))
        .unwrap_or_default();
    Kind::ALL
        .iter()
        .map(|k| format!("{share}{prefix}/+/+/{}", k.as_str()))
        .collect()
}

/// Whether a unit is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UnitState {
    /// Connected and reading images.
    Online,
    /// Shut down, or its connection was lost (the broker's last will).
    Offline,
}

/// A unit's retained status (`…/status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusMessage {
    /// Online or offline.
    pub state: UnitState,
    /// Why it went offline (`shutdown`, `connection lost`).
    #[serde(default)]
    pub reason: Option<String>,
    /// Site name.
    pub site: String,
    /// Device id.
    pub device: String,
    /// fv-edge's version.
    pub version: String,
    /// The models the unit runs.
    pub models: Vec<ModelRef>,
    /// Seconds between heartbeats.
    pub heartbeat_s: u64,
    /// When it was written, RFC 3339 UTC.
    pub ts: String,
}

/// A unit's health (`…/heartbeat`): counters since the daemon started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HeartbeatMessage {
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// Seconds until the next heartbeat: a dashboard judges staleness from it.
    pub interval_s: u64,
    /// Results waiting to be delivered to the broker.
    pub outbox_depth: u64,
    /// Results the full outbox had to drop since start.
    #[serde(default)]
    pub dropped: u64,
    /// Results set aside unsent because they exceed the broker's packet limit.
    #[serde(default)]
    pub oversized: u64,
    /// Inputs read successfully.
    pub processed: u64,
    /// Inputs that failed.
    pub failed: u64,
    /// Inputs read and found outside the models' scope (counted in `processed` too).
    #[serde(default)]
    pub not_applicable: u64,
    /// The last failure's message (bounded, pseudonymous).
    #[serde(default)]
    pub last_error: Option<String>,
    /// Why the publisher cannot deliver right now.
    #[serde(default)]
    pub publisher: Option<String>,
    /// Reports and captures waiting for the PACS (absent without a PACS).
    #[serde(default)]
    pub pacs_outbox_depth: Option<u64>,
    /// Objects the PACS has stored since start.
    #[serde(default)]
    pub pacs_sent: u64,
    /// Why the PACS sender cannot deliver right now.
    #[serde(default)]
    pub pacs: Option<String>,
    /// Why the DICOM node refuses objects right now.
    #[serde(default)]
    pub dicom: Option<String>,
    /// The models the unit runs.
    #[serde(default)]
    pub models: Vec<ModelRef>,
    /// When it was written, RFC 3339 UTC.
    pub ts: String,
}

/// The JSON Schemas committed under `core/schemas/`, generated from the types.
pub fn schemas() -> [(&'static str, serde_json::Value); 4] {
    let to_value = |s: schemars::Schema| serde_json::to_value(s).expect("a schema is JSON");
    [
        (
            "result.schema.json",
            to_value(schemars::schema_for!(ResultMessage)),
        ),
        (
            "status.schema.json",
            to_value(schemars::schema_for!(StatusMessage)),
        ),
        (
            "heartbeat.schema.json",
            to_value(schemars::schema_for!(HeartbeatMessage)),
        ),
        (
            "manifest.schema.json",
            to_value(schemars::schema_for!(crate::manifest::Manifest)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_built_and_parsed_by_the_same_rules() {
        let t = Topics::new(TOPIC_PREFIX, "clinic-a", "unit-1");
        assert_eq!(t.result, "fractuvision/v1/clinic-a/unit-1/result");
        for (topic, kind) in [
            (&t.result, Kind::Result),
            (&t.status, Kind::Status),
            (&t.heartbeat, Kind::Heartbeat),
        ] {
            assert_eq!(
                parse_topic(TOPIC_PREFIX, topic),
                Some(("clinic-a", "unit-1", kind))
            );
        }
        let p = TOPIC_PREFIX;
        assert_eq!(parse_topic(p, "fractuvision/v1/a/b/other"), None);
        assert_eq!(parse_topic(p, "fractuvision/v1/a/b/result/x"), None);
        assert_eq!(parse_topic(p, "fractuvision/v2/a/b/result"), None);
        assert_eq!(parse_topic(p, "fractuvision/v1//b/result"), None);
        assert_eq!(filters(p, None)[0], "fractuvision/v1/+/+/result");
        assert_eq!(
            filters(p, Some("fleet"))[2],
            "$share/fleet/fractuvision/v1/+/+/heartbeat"
        );
    }

    #[test]
    fn a_status_without_its_state_or_with_another_is_refused() {
        let ok = serde_json::json!({"state": "online", "site": "a", "device": "b",
            "version": "0.1.0", "models": [], "heartbeat_s": 30, "ts": "2026-12-06T10:00:00Z"});
        let s: StatusMessage = serde_json::from_value(ok.clone()).unwrap();
        assert_eq!(s.state, UnitState::Online);
        let mut other = ok.clone();
        other["state"] = "asleep".into();
        assert!(serde_json::from_value::<StatusMessage>(other).is_err());
        let mut renamed = ok;
        renamed.as_object_mut().unwrap().remove("state");
        renamed["status"] = "online".into();
        let e = serde_json::from_value::<StatusMessage>(renamed).unwrap_err();
        assert!(e.to_string().contains("state"), "{e}");
    }
}
