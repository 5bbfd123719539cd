//! Configuration: defaults, then the TOML file, then command-line flags, then `FV_*`
//! environment variables (which override both, so a service manager can pin a value).

use crate::sinks::outbox::OutboxLimits;
use anyhow::Context as _;
use fv_core::imaging::DecodeOptions;
use fv_core::manifest::Precision;
use fv_runtime::{DetectPolicy, ReadOptions, Selection};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    pub format: crate::sources::v4l::FrameFormat,
    /// Requested width and height (default: the device's).
    pub size: Option<(u32, u32)>,
    /// Which frames are read.
    pub trigger: crate::sources::v4l::Trigger,
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
    /// Seconds an association may stay silent, and the most one PDU may take to arrive
    /// (default 60).
    pub idle_timeout_s: Option<u64>,
    /// TCP connections open at once, associated or not (default 32); when all are taken, a
    /// new connection closes the oldest one that has not associated yet.
    pub max_connections: Option<usize>,
    /// Seconds a connection has to complete its association request (default 10).
    pub handshake_timeout_s: Option<u64>,
    /// C-STORE is refused (out of resources) while the state folder's file system has less
    /// than this many MiB free, keeping room for the outboxes and journal (default 512).
    pub min_free_mb: Option<u64>,
    /// Where Structured Reports go.
    #[serde(default)]
    pub pacs: PacsSettings,
}

impl DicomSettings {
    /// Our AE title, the storage SCP's and the PACS sender's: `ae_title`, else
    /// [`DEFAULT_AE_TITLE`].
    pub fn ae_title(&self) -> String {
        self.ae_title
            .clone()
            .unwrap_or_else(|| DEFAULT_AE_TITLE.into())
    }
}

/// The PACS that receives a Structured Report for every DICOM image read (`[dicom.pacs]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacsSettings {
    /// `TITLE@HOST:PORT` (off when unset).
    pub address: Option<String>,
    /// Longest wait between attempts while the PACS is unreachable, in seconds (default 60).
    pub max_retry_s: Option<u64>,
    /// What shows the marks in the PACS viewer beside each report (default
    /// `secondary-capture`).
    pub marks: Option<Marks>,
}

/// The object sent with each Structured Report so that the marks show in the PACS viewer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Marks {
    /// The overlay as a Secondary Capture in the source's study ([`crate::sinks::sc`]).
    #[default]
    SecondaryCapture,
    /// The report only.
    None,
}

/// Declares [`Layer`] once. A reading setting (`read { … }`) is a config key, a flag of
/// both `fv-edge infer` and `fv-edge run` ([`ReadFlags`], flattened into each), an `FV_*`
/// variable, and a line of the layer merge, all from its one line here; adding one is that
/// line and its use in [`Layer::read_settings`]. The daemon's own settings (`daemon { … }`)
/// are keys, with their flags and variables written out below.
macro_rules! layer {
    (
        read {
            $( $(#[doc = $rdoc:literal])* [$($arg:tt)*] $rf:ident : $rt:ty = $env:literal, )*
        }
        daemon {
            $( $(#[$dm:meta])* $df:ident : $dt:ty, )*
        }
    ) => {
        /// The configuration as read from one layer; every field optional so layers merge.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Layer {
            $( $(#[doc = $rdoc])* #[doc = concat!("\n\nFlag `--", stringify!($rf), "` (underscores as dashes), variable `", $env, "`.")] pub $rf: Option<$rt>, )*
            $( $(#[$dm])* pub $df: $dt, )*
        }

        /// How an image is read, as flags: flattened into `fv-edge infer` and `fv-edge run`.
        #[derive(Clone, Debug, Default, clap::Args)]
        pub struct ReadFlags {
            $( $(#[doc = $rdoc])* #[arg(long, $($arg)*)] pub $rf: Option<$rt>, )*
        }

        impl ReadFlags {
            /// These flags as a layer.
            pub fn layer(self) -> Layer {
                Layer { $( $rf: self.$rf, )* ..Default::default() }
            }
        }

        impl Layer {
            /// The `FV_*` variables of the reading settings.
            pub const READ_VARIABLES: &'static [&'static str] = &[$($env),*];

            fn merge_read(&mut self, over: &Layer) {
                $( if over.$rf.is_some() { self.$rf = over.$rf.clone(); } )*
            }

            /// The reading settings from their variables, parsed as their flags are.
            fn read_from_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
                $( if let Some(v) = get($env) {
                    self.$rf = Some(env_value::<$rt>($env, &v, clap::value_parser!($rt))?);
                } )*
                Ok(())
            }
        }
    };
}

/// `value` of variable `key`, parsed as clap parses the flag of the same setting.
fn env_value<T: Clone + Send + Sync + 'static>(
    key: &str,
    value: &str,
    parser: impl clap::builder::IntoResettable<clap::builder::ValueParser>,
) -> anyhow::Result<T> {
    let matches = clap::Command::new("fv-edge")
        .arg(
            clap::Arg::new("value")
                .long("value")
                .allow_hyphen_values(true)
                .value_parser(parser),
        )
        .try_get_matches_from(["fv-edge".to_owned(), format!("--value={value}")])
        .map_err(|e| {
            // clap's own words (the possible values among them), less its usage tips.
            let said: Vec<String> = e
                .to_string()
                .lines()
                .map(|l| l.trim().trim_start_matches("error: ").to_owned())
                .filter(|l| {
                    !l.is_empty()
                        && !l.starts_with("For more information")
                        && !l.starts_with("Usage")
                })
                .collect();
            anyhow::anyhow!("{key}={value}: {}", said.join("; "))
        })?;
    Ok(matches
        .get_one::<T>("value")
        .cloned()
        .expect("a value clap parsed is there"))
}

layer! {
    read {
        /// Site name (a topic level).
        [] site: String = "FV_SITE",
        /// Device id (a topic level and the MQTT client id; default: the host name).
        [] device_id: String = "FV_DEVICE_ID",
        /// Models directory (default `models`).
        [value_name = "DIR"] models: PathBuf = "FV_MODELS",
        /// Precision to run when the models directory has several (default fp32).
        [value_name = "fp32|fp16|int8"] precision: Precision = "FV_PRECISION",
        /// Classifier name when the directory has several.
        [value_name = "NAME"] classifier: String = "FV_CLASSIFIER",
        /// Detector name when the directory has several.
        [value_name = "NAME"] detector: String = "FV_DETECTOR",
        /// Engine (default auto: ONNX Runtime when its library loads, else tract).
        [value_enum] engine: fv_runtime::engine::EngineKind = "FV_ENGINE",
        /// Threads for one inference (default: the cores available).
        [value_name = "N"] threads: usize = "FV_THREADS",
        /// When the detector (if any) runs (default suspicious).
        [value_enum] detect: DetectPolicy = "FV_DETECT",
        /// Smallest box score reported, exactly (below the detector's `suspicious`, boxes are
        /// `candidate`s); unset: the detector's `suspicious`, at least 0.25.
        [value_name = "S"] min_score: f32 = "FV_MIN_SCORE",
        /// The share of fractures in this unit's stream, which the reported probability is
        /// corrected to (default: the classifier manifest's, FracAtlas' 0.176).
        [value_name = "SHARE"] prevalence: f64 = "FV_PREVALENCE",
        /// Largest image accepted, in pixels.
        [value_name = "N"] max_pixels: u64 = "FV_MAX_PIXELS",
        /// Largest input file accepted, in bytes (default 1 GiB), checked before it is read.
        [value_name = "BYTES"] max_input_bytes: u64 = "FV_MAX_INPUT_BYTES",
        /// Decode a large JPEG at 1/2, 1/4 or 1/8 scale in the DCT, keeping twice the largest
        /// model input (default false: decoded whole, as the models were validated). The
        /// overlay is drawn on the full image either way.
        [num_args = 0..=1, default_missing_value = "true", value_name = "BOOL"] reduced_decode: bool = "FV_REDUCED_DECODE",
    }
    daemon {
        /// State directory (outbox, salt).
        state: Option<PathBuf>,
        /// Watch folder.
        watch: Option<PathBuf>,
        /// Where done inputs go (default `<watch>/done`).
        done: Option<PathBuf>,
        /// Where bad inputs go (default `<watch>/quarantine`).
        quarantine: Option<PathBuf>,
        /// A file is taken once its size and time are unchanged for this long.
        settle_ms: Option<u64>,
        /// Secret for hashing StudyInstanceUIDs (default: generated once in the state dir).
        uid_salt: Option<String>,
        /// MQTT.
        #[serde(default)]
        mqtt: MqttSettings,
        /// Outbox bounds.
        outbox: Option<OutboxLimits>,
        /// A frame grabber, read besides (or instead of) the watch folder.
        v4l: Option<V4lSettings>,
        /// The fleet dashboard's web server (off unless `listen` is set).
        #[serde(default)]
        dashboard: crate::dashboard::DashboardSettings,
        /// The reading screen for the radiographer (off unless `listen` is set).
        #[serde(default)]
        screen: crate::sinks::screen::ScreenSettings,
        /// The DICOM node (storage SCP, reports to the PACS).
        #[serde(default)]
        dicom: DicomSettings,
    }
}

/// The site name when none is configured (a topic level).
pub const DEFAULT_SITE: &str = "default";
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

/// The state directory when none is configured.
pub const DEFAULT_STATE: &str = "state";
/// Our DICOM AE title (called by peers, calling the PACS) when none is configured.
pub const DEFAULT_AE_TITLE: &str = "FVEDGE";
/// How long a watched file must stay unchanged before it is taken, when not configured.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(1000);
/// Between heartbeats, when not configured.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// The longest wait between attempts at an unreachable PACS, when not configured.
pub const DEFAULT_PACS_MAX_RETRY: Duration = Duration::from_secs(60);

/// The broker connection, resolved: the password read from its file.
#[derive(Clone, Debug)]
pub struct MqttConnection {
    /// `mqtt://` or `mqtts://` URL.
    pub url: String,
    /// User name and password.
    pub credentials: Option<(String, String)>,
    /// CA certificate for TLS.
    pub ca_file: Option<PathBuf>,
    /// Between heartbeats.
    pub heartbeat: Duration,
    /// Largest packet sent.
    pub max_packet_bytes: usize,
}

/// Where Structured Reports go, resolved.
#[derive(Clone, Debug)]
pub struct PacsTarget {
    /// The PACS.
    pub address: crate::sinks::pacs::PacsAddress,
    /// Our AE title towards it.
    pub calling_ae: String,
    /// The longest wait between attempts.
    pub max_retry: Duration,
    /// What shows the marks in the viewer.
    pub marks: Marks,
}

/// What `fv-edge run` needs, resolved once from the merged layers with every default here.
#[derive(Clone, Debug)]
pub struct DaemonSettings {
    /// How images are read (shared with `infer`).
    pub read: ReadSettings,
    /// Outbox, journal, salt, locks.
    pub state: PathBuf,
    /// The watch folder (`STATE/inbox` when only a grabber feeds the daemon).
    pub watch: PathBuf,
    /// Where inputs go once read.
    pub done: PathBuf,
    /// Where bad inputs go.
    pub quarantine: PathBuf,
    /// How long a watched file must stay unchanged.
    pub settle: Duration,
    /// Configured secret for pseudonyms (`None`: made once in the state directory).
    pub uid_salt: Option<String>,
    /// Bounds of both outboxes.
    pub outbox: OutboxLimits,
    /// The broker, when one is configured (else results stay local).
    pub mqtt: Option<MqttConnection>,
    /// The PACS, when one is configured.
    pub pacs: Option<PacsTarget>,
    /// The storage SCP's settings (`[dicom]`; on when `listen` is set).
    pub dicom: DicomSettings,
    /// The fleet page (on when `listen` is set).
    pub dashboard: crate::dashboard::DashboardSettings,
    /// The reading screen (on when `listen` is set).
    pub screen: crate::sinks::screen::ScreenSettings,
    /// A frame grabber.
    pub v4l: Option<V4lSettings>,
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
        let mut layer = Layer {
            state: get("FV_STATE").map(PathBuf::from),
            watch: get("FV_WATCH").map(PathBuf::from),
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
            screen: crate::sinks::screen::ScreenSettings {
                listen: get("FV_SCREEN"),
                token: get("FV_SCREEN_TOKEN"),
                recent: None,
            },
            dicom: DicomSettings {
                listen: get("FV_DICOM_LISTEN"),
                ae_title: get("FV_DICOM_AE"),
                pacs: PacsSettings {
                    address: get("FV_PACS"),
                    max_retry_s: None,
                    marks: None,
                },
                ..Default::default()
            },
            ..Default::default()
        };
        layer.read_from_env(&get)?;
        Ok(layer)
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
                prevalence: self.prevalence,
            },
            threads: self.threads,
            read: ReadOptions {
                detect: self.detect.unwrap_or_default(),
                min_score: self.min_score,
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

    /// The daemon's settings of the merged layers. Fails, naming the key, on a value no
    /// retry can fix: nothing to read, an unreadable password file, a bad PACS address.
    pub fn daemon_settings(&self) -> anyhow::Result<DaemonSettings> {
        let state = self
            .state
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE));
        let read = self.read_settings(state.join("engine-cache"))?;
        let watch = match (&self.watch, &self.v4l) {
            (Some(w), _) => w.clone(),
            // A grabber alone still needs somewhere for its done results.
            (None, Some(_)) => state.join("inbox"),
            (None, None) => {
                anyhow::bail!(
                    "nothing to read: pass --watch DIR (or `watch` / `[v4l]` in the config)"
                )
            }
        };
        let m = &self.mqtt;
        let mqtt = match &m.url {
            None => None,
            Some(url) => {
                let password = match (&m.password, &m.password_file) {
                    (Some(p), _) => Some(p.clone()),
                    (None, Some(f)) => Some(
                        std::fs::read_to_string(f)
                            .with_context(|| {
                                format!("{}: cannot read the MQTT password", f.display())
                            })?
                            .trim()
                            .to_owned(),
                    ),
                    (None, None) => None,
                };
                Some(MqttConnection {
                    url: url.clone(),
                    credentials: m
                        .username
                        .clone()
                        .map(|u| (u, password.unwrap_or_default())),
                    ca_file: m.ca_file.clone(),
                    heartbeat: m
                        .heartbeat_s
                        .map_or(DEFAULT_HEARTBEAT, |s| Duration::from_secs(s.max(1))),
                    max_packet_bytes: m
                        .max_packet_bytes
                        .unwrap_or(crate::sinks::mqtt::DEFAULT_MAX_PACKET_BYTES),
                })
            }
        };
        let pacs = match &self.dicom.pacs.address {
            None => None,
            Some(address) => Some(PacsTarget {
                address: address.parse().context("[dicom.pacs] address")?,
                calling_ae: self.dicom.ae_title(),
                max_retry: self
                    .dicom
                    .pacs
                    .max_retry_s
                    .map_or(DEFAULT_PACS_MAX_RETRY, |s| Duration::from_secs(s.max(1))),
                marks: self.dicom.pacs.marks.unwrap_or_default(),
            }),
        };
        Ok(DaemonSettings {
            read,
            done: self.done.clone().unwrap_or_else(|| watch.join("done")),
            quarantine: self
                .quarantine
                .clone()
                .unwrap_or_else(|| watch.join("quarantine")),
            watch,
            state,
            settle: self.settle_ms.map_or(DEFAULT_SETTLE, Duration::from_millis),
            uid_salt: self.uid_salt.clone(),
            outbox: self.outbox.unwrap_or_default(),
            mqtt,
            pacs,
            dicom: self.dicom.clone(),
            dashboard: self.dashboard.clone(),
            screen: self.screen.clone(),
            v4l: self.v4l.clone(),
        })
    }

    /// `over`'s values replace this layer's where set.
    pub fn merge(mut self, over: &Layer) -> Layer {
        self.merge_read(over);
        merge!(self, over, state, watch, done, quarantine, settle_ms, uid_salt, outbox, v4l);
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
        merge!(self.screen, over.screen, listen, token, recent);
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
            idle_timeout_s,
            max_connections,
            handshake_timeout_s,
            min_free_mb
        );
        merge!(
            self.dicom.pacs,
            over.dicom.pacs,
            address,
            max_retry_s,
            marks
        );
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
        assert_eq!(d.read.min_score, None);
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
        assert_eq!((r.site.as_str(), r.read.min_score), ("clinic-a", Some(0.5)));
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

    #[test]
    fn the_daemon_resolves_every_default_once_and_names_what_is_wrong() {
        assert!(
            Layer::default().daemon_settings().is_err(),
            "nothing to read"
        );
        let watch = Layer {
            watch: Some(PathBuf::from("in")),
            ..Default::default()
        };
        let d = watch.daemon_settings().unwrap();
        assert_eq!(d.state, PathBuf::from(DEFAULT_STATE));
        assert_eq!(d.done, PathBuf::from("in/done"));
        assert_eq!(d.quarantine, PathBuf::from("in/quarantine"));
        assert_eq!(d.settle, DEFAULT_SETTLE);
        assert!(d.mqtt.is_none() && d.pacs.is_none());
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("password");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let full: Layer = toml::from_str(&format!(
            "watch = \"in\"\n[mqtt]\nurl = \"mqtt://b:1\"\nusername = \"u\"\npassword_file = {:?}\n[dicom.pacs]\naddress = \"PACS@h:104\"\n",
            secret
        ))
        .unwrap();
        let d = full.daemon_settings().unwrap();
        let m = d.mqtt.unwrap();
        assert_eq!(m.credentials, Some(("u".into(), "s3cret".into())));
        assert_eq!(m.heartbeat, DEFAULT_HEARTBEAT);
        let p = d.pacs.unwrap();
        assert_eq!(p.calling_ae, DEFAULT_AE_TITLE);
        assert_eq!(p.max_retry, DEFAULT_PACS_MAX_RETRY);
        let mut bad = full.clone();
        bad.dicom.pacs.address = Some("no-title".into());
        let e = format!("{:#}", bad.daemon_settings().unwrap_err());
        assert!(e.contains("[dicom.pacs] address"), "{e}");
        let mut missing = full;
        missing.mqtt.password_file = Some(dir.path().join("absent"));
        let e = format!("{:#}", missing.daemon_settings().unwrap_err());
        assert!(e.contains("absent") && e.contains("MQTT password"), "{e}");
    }

    #[test]
    fn enum_variables_read_like_their_flags() {
        let env = |k: &'static str, v: &'static str| {
            Layer::from_env(move |x| (x == k).then(|| v.to_owned()))
        };
        assert_eq!(
            env("FV_ENGINE", "ort-cpu").unwrap().engine,
            Some(fv_runtime::EngineKind::OrtCpu)
        );
        assert_eq!(
            env("FV_DETECT", "never").unwrap().detect,
            Some(DetectPolicy::Never)
        );
        let e = env("FV_DETECT", "sometimes").unwrap_err().to_string();
        assert!(
            e.contains("FV_DETECT=sometimes") && e.contains("always, suspicious, never"),
            "{e}"
        );
    }

    #[test]
    fn a_reading_setting_is_a_key_a_flag_and_a_variable_from_one_declaration() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            read: ReadFlags,
        }
        let file: Layer = toml::from_str("prevalence = 0.2\nreduced_decode = true\n").unwrap();
        let flags = Cli::parse_from(["fv-edge", "--prevalence", "0.3", "--reduced-decode"])
            .read
            .layer();
        let env = Layer::from_env(|k| match k {
            "FV_PREVALENCE" => Some("0.4".into()),
            "FV_REDUCED_DECODE" => Some("false".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            (file.prevalence, file.reduced_decode),
            (Some(0.2), Some(true))
        );
        assert_eq!(
            (flags.prevalence, flags.reduced_decode),
            (Some(0.3), Some(true))
        );
        assert_eq!(
            (env.prevalence, env.reduced_decode),
            (Some(0.4), Some(false))
        );
        let merged = file.merge(&flags).merge(&env);
        assert_eq!(merged.prevalence, Some(0.4));
        assert!(Layer::READ_VARIABLES.contains(&"FV_PREVALENCE"));
        let e = Layer::from_env(|k| (k == "FV_THREADS").then(|| "many".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("FV_THREADS=many: invalid value"), "{e}");
    }
}
