//! MQTT publishing with store-and-forward.
//!
//! One thread owns the connection. Results are taken from the on-disk outbox in order,
//! published at QoS 1, and deleted when their PUBACK arrives. The session is clean: after a
//! reconnect nothing is replayed by the client library, and the outbox (the single source of
//! truth) is published again from its oldest entry. A retained `status` says online, with a
//! last will that says offline; a `heartbeat` reports health every few seconds.

use crate::outbox::{Entry, Outbox, OutboxLimits};
use anyhow::Context as _;
use fv_core::result::ModelRef;
use rumqttc::{
    Client, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, RecvTimeoutError,
    TlsConfiguration, Transport,
};
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counters shared with the worker, reported in heartbeats.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Inputs read successfully.
    pub processed: u64,
    /// Inputs that failed.
    pub failed: u64,
    /// The last failure's message.
    pub last_error: Option<String>,
}

/// `fractuvision/v1/{site}/{device}/…`.
#[derive(Clone, Debug)]
pub struct Topics {
    /// Results, QoS 1.
    pub result: String,
    /// Retained online/offline.
    pub status: String,
    /// Health.
    pub heartbeat: String,
}

impl Topics {
    /// The topics of one device.
    pub fn new(site: &str, device: &str) -> Self {
        let base = format!("fractuvision/v1/{site}/{device}");
        Topics {
            result: format!("{base}/result"),
            status: format!("{base}/status"),
            heartbeat: format!("{base}/heartbeat"),
        }
    }
}

/// What the publisher needs.
pub struct Publisher {
    /// Broker URL.
    pub url: String,
    /// Client id: the device id.
    pub client_id: String,
    /// Site.
    pub site: String,
    /// Credentials.
    pub credentials: Option<(String, String)>,
    /// CA for TLS.
    pub ca_file: Option<PathBuf>,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Topics.
    pub topics: Topics,
    /// Outbox directory and bounds.
    pub outbox: (PathBuf, OutboxLimits),
    /// Models, for status and heartbeat.
    pub models: Vec<ModelRef>,
    /// Shared counters.
    pub stats: Arc<Mutex<Stats>>,
    /// Set on SIGTERM.
    pub shutdown: Arc<AtomicBool>,
    /// Set by the worker when it has stopped producing.
    pub worker_done: Arc<AtomicBool>,
}

/// `(tls, host, port)` of `mqtt://HOST[:PORT]` (1883) or `mqtts://HOST[:PORT]` (8883).
pub fn parse_url(url: &str) -> anyhow::Result<(bool, String, u16)> {
    let bad = || anyhow::anyhow!("MQTT URL `{url}`: use mqtt://HOST:PORT or mqtts://HOST:PORT");
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let tls = match scheme {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        _ => return Err(bad()),
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    anyhow::ensure!(!host.is_empty(), bad());
    Ok((tls, host.to_owned(), port))
}

/// At most this many results between publish and PUBACK.
const WINDOW: usize = 32;

impl Publisher {
    fn status(&self, state: &str, reason: Option<&str>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "state": state,
            "reason": reason,
            "site": self.site,
            "device": self.client_id,
            "version": env!("CARGO_PKG_VERSION"),
            "models": self.models,
            "heartbeat_s": self.heartbeat.as_secs(),
            "ts": crate::pipeline::now_rfc3339(),
        }))
        .expect("status is JSON")
    }

    fn options(&self) -> anyhow::Result<MqttOptions> {
        let (tls, host, port) = parse_url(&self.url)?;
        let mut o = MqttOptions::new(&self.client_id, host, port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_clean_session(true);
        o.set_last_will(LastWill::new(
            &self.topics.status,
            self.status("offline", Some("connection lost")),
            QoS::AtLeastOnce,
            true,
        ));
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u, p);
        }
        if tls {
            let ca_file = self.ca_file.as_ref().context(
                "mqtts:// needs `ca_file` (the broker's CA certificate, PEM) in the [mqtt] config",
            )?;
            let ca = std::fs::read(ca_file).with_context(|| {
                format!("{}: cannot read the CA certificate", ca_file.display())
            })?;
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth: None,
            }));
        }
        Ok(o)
    }

    /// Runs until shutdown: publishes the outbox, status and heartbeats.
    pub fn run(self) -> anyhow::Result<()> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let outbox = Outbox::open(&self.outbox.0, self.outbox.1)?;
        let (client, mut conn) = Client::new(self.options()?, 256);
        let started = Instant::now();
        let mut connected = false;
        let mut order: VecDeque<Option<Entry>> = VecDeque::new();
        let mut inflight: HashMap<u16, Entry> = HashMap::new();
        let mut handed: HashSet<u64> = HashSet::new();
        let mut next_heartbeat = Instant::now();
        let mut backoff = Duration::from_millis(200);
        let mut flush_deadline: Option<Instant> = None;
        let mut offline_sent = false;
        let mut last_refusal: Option<String> = None;
        loop {
            let stopping = self.shutdown.load(Ordering::SeqCst);
            if stopping && flush_deadline.is_none() {
                flush_deadline = Some(Instant::now() + Duration::from_secs(5));
            }
            if stopping && !connected {
                tracing::info!(
                    "mqtt: stopping while offline; {} results stay queued",
                    outbox.depth()
                );
                return Ok(());
            }
            let idle = order.is_empty() && inflight.is_empty();
            let drained = self.worker_done.load(Ordering::SeqCst) && idle && outbox.depth() == 0;
            if stopping
                && !offline_sent
                && (drained || flush_deadline.is_some_and(|d| Instant::now() > d))
            {
                client.try_publish(
                    &self.topics.status,
                    QoS::AtLeastOnce,
                    true,
                    self.status("offline", Some("shutdown")),
                )?;
                order.push_back(None);
                offline_sent = true;
                flush_deadline = Some(Instant::now() + Duration::from_secs(2));
            }
            if offline_sent
                && (order.is_empty() && inflight.is_empty()
                    || flush_deadline.is_some_and(|d| Instant::now() > d))
            {
                let _ = client.disconnect();
                // Let the DISCONNECT go out.
                let _ = conn.recv_timeout(Duration::from_millis(200));
                tracing::info!(
                    "mqtt: offline status published; {} results stay queued",
                    outbox.depth()
                );
                return Ok(());
            }
            if connected && !offline_sent {
                if order.len() + inflight.len() < WINDOW {
                    for e in outbox.entries()? {
                        if order.len() + inflight.len() >= WINDOW {
                            break;
                        }
                        if handed.contains(&e.seq) {
                            continue;
                        }
                        let Ok(payload) = outbox.read(&e) else {
                            continue;
                        };
                        if client
                            .try_publish(&self.topics.result, QoS::AtLeastOnce, false, payload)
                            .is_err()
                        {
                            break;
                        }
                        handed.insert(e.seq);
                        order.push_back(Some(e));
                    }
                }
                if Instant::now() >= next_heartbeat {
                    let stats = self.stats.lock().expect("stats lock").clone();
                    let hb = serde_json::json!({
                        "uptime_s": started.elapsed().as_secs(),
                        // Lets a dashboard judge staleness without knowing our config.
                        "interval_s": self.heartbeat.as_secs(),
                        "outbox_depth": outbox.depth(),
                        "dropped": outbox.dropped(),
                        "processed": stats.processed,
                        "failed": stats.failed,
                        "last_error": stats.last_error,
                        "models": self.models,
                        "ts": crate::pipeline::now_rfc3339(),
                    });
                    if client
                        .try_publish(
                            &self.topics.heartbeat,
                            QoS::AtMostOnce,
                            false,
                            hb.to_string(),
                        )
                        .is_ok()
                    {
                        order.push_back(None);
                    }
                    next_heartbeat = Instant::now() + self.heartbeat;
                }
            }
            match conn.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    tracing::info!(
                        "mqtt: connected to {}; {} results queued",
                        self.url,
                        outbox.depth()
                    );
                    connected = true;
                    last_refusal = None;
                    backoff = Duration::from_millis(200);
                    order.clear();
                    inflight.clear();
                    handed.clear();
                    client.try_publish(
                        &self.topics.status,
                        QoS::AtLeastOnce,
                        true,
                        self.status("online", None),
                    )?;
                    order.push_back(None);
                }
                Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                    if let Some(Some(e)) = order.pop_front() {
                        inflight.insert(pkid, e);
                    }
                }
                Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                    if let Some(e) = inflight.remove(&ack.pkid) {
                        outbox.remove(&e)?;
                        handed.remove(&e.seq);
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    if connected {
                        tracing::warn!(
                            "mqtt: connection to {} lost: {e}; results queue on disk",
                            self.url
                        );
                    } else if matches!(e, rumqttc::ConnectionError::ConnectionRefused(_)) {
                        // Refused credentials or client id won't fix themselves: say so once
                        // per kind of refusal, not at every retry.
                        let why = e.to_string();
                        if last_refusal.as_deref() != Some(why.as_str()) {
                            tracing::error!(
                                "mqtt: {} refused the connection: {why}; check [mqtt] username, password and the broker's ACL. Retrying with backoff up to 5 s; results queue on disk",
                                self.url
                            );
                            last_refusal = Some(why);
                        }
                    } else {
                        tracing::debug!("mqtt: cannot connect to {}: {e}", self.url);
                    }
                    connected = false;
                    order.clear();
                    inflight.clear();
                    handed.clear();
                    // Wait before reconnecting, waking for shutdown.
                    let until = Instant::now() + backoff;
                    while Instant::now() < until && !self.shutdown.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }
}
