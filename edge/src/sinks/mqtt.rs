//! MQTT publishing with store-and-forward.
//!
//! Results are taken from the on-disk outbox in order, published at QoS 1, and deleted when
//! their own PUBACK arrives. Each connection is a *session* with a fresh client: the client
//! library never replays anything of an earlier session, so the n-th publish request of a
//! session is the n-th `Outgoing::Publish` event of that session, which carries the packet id
//! its PUBACK will name. After a session ends the outbox (the single source of truth) is
//! published again from its oldest entry.
//!
//! The connection is driven by its own thread, blocked in rumqttc's `recv`: a connect is
//! never cut short by a poll timeout, so links of a second's round trip and more connect
//! (rumqttc's own connect timeout is raised to 30 s). Failed attempts are retried with
//! exponential backoff and jitter (0.5 s to 60 s), each logged once with its cause. The
//! retained `status` says online, with a last will that says offline; a `heartbeat` reports
//! health every few seconds, including a publisher that is stalled and why.

use crate::health::Stats;
use crate::sinks::outbox::{Entry, SharedOutbox};
use anyhow::Context as _;
use fv_core::result::ModelRef;
use fv_core::wire::{HeartbeatMessage, StatusMessage, Topics, UnitState};
use rumqttc::{
    Client, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the publisher needs.
pub struct Publisher {
    /// Broker URL.
    pub url: String,
    /// Client id: the device id.
    pub client_id: String,
    /// Site, reported in status messages (the topics already carry it).
    pub site: String,
    /// User name and password, when the broker asks for them.
    pub credentials: Option<(String, String)>,
    /// CA for TLS.
    pub ca_file: Option<PathBuf>,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Where results, status and heartbeats go.
    pub topics: Topics,
    /// The outbox, shared with the worker.
    pub outbox: SharedOutbox,
    /// Largest packet sent.
    pub max_packet_bytes: usize,
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
    let u: fv_core::broker::BrokerUrl = url.parse()?;
    Ok((u.tls, u.host, u.port))
}

/// At most this many results between publish and PUBACK.
const WINDOW: usize = 32;

/// The default largest packet: far above a result (a few KiB), far below what hurts a
/// broker.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 256 * 1024;

/// rumqttc's connect timeout (TCP, TLS and CONNACK together): a satellite link with TLS
/// needs four round trips of ~0.6 s before the first result can go.
const CONNECT_TIMEOUT_S: u64 = 30;

/// How a session ended.
enum SessionEnd {
    /// Shutdown handled (offline status sent or nothing to send).
    Stopped,
    /// No session came up.
    ConnectFailed(String),
    /// The session was up, then lost; with how many records it delivered.
    Lost(String, usize),
}

/// Exponential backoff with jitter, so that a fleet that lost its broker together does not
/// come back in lockstep.
struct Backoff {
    next: Duration,
    seed: u64,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(60);

    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Backoff {
            next: Self::FIRST,
            seed,
        }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The next wait: uniformly in [½, 1] of the current step, which then doubles.
    fn step(&mut self) -> Duration {
        // xorshift: jitter needs no cryptographic randomness.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let frac = 0.5 + (self.seed % 1000) as f64 / 2000.0;
        let wait = self.next.mul_f64(frac);
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }
}

impl Publisher {
    fn status(&self, state: UnitState, reason: Option<&str>) -> Vec<u8> {
        serde_json::to_vec(&StatusMessage {
            state,
            reason: reason.map(str::to_owned),
            site: self.site.clone(),
            device: self.client_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            models: self.models.clone(),
            heartbeat_s: self.heartbeat.as_secs(),
            ts: crate::pipeline::now_rfc3339(),
        })
        .expect("status is JSON")
    }

    /// The client options, or a configuration error that no retry can fix (bad URL,
    /// unreadable CA file): checked once at start-up, so the daemon stops and says what to
    /// fix instead of running without a fleet link.
    pub fn options(&self) -> anyhow::Result<MqttOptions> {
        let (tls, host, port) = parse_url(&self.url)?;
        let mut o = MqttOptions::new(&self.client_id, host, port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_clean_session(true);
        o.set_max_packet_size(1 << 20, self.max_packet_bytes);
        o.set_last_will(LastWill::new(
            &self.topics.status,
            self.status(UnitState::Offline, Some("connection lost")),
            QoS::AtLeastOnce,
            true,
        ));
        if let Some((u, p)) = &self.credentials {
            if !tls {
                tracing::warn!(
                    "mqtt: {} is plain mqtt://: the password for `{u}` crosses the network in clear; use mqtts:// with ca_file",
                    self.url
                );
            }
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

    fn stall(&self, why: Option<String>) {
        self.stats.lock().expect("stats lock").publisher_stalled = why;
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Runs until shutdown: sessions one after another, with backoff between failed ones.
    /// A panic inside a session (a library's assertion) is logged, shown in the heartbeat
    /// and followed by a new session: the publisher thread never ends before shutdown.
    pub fn run(self, options: MqttOptions) {
        loop {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.run_sessions(options.clone())
            }));
            match r {
                Ok(()) => return,
                Err(panic) => {
                    let what = crate::sources::input::panic_message(panic.as_ref());
                    tracing::error!("mqtt: the publisher panicked: {what}; restarting it in 5 s");
                    self.stall(Some(format!("publisher restarted after a panic: {what}")));
                    std::thread::sleep(Duration::from_secs(5));
                }
            }
        }
    }

    fn run_sessions(&self, options: MqttOptions) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let started = Instant::now();
        let mut backoff = Backoff::new();
        let mut attempt = 0u32;
        let mut last_refusal: Option<String> = None;
        loop {
            if self.stopping() {
                tracing::info!(
                    "mqtt: stopping while offline; {} results stay queued",
                    self.outbox.lock().expect("outbox lock").depth()
                );
                return;
            }
            attempt += 1;
            let began = Instant::now();
            let wait = match self.session(options.clone(), started) {
                SessionEnd::Stopped => return,
                SessionEnd::Lost(why, delivered) => {
                    last_refusal = None;
                    attempt = 0;
                    // A session that dies soon after it came up without delivering anything
                    // (a broker that drops us on some packet) must not become a reconnect
                    // storm; one that delivered was worth it, however short.
                    if delivered > 0 || began.elapsed() >= Duration::from_secs(30) {
                        backoff.reset();
                        tracing::warn!(
                            "mqtt: connection to {} lost: {why}; reconnecting, results queue on disk",
                            self.url
                        );
                        Duration::ZERO
                    } else {
                        let wait = backoff.step();
                        tracing::warn!(
                            "mqtt: connection to {} lost after {:.1}s: {why}; next try in {:.1}s, results queue on disk",
                            self.url,
                            began.elapsed().as_secs_f64(),
                            wait.as_secs_f64()
                        );
                        wait
                    }
                }
                SessionEnd::ConnectFailed(why) => {
                    let wait = backoff.step();
                    if why.contains("refused") {
                        // Refused credentials or client id won't fix themselves: say so
                        // once per kind of refusal, not at every retry.
                        if last_refusal.as_deref() != Some(why.as_str()) {
                            tracing::error!(
                                "mqtt: {} refused the connection: {why}; check [mqtt] username, password and the broker's ACL; retrying with backoff up to {}s, results queue on disk",
                                self.url,
                                Backoff::MAX.as_secs()
                            );
                            last_refusal = Some(why);
                        }
                    } else {
                        tracing::warn!(
                            "mqtt: cannot connect to {} (attempt {attempt}): {why}; next try in {:.1}s, results queue on disk",
                            self.url,
                            wait.as_secs_f64()
                        );
                    }
                    wait
                }
            };
            let until = Instant::now() + wait;
            while Instant::now() < until && !self.stopping() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// One session with a fresh client: connect, publish the outbox in order, match each
    /// PUBACK to its record by packet id, heartbeat; until the connection fails or shutdown.
    fn session(&self, options: MqttOptions, started: Instant) -> SessionEnd {
        let (client, mut conn) = Client::new(options, 256);
        let mut net = conn.eventloop.network_options();
        net.set_connection_timeout(CONNECT_TIMEOUT_S);
        conn.eventloop.set_network_options(net);
        let (tx, events) = std::sync::mpsc::channel::<Result<Event, ConnectionError>>();
        // The connection's own thread: blocked in `recv`, so a slow connect runs to its end.
        // It ends at the first error (this session is then over) or when the client is
        // dropped.
        let spawned = std::thread::Builder::new()
            .name("mqtt-conn".into())
            .spawn(move || loop {
                match conn.recv() {
                    Ok(Ok(ev)) => {
                        if tx.send(Ok(ev)).is_err() {
                            return;
                        }
                    }
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    Err(_) => return,
                }
            });
        if let Err(e) = spawned {
            return SessionEnd::ConnectFailed(format!("cannot start the connection thread: {e}"));
        }
        let connect_deadline = Instant::now() + Duration::from_secs(CONNECT_TIMEOUT_S + 5);
        let mut connected = false;
        // Requests in the order they were handed to the client: `Some` for a result, `None`
        // for a status or heartbeat.
        let mut order: VecDeque<Option<Entry>> = VecDeque::new();
        let mut inflight: HashMap<u16, Entry> = HashMap::new();
        let mut last_handed: Option<u64> = None;
        let mut next_heartbeat = Instant::now();
        let mut flush_deadline: Option<Instant> = None;
        let mut offline_sent = false;
        let mut delivered = 0usize;
        loop {
            let stopping = self.stopping();
            if stopping && !connected {
                return SessionEnd::Stopped;
            }
            if stopping && flush_deadline.is_none() {
                flush_deadline = Some(Instant::now() + Duration::from_secs(5));
            }
            let idle = order.is_empty() && inflight.is_empty();
            let drained = self.worker_done.load(Ordering::SeqCst)
                && idle
                && self.outbox.lock().expect("outbox lock").depth() == 0;
            if stopping
                && !offline_sent
                && (drained || flush_deadline.is_some_and(|d| Instant::now() > d))
            {
                if client
                    .try_publish(
                        &self.topics.status,
                        QoS::AtLeastOnce,
                        true,
                        self.status(UnitState::Offline, Some("shutdown")),
                    )
                    .is_ok()
                {
                    order.push_back(None);
                }
                offline_sent = true;
                flush_deadline = Some(Instant::now() + Duration::from_secs(2));
            }
            if offline_sent
                && (order.is_empty() && inflight.is_empty()
                    || flush_deadline.is_some_and(|d| Instant::now() > d))
            {
                let _ = client.disconnect();
                // Let the DISCONNECT go out.
                let until = Instant::now() + Duration::from_millis(500);
                while Instant::now() < until {
                    match events.recv_timeout(Duration::from_millis(50)) {
                        Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) => break,
                        Err(RecvTimeoutError::Disconnected) => break,
                        _ => {}
                    }
                }
                tracing::info!(
                    "mqtt: offline status published; {} results stay queued",
                    self.outbox.lock().expect("outbox lock").depth()
                );
                return SessionEnd::Stopped;
            }
            if connected && !offline_sent {
                if order.len() + inflight.len() < WINDOW {
                    self.hand_on(&client, &mut order, &inflight, &mut last_handed);
                }
                if Instant::now() >= next_heartbeat {
                    if client
                        .try_publish(
                            &self.topics.heartbeat,
                            QoS::AtMostOnce,
                            false,
                            self.heartbeat_payload(started),
                        )
                        .is_ok()
                    {
                        order.push_back(None);
                    }
                    next_heartbeat = Instant::now() + self.heartbeat;
                }
            }
            match events.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    tracing::info!(
                        "mqtt: connected to {}; {} results queued",
                        self.url,
                        self.outbox.lock().expect("outbox lock").depth()
                    );
                    connected = true;
                    if client
                        .try_publish(
                            &self.topics.status,
                            QoS::AtLeastOnce,
                            true,
                            self.status(UnitState::Online, None),
                        )
                        .is_ok()
                    {
                        order.push_back(None);
                    }
                }
                Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                    if let Some(Some(e)) = order.pop_front() {
                        inflight.insert(pkid, e);
                    }
                }
                Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                    if let Some(e) = inflight.remove(&ack.pkid) {
                        let removed = self.outbox.lock().expect("outbox lock").remove(&e);
                        delivered += 1;
                        match removed {
                            Ok(()) => self.stall(None),
                            Err(err) => {
                                // Delivered but still on disk: it goes again after the next
                                // reconnect (the same id: consumers de-duplicate).
                                tracing::error!("mqtt: {err:#}");
                                self.stall(Some(format!("publisher stalled: {err:#}")));
                            }
                        }
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let why = e.to_string();
                    return if connected {
                        SessionEnd::Lost(why, delivered)
                    } else if matches!(e, ConnectionError::ConnectionRefused(_)) {
                        SessionEnd::ConnectFailed(format!("refused: {why}"))
                    } else {
                        SessionEnd::ConnectFailed(why)
                    };
                }
                Err(RecvTimeoutError::Timeout) => {
                    if !connected && Instant::now() > connect_deadline {
                        return SessionEnd::ConnectFailed(format!(
                            "no CONNACK within {}s",
                            CONNECT_TIMEOUT_S + 5
                        ));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return if connected {
                        SessionEnd::Lost("the connection thread ended".into(), delivered)
                    } else {
                        SessionEnd::ConnectFailed("the connection thread ended".into())
                    };
                }
            }
        }
    }

    /// Hands the next outbox records to the client, up to the window. A record too large
    /// for one packet is set aside with its reason (it could never be sent, and would block
    /// every record behind it); a damaged one was set aside by the read.
    fn hand_on(
        &self,
        client: &Client,
        order: &mut VecDeque<Option<Entry>>,
        inflight: &HashMap<u16, Entry>,
        last_handed: &mut Option<u64>,
    ) {
        let room = WINDOW.saturating_sub(order.len() + inflight.len());
        let mut outbox = self.outbox.lock().expect("outbox lock");
        for e in outbox.after(*last_handed, room) {
            let payload = match outbox.read(&e) {
                Ok(p) => p,
                Err(err) => {
                    tracing::warn!("mqtt: skipping a record: {err:#}");
                    *last_handed = Some(e.seq);
                    continue;
                }
            };
            // PUBLISH: fixed header (≤ 5), topic length and topic, packet id, payload.
            let packet = 5 + 2 + self.topics.result.len() + 2 + payload.len();
            if packet > self.max_packet_bytes {
                let reason = format!(
                    "a {packet}-byte MQTT packet exceeds the limit of {} bytes ([mqtt] max_packet_bytes)",
                    self.max_packet_bytes
                );
                match outbox.drop_entry(&e, &reason) {
                    Ok(()) => self.stats.lock().expect("stats lock").oversized += 1,
                    Err(err) => {
                        tracing::error!("mqtt: {err:#}");
                        self.stall(Some(format!("publisher stalled: {err:#}")));
                    }
                }
                *last_handed = Some(e.seq);
                continue;
            }
            if client
                .try_publish(&self.topics.result, QoS::AtLeastOnce, false, payload)
                .is_err()
            {
                // The request queue is full: the rest waits for the next turn.
                break;
            }
            *last_handed = Some(e.seq);
            order.push_back(Some(e));
        }
    }

    fn heartbeat_payload(&self, started: Instant) -> String {
        let stats = self.stats.lock().expect("stats lock").clone();
        let (depth, dropped) = {
            let o = self.outbox.lock().expect("outbox lock");
            (o.depth(), o.dropped())
        };
        serde_json::to_string(&HeartbeatMessage {
            uptime_s: started.elapsed().as_secs(),
            interval_s: self.heartbeat.as_secs(),
            outbox_depth: depth as u64,
            dropped,
            oversized: stats.oversized,
            processed: stats.processed,
            failed: stats.failed,
            not_applicable: stats.not_applicable,
            last_error: stats.last_error,
            publisher: stats.publisher_stalled,
            pacs_outbox_depth: stats.pacs_outbox_depth.map(|d| d as u64),
            pacs_sent: stats.pacs_sent,
            pacs: stats.pacs_stalled,
            dicom: stats.dicom_refusing,
            models: self.models.clone(),
            ts: crate::pipeline::now_rfc3339(),
        })
        .expect("a heartbeat is JSON")
    }
}
