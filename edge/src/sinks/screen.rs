//! The reading screen at the unit (`[screen] listen`): for the radiographer, within a second
//! of each result, the image with its boxes (the overlay fv-edge already renders), the finding
//! and the calibrated probability in words, the day's last readings and what is still waiting
//! for the network. It needs nothing beyond the unit: no broker, no PACS, no internet.
//!
//! It shows patient data (the input's real name) on the unit's own screen only: nothing of it
//! reaches MQTT or the fleet. It listens on loopback unless configured otherwise, and then
//! only with a token (`?token=` or `Authorization: Bearer`).

use crate::health::Stats;
use crate::sinks::outbox::SharedOutbox;
use anyhow::Context as _;
use fv_core::result::ResultMessage;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq as _;

/// `[screen]` in the config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScreenSettings {
    /// `ADDR:PORT` (or `PORT`, loopback) to serve the page on; off when unset.
    pub listen: Option<String>,
    /// Required on every request when `listen` is not a loopback address.
    pub token: Option<String>,
    /// Readings listed (default 12).
    pub recent: Option<usize>,
}

/// Readings kept for the page when `recent` is unset.
pub const DEFAULT_RECENT: usize = 12;

/// One reading as the page shows it.
struct Shown {
    seq: u64,
    message: ResultMessage,
    overlay: Option<PathBuf>,
}

/// The readings on the screen, newest first, and the number the next one gets.
#[derive(Default)]
struct Recent {
    shown: VecDeque<Shown>,
    next: u64,
}

/// What the page reads: the latest readings and the queues' state.
pub struct Screen {
    recent: Mutex<Recent>,
    keep: usize,
    outbox: Option<SharedOutbox>,
    stats: Arc<Mutex<Stats>>,
}

impl Screen {
    /// A screen keeping `keep` readings, reporting the fleet outbox and the PACS queue.
    pub fn new(keep: usize, outbox: Option<SharedOutbox>, stats: Arc<Mutex<Stats>>) -> Self {
        Screen {
            recent: Mutex::default(),
            keep: keep.max(1),
            outbox,
            stats,
        }
    }

    /// A result was written locally: on the screen from now; returns its number.
    pub fn show(&self, message: &ResultMessage) -> u64 {
        let mut r = self.lock();
        r.next += 1;
        let seq = r.next;
        r.shown.push_front(Shown {
            seq,
            message: message.clone(),
            overlay: None,
        });
        r.shown.truncate(self.keep);
        seq
    }

    /// Reading `seq`'s overlay is written at `png`.
    pub fn overlay_ready(&self, seq: u64, png: PathBuf) {
        if let Some(s) = self.lock().shown.iter_mut().find(|s| s.seq == seq) {
            s.overlay = Some(png);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self) -> serde_json::Value {
        let today = crate::pipeline::now_rfc3339()[..10].to_owned();
        let readings: Vec<serde_json::Value> = self
            .lock()
            .shown
            .iter()
            .filter(|s| s.message.processed_at.starts_with(&today))
            .map(|s| {
                let m = &s.message;
                serde_json::json!({
                    "seq": s.seq,
                    "name": m.source.name,
                    "processed_at": m.processed_at,
                    "finding": m.finding,
                    "probability": m.fracture_probability,
                    "boxes": m.boxes,
                    "localization": m.localization,
                    "error": m.error.as_ref().map(|e| &e.message),
                    "overlay": s.overlay.as_ref().map(|_| format!("overlay/{}.png", s.seq)),
                })
            })
            .collect();
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let fleet = self
            .outbox
            .as_ref()
            .map(|o| o.lock().unwrap_or_else(|p| p.into_inner()).depth());
        serde_json::json!({
            "readings": readings,
            "waiting": {
                "fleet": fleet,
                "fleet_link": stats.publisher_stalled,
                "pacs": stats.pacs_outbox_depth,
                "pacs_link": stats.pacs_stalled,
            },
        })
    }

    fn overlay(&self, seq: u64) -> Option<PathBuf> {
        self.lock()
            .shown
            .iter()
            .find(|s| s.seq == seq)
            .and_then(|s| s.overlay.clone())
    }
}

static PAGE: &str = include_str!("screen.html");

/// `PORT` → `127.0.0.1:PORT`; `ADDR:PORT` as given. Off loopback a token is required.
pub fn listen_addr(s: &ScreenSettings) -> anyhow::Result<Option<SocketAddr>> {
    let Some(listen) = s.listen.as_deref() else {
        return Ok(None);
    };
    let addr: SocketAddr = match listen.parse::<u16>() {
        Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
        Err(_) => listen.parse().map_err(|_| {
            anyhow::anyhow!(
                "[screen] listen `{listen}`: use PORT or ADDR:PORT, e.g. 127.0.0.1:8070"
            )
        })?,
    };
    anyhow::ensure!(
        addr.ip().is_loopback() || s.token.as_deref().is_some_and(|t| t.len() >= 16),
        "[screen] listen {addr}: the reading screen shows patient data; off loopback it needs a `token` of at least 16 characters"
    );
    Ok(Some(addr))
}

/// Whether the request carries the token. Compared in constant time: a timing difference
/// would let a host on the clinic's network guess the token byte by byte.
fn authorised(request: &tiny_http::Request, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let same = |given: &str| bool::from(given.as_bytes().ct_eq(token.as_bytes()));
    let bearer = request.headers().iter().any(|h| {
        h.field.equiv("Authorization") && h.value.as_str().strip_prefix("Bearer ").is_some_and(same)
    });
    let query = request.url().split_once('?').is_some_and(|(_, q)| {
        q.split('&')
            .any(|kv| kv.strip_prefix("token=").is_some_and(same))
    });
    bearer || query
}

fn header(k: &str, v: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("static header")
}

/// Serves the page on `addr` on a background thread until the process ends; returns the
/// bound address.
pub fn serve(
    addr: SocketAddr,
    token: Option<String>,
    screen: Arc<Screen>,
) -> anyhow::Result<SocketAddr> {
    let server = tiny_http::Server::http(addr).map_err(|e| {
        anyhow::anyhow!("[screen] cannot listen on {addr}: {e} (is the port in use?)")
    })?;
    let bound = server
        .server_addr()
        .to_ip()
        .context("[screen]: not an IP listener")?;
    std::thread::Builder::new()
        .name("screen".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let path = request.url().split('?').next().unwrap_or("").to_owned();
                let (status, ctype, body): (u16, &str, Vec<u8>) =
                    if !authorised(&request, token.as_deref()) {
                        (401, "text/plain", b"a token is required (?token=)".to_vec())
                    } else if *request.method() != tiny_http::Method::Get {
                        (405, "text/plain", b"read only".to_vec())
                    } else if path == "/" {
                        (200, "text/html; charset=utf-8", PAGE.as_bytes().to_vec())
                    } else if path == "/api/state" {
                        (
                            200,
                            "application/json",
                            screen.state().to_string().into_bytes(),
                        )
                    } else if let Some(seq) = path
                        .strip_prefix("/overlay/")
                        .and_then(|p| p.strip_suffix(".png"))
                        .and_then(|n| n.parse().ok())
                    {
                        match screen.overlay(seq).and_then(|p| std::fs::read(p).ok()) {
                            Some(png) => (200, "image/png", png),
                            None => (404, "text/plain", b"no such overlay".to_vec()),
                        }
                    } else {
                        (404, "text/plain", b"not found".to_vec())
                    };
                let response = tiny_http::Response::from_data(body)
                    .with_status_code(status)
                    .with_header(header("Content-Type", ctype))
                    .with_header(header("Cache-Control", "no-store"))
                    .with_header(header("X-Content-Type-Options", "nosniff"));
                if let Err(e) = request.respond(response) {
                    tracing::debug!("screen: {e}");
                }
            }
        })?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_opens_the_screen() {
        use tiny_http::TestRequest;
        let token = Some("a-long-enough-token");
        let at = |path: &str| tiny_http::Request::from(TestRequest::new().with_path(path));
        let bearer = |value: &str| {
            tiny_http::Request::from(
                TestRequest::new()
                    .with_path("/")
                    .with_header(header("Authorization", value)),
            )
        };
        assert!(authorised(&at("/?token=a-long-enough-token"), token));
        assert!(authorised(&at("/api?x=1&token=a-long-enough-token"), token));
        assert!(authorised(&bearer("Bearer a-long-enough-token"), token));
        for refused in [
            "/",
            "/?token=",
            "/?token=a-long-enough-toke",
            "/?token=a-long-enough-tokenX",
        ] {
            assert!(!authorised(&at(refused), token), "{refused}");
        }
        assert!(!authorised(&bearer("Bearer a-long-enough-toke"), token));
        assert!(!authorised(&bearer("a-long-enough-token"), token));
        assert!(authorised(&at("/"), None));
    }

    #[test]
    fn off_loopback_it_needs_a_token() {
        let s = |listen: &str, token: Option<&str>| ScreenSettings {
            listen: Some(listen.into()),
            token: token.map(str::to_owned),
            recent: None,
        };
        assert_eq!(
            listen_addr(&s("8070", None)).unwrap(),
            Some("127.0.0.1:8070".parse().unwrap())
        );
        let e = listen_addr(&s("0.0.0.0:8070", None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("token"), "{e}");
        assert!(listen_addr(&s("0.0.0.0:8070", Some("short"))).is_err());
        assert!(listen_addr(&s("0.0.0.0:8070", Some("a-long-enough-token"))).is_ok());
        assert_eq!(listen_addr(&ScreenSettings::default()).unwrap(), None);
    }
}
