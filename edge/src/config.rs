//! Configuration: defaults, then the TOML file, then command-line flags, then `FV_*`
//! environment variables (which override both, so a service manager can pin a value).

use crate::outbox::OutboxLimits;
use fv_core::imaging::DecodeOptions;
use fv_core::manifest::Precision;
use fv_runtime::{DetectPolicy, ReadOptions, Selection};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// MQTT settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSettings {
    /// `mqtt://host:1883` or `mqtts://host:8883` (TLS through rustls).
    pub url: Option<String>,
    /// User name.
    pub username: Option<String>,
    /// Password (prefer `password_file`).
    pub password: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// Seconds between heartbeats (default 30).
    pub heartbeat_s: Option<u64>,
    /// Largest MQTT packet sent, in bytes (default 256 KiB; a result is a few KiB). Mosquitto
    /// takes any size unless `message_size_limit` is set; AWS IoT takes 128 KiB. A result
    /// that would not fit is set aside in `dropped.jsonl` with its reason, never retried.
    pub max_packet_bytes: Option<usize>,
}

/// A V4L2 frame grabber as a source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V4lSettings {
    /// Device, e.g. `/dev/video0`.
    pub device: PathBuf,
    /// Pixel format.
    pub format: crate::v4l::FrameFormat,
    /// Requested width and height (default: the device's).
    pub size: Option<(u32, u32)>,
    /// Which frames are read.
    pub trigger: crate::v4l::Trigger,
}

/// The DICOM node: the storage SCP and where reports go (`[dicom]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomSettings {
    /// `PORT` or `ADDR:PORT` to accept C-STORE and C-ECHO on (off when unset).
    pub listen: Option<String>,
    /// Our AE title, the called AE title peers use (default `FVEDGE`); also the calling AE
    /// title towards the PACS.
    pub ae_title: Option<String>,
    /// Calling AE titles accepted (default: any).
    pub allowed_calling_ae_titles: Option<Vec<String>>,
    /// Source IP addresses accepted (default: any).
    pub allowed_addresses: Option<Vec<std::net::IpAddr>>,
    /// Associations open at once (default 4).
    pub max_associations: Option<usize>,
    /// Largest PDU we accept, in bytes (default 64 KiB).
    pub max_pdu_bytes: Option<u32>,
    /// Largest object accepted, in bytes (default: `max_input_bytes`).
    pub max_object_bytes: Option<u64>,
    /// Seconds an association may stay silent (default 60).
    pub idle_timeout_s: Option<u64>,
    /// Where Structured Reports go.
    #[serde(default)]
    pub pacs: PacsSettings,
}

/// The PACS that receives a Structured Report for every DICOM image read (`[dicom.pacs]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacsSettings {
    /// `TITLE@HOST:PORT` (off when unset).
    pub address: Option<String>,
    /// Longest wait between attempts while the PACS is unreachable, in seconds (default 60).
    pub max_retry_s: Option<u64>,
}

/// The configuration as read from one layer; every field optional so layers merge.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// Site name (a topic level).
    pub site: Option<String>,
    /// Device id (a topic level and the MQTT client id).
    pub device_id: Option<String>,
    /// Models directory.
    pub models: Option<PathBuf>,
    /// Precision to run when the models directory has several.
    pub precision: Option<Precision>,
    /// Classifier name when the directory has several.
    pub classifier: Option<String>,
    /// Detector name when the directory has several.
    pub detector: Option<String>,
    /// Engine: `tract` (default), `ort-cpu`, `tensorrt`.
    pub engine: Option<fv_runtime::engine::EngineKind>,
    /// Threads for one inference (default: the cores available).
    pub threads: Option<usize>,
    /// State directory (outbox, salt).
    pub state: Option<PathBuf>,
    /// Watch folder.
    pub watch: Option<PathBuf>,
    /// Where done inputs go (default `<watch>/done`).
    pub done: Option<PathBuf>,
    /// Where bad inputs go (default `<watch>/quarantine`).
    pub quarantine: Option<PathBuf>,
    /// When the detector runs.
    pub detect: Option<DetectPolicy>,
    /// Smallest box score reported.
    pub min_score: Option<f32>,
    /// Largest image accepted, in pixels.
    pub max_pixels: Option<u64>,
    /// Largest input file accepted, in bytes (default 1 GiB), checked before it is read.
    pub max_input_bytes: Option<u64>,
    /// Decode a large JPEG at 1/2, 1/4 or 1/8 scale in the DCT, keeping twice the largest
    /// model input (default false: decoded whole, as the models were validated). The
    /// overlay is drawn on the full image either way.
    pub reduced_decode: Option<bool>,
    /// A file is taken once its size and time are unchanged for this long.
    pub settle_ms: Option<u64>,
    /// Secret for hashing StudyInstanceUIDs (default: generated once in the state dir).
    pub uid_salt: Option<String>,
    /// MQTT.
    #[serde(default)]
    pub mqtt: MqttSettings,
    /// Outbox bounds.
    pub outbox: Option<OutboxLimits>,
    /// A frame grabber, read besides (or instead of) the watch folder.
    pub v4l: Option<V4lSettings>,
    /// The fleet dashboard's web server (off unless `listen` is set).
    #[serde(default)]
    pub dashboard: crate::dashboard::DashboardSettings,
    /// The DICOM node (storage SCP, reports to the PACS).
    #[serde(default)]
    pub dicom: DicomSettings,
}

/// The site name when none is configured (a topic level).
pub const DEFAULT_SITE: &str = "default";
/// Boxes scoring below this are not reported unless configured otherwise.
pub const DEFAULT_MIN_SCORE: f32 = 0.25;
/// The models directory when none is configured.
pub const DEFAULT_MODELS: &str = "models";

/// How the edge reads an image, resolved once from the merged layers (every default of it
/// is here): `fv-edge infer` and `fv-edge run` both start from it.
#[derive(Clone, Debug)]
pub struct ReadSettings {
    /// Site name (a topic level).
    pub site: String,
    /// Device id (a topic level and the MQTT client id).
    pub device_id: String,
    /// Models directory.
    pub models: PathBuf,
    /// Which models, at which precision, on which engine.
    pub selection: Selection,
    /// Threads for one inference (`None`: the cores available).
    pub threads: Option<usize>,
    /// When the detector runs and the smallest box score reported.
    pub read: ReadOptions,
    /// Input limits; `reduce_to` is set from the models once they are loaded.
    pub decode: DecodeOptions,
    /// Decode large JPEGs at the DCT scale the models need.
    pub reduced_decode: bool,
}

macro_rules! merge {
    ($base:expr, $over:expr, $($f:ident),*) => { $( if $over.$f.is_some() { $base.$f = $over.$f.clone(); } )* };
}

impl Layer {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read the config: {e}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: invalid config: {e}", path.display()))
    }

    /// `FV_*` variables from `get`.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let parse = |k: &str| -> anyhow::Result<Option<u64>> {
            get(k)
                .map(|v| v.parse().map_err(|e| anyhow::anyhow!("{k}={v}: {e}")))
                .transpose()
        };
        let precision = get("FV_PRECISION")
            .map(|v| v.parse::<Precision>())
            .transpose()
            .map_err(|e| anyhow::anyhow!("FV_PRECISION: {e}"))?;
        let engine = get("FV_ENGINE")
            .map(|v| serde_json::from_value(serde_json::Value::String(v.clone())))
            .transpose()
            .map_err(|e| anyhow::anyhow!("FV_ENGINE: {e}; use auto, tract, ort-cpu or tensorrt"))?;
        let detect = get("FV_DETECT")
            .map(|v| serde_json::from_value(serde_json::Value::String(v.clone())))
            .transpose()
            .map_err(|e| anyhow::anyhow!("FV_DETECT: {e}; use always, suspicious or never"))?;
        Ok(Layer {
            site: get("FV_SITE"),
            device_id: get("FV_DEVICE_ID"),
            models: get("FV_MODELS").map(PathBuf::from),
            precision,
            engine,
            threads: parse("FV_THREADS")?.map(|n| n as usize),
            state: get("FV_STATE").map(PathBuf::from),
            watch: get("FV_WATCH").map(PathBuf::from),
            detect,
            uid_salt: get("FV_UID_SALT"),
            mqtt: MqttSettings {
                url: get("FV_MQTT"),
                username: get("FV_MQTT_USERNAME"),
                password: get("FV_MQTT_PASSWORD"),
                heartbeat_s: parse("FV_HEARTBEAT_S")?,
                ..Default::default()
            },
            dashboard: crate::dashboard::DashboardSettings {
                listen: get("FV_DASHBOARD"),
                broker: get("FV_DASHBOARD_BROKER"),
                prefix: None,
            },
            dicom: DicomSettings {
                listen: get("FV_DICOM_LISTEN"),
                ae_title: get("FV_DICOM_AE"),
                pacs: PacsSettings {
                    address: get("FV_PACS"),
                    max_retry_s: None,
                },
                ..Default::default()
            },
            ..Default::default()
        })
    }

    /// The reading settings of the merged layers; TensorRT engines are cached in
    /// `engine_cache`. Fails on a site or device id that cannot be a topic level.
    pub fn read_settings(&self, engine_cache: PathBuf) -> anyhow::Result<ReadSettings> {
        let site = self.site.clone().unwrap_or_else(|| DEFAULT_SITE.into());
        let device_id = self.device_id.clone().unwrap_or_else(hostname);
        check_topic_level("site", &site)?;
        check_topic_level("device id", &device_id)?;
        Ok(ReadSettings {
            site,
            device_id,
            models: self
                .models
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_MODELS)),
            selection: Selection {
                precision: self.precision,
                classifier: self.classifier.clone(),
                detector: self.detector.clone(),
                engine: self.engine.unwrap_or_default(),
                engine_cache: Some(engine_cache),
            },
            threads: self.threads,
            read: ReadOptions {
                detect: self.detect.unwrap_or_default(),
                min_score: self.min_score.unwrap_or(DEFAULT_MIN_SCORE),
            },
            decode: DecodeOptions {
                max_pixels: self.max_pixels.unwrap_or(DecodeOptions::DEFAULT_MAX_PIXELS),
                max_file_bytes: self
                    .max_input_bytes
                    .unwrap_or(DecodeOptions::DEFAULT_MAX_FILE_BYTES),
                reduce_to: None,
            },
            reduced_decode: self.reduced_decode.unwrap_or(false),
        })
    }

    /// `over`'s values replace this layer's where set.
    pub fn merge(mut self, over: &Layer) -> Layer {
        merge!(
            self,
            over,
            site,
            device_id,
            models,
            precision,
            classifier,
            detector,
            engine,
            threads,
            state,
            watch,
            done,
            quarantine,
            detect,
            min_score,
            max_pixels,
            max_input_bytes,
            reduced_decode,
            settle_ms,
            uid_salt,
            outbox,
            v4l
        );
        merge!(
            self.mqtt,
            over.mqtt,
            url,
            username,
            password,
            password_file,
            ca_file,
            heartbeat_s,
            max_packet_bytes
        );
        merge!(self.dashboard, over.dashboard, listen, broker, prefix);
        merge!(
            self.dicom,
            over.dicom,
            listen,
            ae_title,
            allowed_calling_ae_titles,
            allowed_addresses,
            max_associations,
            max_pdu_bytes,
            max_object_bytes,
            idle_timeout_s
        );
        merge!(self.dicom.pacs, over.dicom.pacs, address, max_retry_s);
        self
    }
}

/// A topic level must not contain `/`, `+`, `#` or be empty.
pub fn check_topic_level(what: &str, v: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !v.is_empty() && !v.contains(['/', '+', '#', '\0']),
        "{what} `{v}` cannot be an MQTT topic level: use letters, digits, '-' or '_'"
    );
    Ok(())
}

/// This machine's host name, the default device id.
pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "fv-edge".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_settings_have_one_set_of_defaults_and_env_wins_over_flags() {
        let d = Layer::default()
            .read_settings(PathBuf::from("cache"))
            .unwrap();
        assert_eq!(d.site, DEFAULT_SITE);
        assert_eq!(d.models, PathBuf::from(DEFAULT_MODELS));
        assert_eq!(d.read.min_score, DEFAULT_MIN_SCORE);
        assert_eq!(d.read.detect, DetectPolicy::Suspicious);
        assert_eq!(d.selection.engine, fv_runtime::EngineKind::Auto);
        assert!(!d.reduced_decode);
        let flags = Layer {
            site: Some("ward-3".into()),
            min_score: Some(0.5),
            ..Default::default()
        };
        let env = Layer::from_env(|k| (k == "FV_SITE").then(|| "clinic-a".to_owned())).unwrap();
        let r = flags
            .merge(&env)
            .read_settings(PathBuf::from("cache"))
            .unwrap();
        assert_eq!((r.site.as_str(), r.read.min_score), ("clinic-a", 0.5));
        let bad = Layer {
            site: Some("a/b".into()),
            ..Default::default()
        };
        assert!(bad.read_settings(PathBuf::from("cache")).is_err());
    }

    #[test]
    fn env_overrides_flags_override_file() {
        let file: Layer = toml::from_str(
            "site = \"file\"\ndevice_id = \"d-file\"\nsettle_ms = 5\n[mqtt]\nurl = \"mqtt://a:1\"\n",
        )
        .unwrap();
        let flags = Layer {
            site: Some("flag".into()),
            mqtt: MqttSettings {
                url: Some("mqtt://b:2".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let env = Layer::from_env(|k| (k == "FV_SITE").then(|| "env".to_owned())).unwrap();
        let c = file.merge(&flags).merge(&env);
        assert_eq!(c.site.as_deref(), Some("env"));
        assert_eq!(c.device_id.as_deref(), Some("d-file"));
        assert_eq!(c.mqtt.url.as_deref(), Some("mqtt://b:2"));
        assert_eq!(c.settle_ms, Some(5));
        assert!(
            toml::from_str::<Layer>("sight = 1").is_err(),
            "typos are refused"
        );
        assert!(check_topic_level("site", "a/b").is_err());
        assert!(Layer::from_env(|k| (k == "FV_PRECISION").then(|| "int4".to_owned())).is_err());
    }
}
