//! fv-fleet's settings: the command line (each flag also an `FV_FLEET_*` variable), resolved
//! once into [`Settings`] with every default here.

use anyhow::Context as _;
use fv_core::broker::BrokerUrl;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The topic prefix units publish under (fv-edge's default).
pub const DEFAULT_PREFIX: &str = "fractuvision/v1";

/// `fv-fleet [serve]`'s flags.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// The broker: mqtt://HOST[:PORT].
    #[arg(long, env = "FV_FLEET_MQTT", default_value = "mqtt://127.0.0.1:1883")]
    pub mqtt: String,
    /// The database: a SQLite file (created when missing) or postgres://USER@HOST/DB.
    #[arg(long, env = "FV_FLEET_DB", default_value = "fleet.sqlite")]
    pub db: String,
    /// Serve the dashboard and the API on PORT (all interfaces) or ADDR:PORT; without it
    /// fv-fleet only ingests (one of several ingesters, say).
    #[arg(long, env = "FV_FLEET_LISTEN")]
    pub listen: Option<String>,
    /// The API's bearer token. Required unless the API listens on loopback only.
    #[arg(long, env = "FV_FLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The broker user (its password from FV_FLEET_MQTT_PASSWORD).
    #[arg(long, env = "FV_FLEET_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,
    /// Topic prefix the units publish under.
    #[arg(long, env = "FV_FLEET_PREFIX", default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// Share the units' topics with the other ingesters of this group (MQTT shared
    /// subscription `$share/GROUP/…`): the broker hands each message to one of them.
    #[arg(long, env = "FV_FLEET_SHARE_GROUP")]
    pub share_group: Option<String>,
    /// Serve the API and the page only, with no MQTT connection (e.g. beside a read replica).
    #[arg(long, env = "FV_FLEET_API_ONLY")]
    pub api_only: bool,
    /// The MQTT client id: the broker keeps this session's messages while fv-fleet is away,
    /// so each ingester needs its own, stable id.
    #[arg(long, env = "FV_FLEET_CLIENT_ID", default_value = "fv-fleet")]
    pub client_id: String,
    /// Days of history kept.
    #[arg(long, env = "FV_FLEET_RETENTION_DAYS", default_value_t = 400)]
    pub retention_days: u32,
    /// The time zone days are counted in, for sites not named by --site-zone.
    #[arg(long, env = "FV_FLEET_ZONE", default_value = "UTC")]
    pub zone: String,
    /// A site's time zone, SITE=ZONE (e.g. clinic-a=Europe/Berlin); repeatable.
    #[arg(long = "site-zone", value_parser = parse_site_zone)]
    pub site_zones: Vec<(String, String)>,
    /// A unit not heard from for this long is shown as gone (and can be hidden).
    #[arg(long, env = "FV_FLEET_GONE_AFTER", default_value = "1day")]
    pub gone_after: humantime::Duration,
    /// The broker's WebSockets URL the page connects to for live updates
    /// (e.g. ws://broker:9001); without it the page shows history only.
    #[arg(long, env = "FV_FLEET_DASHBOARD_BROKER")]
    pub dashboard_broker: Option<String>,
    /// The registry of units: a file of `SITE/DEVICE` lines. A unit it does not list is
    /// stored as `rejected`, not in any site's history. Without it every unit that publishes
    /// is admitted (auto-enrolment).
    #[arg(long, env = "FV_FLEET_UNITS", value_name = "FILE")]
    pub units: Option<std::path::PathBuf>,
    /// The classifier's manifest (`models/<name>.json`): its `expected` behaviour on
    /// validation is what the drift watch compares each unit's day with (`/api/drift`).
    #[arg(long, env = "FV_FLEET_EXPECT", value_name = "JSON")]
    pub expect: Option<std::path::PathBuf>,
    /// With `mqtts://`: the broker's CA certificate (PEM).
    #[arg(long, env = "FV_FLEET_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<std::path::PathBuf>,
    /// With `mqtts://`: fv-fleet's own certificate (PEM), for a broker that asks clients for
    /// one (`require_certificate true`); with --client-key.
    #[arg(
        long,
        env = "FV_FLEET_CLIENT_CERT",
        value_name = "PEM",
        requires = "client_key"
    )]
    pub client_cert: Option<std::path::PathBuf>,
    /// The key of --client-cert (PEM).
    #[arg(
        long,
        env = "FV_FLEET_CLIENT_KEY",
        value_name = "PEM",
        requires = "client_cert"
    )]
    pub client_key: Option<std::path::PathBuf>,
}

/// The `expected` section of the classifier manifest at `path`.
fn expected_of(path: &std::path::Path) -> anyhow::Result<fv_core::drift::Expected> {
    let m = fv_core::manifest::Manifest::from_path(path)
        .map_err(|e| anyhow::anyhow!("--expect: {e}"))?;
    m.expected.ok_or_else(|| {
        anyhow::anyhow!(
            "--expect {}: the manifest has no `expected` section; write it with `fv-train \
             expect --classifier {} --predictions <fuse run>/predictions.csv`",
            path.display(),
            path.display()
        )
    })
}

fn parse_site_zone(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(site, zone)| !site.is_empty() && !zone.is_empty())
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .ok_or_else(|| format!("`{s}`: use SITE=ZONE, e.g. clinic-a=Europe/Berlin"))
}

/// Sites' time zones: a site's day is its own, whatever zone the viewer is in.
#[derive(Clone, Debug)]
pub struct Zones {
    default: jiff::tz::TimeZone,
    default_name: String,
    sites: BTreeMap<String, (String, jiff::tz::TimeZone)>,
}

impl Zones {
    /// Reads the zones from the system's tz database.
    pub fn parse(default: &str, sites: &[(String, String)]) -> anyhow::Result<Zones> {
        let get = |name: &str| {
            jiff::tz::TimeZone::get(name).with_context(|| {
                format!(
                    "time zone `{name}`: not in the system's tz database (e.g. Europe/Berlin, UTC)"
                )
            })
        };
        Ok(Zones {
            default: get(default)?,
            default_name: default.to_owned(),
            sites: sites
                .iter()
                .map(|(s, z)| Ok((s.clone(), (z.clone(), get(z)?))))
                .collect::<anyhow::Result<_>>()?,
        })
    }

    fn zone(&self, site: &str) -> (&str, &jiff::tz::TimeZone) {
        match self.sites.get(site) {
            Some((name, tz)) => (name, tz),
            None => (&self.default_name, &self.default),
        }
    }

    /// The zone's name for a site.
    pub fn name(&self, site: &str) -> &str {
        self.zone(site).0
    }

    /// `YYYY-MM-DD` at the site when `t` happened.
    pub fn day(&self, site: &str, t: jiff::Timestamp) -> String {
        t.to_zoned(self.zone(site).1.clone()).date().to_string()
    }
}

/// Everything fv-fleet runs with, resolved once.
#[derive(Clone, Debug)]
pub struct Settings {
    pub broker: BrokerUrl,
    pub credentials: Option<(String, String)>,
    pub client_id: String,
    pub prefix: String,
    /// `$share/GROUP/` before each filter, or nothing.
    pub share_group: Option<String>,
    /// No ingester: the API only.
    pub api_only: bool,
    pub db: String,
    pub listen: Option<SocketAddr>,
    pub token: Option<String>,
    pub retention: Duration,
    pub zones: Zones,
    pub gone_after: Duration,
    pub dashboard_broker: Option<String>,
    pub admission: crate::ingest::Admission,
    /// TLS to the broker (`mqtts://`).
    pub tls: Option<Tls>,
    /// What the drift watch expects of a unit's day, from the classifier's manifest.
    pub expected: Option<fv_core::drift::Expected>,
}

/// What a TLS connection to the broker needs, read once at start.
#[derive(Clone, Debug)]
pub struct Tls {
    /// The CA certificate (PEM).
    pub ca: Vec<u8>,
    /// fv-fleet's certificate and key (PEM), when the broker asks for one.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl Settings {
    /// Checks and resolves the flags; the error names the flag and the fix.
    pub fn resolve(a: ServeArgs) -> anyhow::Result<Settings> {
        let broker: BrokerUrl = a.mqtt.parse()?;
        let read = |flag: &str, p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| anyhow::anyhow!("{flag} {}: cannot read: {e}", p.display()))
        };
        let tls = if broker.tls {
            let ca = a.ca_file.as_deref().ok_or_else(|| {
                anyhow::anyhow!(
                    "--mqtt {}: mqtts:// needs --ca-file (the broker's CA certificate, PEM)",
                    a.mqtt
                )
            })?;
            let client = match (&a.client_cert, &a.client_key) {
                (Some(c), Some(k)) => Some((read("--client-cert", c)?, read("--client-key", k)?)),
                _ => None,
            };
            Some(Tls {
                ca: read("--ca-file", ca)?,
                client,
            })
        } else {
            anyhow::ensure!(
                a.ca_file.is_none() && a.client_cert.is_none(),
                "--mqtt {}: certificates are for mqtts://; use mqtts://HOST:8883",
                a.mqtt
            );
            None
        };
        let credentials = match (
            a.mqtt_username,
            std::env::var("FV_FLEET_MQTT_PASSWORD").ok(),
        ) {
            (Some(u), Some(p)) => Some((u, p)),
            (Some(u), None) => Some((u, String::new())),
            (None, _) => None,
        };
        let listen = a
            .listen
            .as_deref()
            .map(|l| {
                l.parse::<u16>()
                    .map(|port| SocketAddr::from(([0, 0, 0, 0], port)))
                    .or_else(|_| l.parse())
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "--listen `{l}`: use PORT or ADDR:PORT, e.g. 127.0.0.1:8090"
                        )
                    })
            })
            .transpose()?;
        let token = a.token.filter(|t| !t.is_empty());
        if let Some(addr) = listen {
            anyhow::ensure!(
                token.is_some() || addr.ip().is_loopback(),
                "--listen {addr}: the API would be open to the network; set --token (or \
                 FV_FLEET_TOKEN), or listen on 127.0.0.1"
            );
        }
        anyhow::ensure!(
            !a.prefix.is_empty() && !a.prefix.contains(['+', '#']),
            "--prefix `{}`: a topic prefix without wildcards, e.g. {DEFAULT_PREFIX}",
            a.prefix
        );
        anyhow::ensure!(a.retention_days > 0, "--retention-days must be at least 1");
        if let Some(g) = &a.share_group {
            anyhow::ensure!(
                !g.is_empty() && !g.contains(['/', '+', '#']),
                "--share-group `{g}`: a name without `/`, `+` or `#`, e.g. fleet"
            );
        }
        anyhow::ensure!(
            !a.api_only || listen.is_some(),
            "--api-only needs --listen: with neither ingester nor API there is nothing to run"
        );
        Ok(Settings {
            broker,
            credentials,
            client_id: a.client_id,
            prefix: a.prefix.trim_end_matches('/').to_owned(),
            share_group: a.share_group,
            api_only: a.api_only,
            db: a.db,
            listen,
            token,
            retention: Duration::from_secs(u64::from(a.retention_days) * 86_400),
            zones: Zones::parse(&a.zone, &a.site_zones)?,
            gone_after: a.gone_after.into(),
            dashboard_broker: a.dashboard_broker,
            tls,
            admission: match &a.units {
                Some(path) => crate::ingest::Admission::from_file(path)?,
                None => crate::ingest::Admission::Any,
            },
            expected: a.expect.as_deref().map(expected_of).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn resolve(args: &[&str]) -> anyhow::Result<Settings> {
        Settings::resolve(Cli::try_parse_from([&["fv-fleet"], args].concat())?.serve)
    }

    #[test]
    fn defaults_and_refusals() {
        let s = resolve(&[]).unwrap();
        assert_eq!(s.broker.port, 1883);
        assert_eq!(s.retention, Duration::from_secs(400 * 86_400));
        assert!(s.listen.is_none());
        // Open to the network without a token: refused, saying how to fix it.
        let e = resolve(&["--listen", "8090"]).unwrap_err().to_string();
        assert!(e.contains("--token"), "{e}");
        assert!(resolve(&["--listen", "127.0.0.1:8090"]).is_ok());
        assert!(resolve(&["--listen", "8090", "--token", "t"]).is_ok());
        let e = resolve(&["--zone", "Mars/Olympus"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("Mars/Olympus"), "{e}");
        assert!(resolve(&["--site-zone", "clinic-a"]).is_err());
        let e = resolve(&["--mqtt", "mqtts://b:8883"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--ca-file"), "{e}");
        let e = resolve(&[
            "--mqtt",
            "mqtts://b:8883",
            "--ca-file",
            "/nonexistent/ca.pem",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
