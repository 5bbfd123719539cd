//! Serves the fleet dashboard (`dashboard/` in the repository) on one port.
//!
//! The page's files are compiled into the binary (crate fv-dashboard), so a unit or a
//! workstation needs nothing besides fv-edge. Served from here the page is live only, with no
//! history (fv-fleet serves it with history): it connects from the browser to the broker's
//! MQTT-over-WebSockets listener. This server only hands out static files and, when
//! a broker is configured, a `config.json` naming it (never credentials).

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// `[dashboard]` in the config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardSettings {
    /// `PORT` (all interfaces) or `ADDR:PORT`.
    pub listen: Option<String>,
    /// The broker's WebSockets URL the page connects to, e.g. `ws://broker:9001`.
    pub broker: Option<String>,
    /// Topic prefix (default [`fv_core::wire::TOPIC_PREFIX`]).
    pub prefix: Option<String>,
}

/// `8080` → `0.0.0.0:8080`; `127.0.0.1:8080` as given.
pub fn listen_addr(listen: &str) -> anyhow::Result<SocketAddr> {
    let bad = || {
        anyhow::anyhow!(
            "dashboard address `{listen}`: use PORT (all interfaces) or ADDR:PORT, e.g. 127.0.0.1:8080"
        )
    };
    if let Ok(port) = listen.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    listen.parse().map_err(|_| bad())
}

/// A running dashboard server.
pub struct Server {
    /// The bound address (the real port when 0 was asked for).
    pub addr: SocketAddr,
    _thread: std::thread::JoinHandle<()>,
}

/// Binds and serves on a background thread until the process ends.
pub fn serve(settings: &DashboardSettings) -> anyhow::Result<Server> {
    let listen = settings.listen.as_deref().unwrap_or("8080");
    let addr = listen_addr(listen)?;
    let server = tiny_http::Server::http(addr).map_err(|e| {
        anyhow::anyhow!("dashboard: cannot listen on {addr}: {e} (is the port in use?)")
    })?;
    let addr = server
        .server_addr()
        .to_ip()
        .context("dashboard: not an IP listener")?;
    let config = settings.broker.as_ref().map(|b| {
        serde_json::json!({
            "broker": b,
            "prefix": settings
                .prefix
                .as_deref()
                .unwrap_or(fv_core::wire::TOPIC_PREFIX),
        })
        .to_string()
    });
    let thread = std::thread::Builder::new()
        .name("dashboard".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (status, ctype, body): (u16, &str, Vec<u8>) =
                    respond(request.method(), request.url(), config.as_deref());
                let response = tiny_http::Response::from_data(body)
                    .with_status_code(status)
                    .with_header(header("Content-Type", ctype))
                    // Always the files of this binary: no stale page after an upgrade.
                    .with_header(header("Cache-Control", "no-cache"))
                    .with_header(header("X-Content-Type-Options", "nosniff"));
                if let Err(e) = request.respond(response) {
                    tracing::debug!("dashboard: {e}");
                }
            }
        })?;
    tracing::info!("dashboard on http://{addr}/");
    Ok(Server {
        addr,
        _thread: thread,
    })
}

fn header(k: &str, v: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("static header")
}

fn respond(
    method: &tiny_http::Method,
    url: &str,
    config: Option<&str>,
) -> (u16, &'static str, Vec<u8>) {
    if !matches!(method, tiny_http::Method::Get | tiny_http::Method::Head) {
        return (405, "text/plain", b"only GET\n".to_vec());
    }
    let path = url.split(['?', '#']).next().unwrap_or("/");
    if path == "/config.json" {
        // `{}` when no broker is configured: the page then takes its query or asks.
        let body = config.unwrap_or("{}").as_bytes().to_vec();
        return (200, "application/json", body);
    }
    match fv_dashboard::asset(path) {
        Some(a) => (200, a.content_type, a.body.to_vec()),
        None => (404, "text/plain", b"not found\n".to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        assert_eq!(listen_addr("8080").unwrap().to_string(), "0.0.0.0:8080");
        assert_eq!(
            listen_addr("127.0.0.1:9").unwrap().to_string(),
            "127.0.0.1:9"
        );
        assert!(listen_addr("localhost").is_err());
    }

    #[test]
    fn serves_files_and_config() {
        let get = tiny_http::Method::Get;
        let (s, t, b) = respond(&get, "/?broker=ws://x:1", None);
        assert_eq!((s, t), (200, "text/html; charset=utf-8"));
        assert!(String::from_utf8(b).unwrap().contains("FractuVision fleet"));
        assert_eq!(respond(&get, "/vendor/mqtt.esm.js", None).0, 200);
        assert_eq!(respond(&get, "/config.json", None).2, b"{}");
        let (s, _, b) = respond(&get, "/config.json", Some("{\"broker\":\"ws://b:9\"}"));
        assert_eq!(s, 200);
        assert_eq!(b, b"{\"broker\":\"ws://b:9\"}");
        assert_eq!(respond(&get, "/../Cargo.toml", None).0, 404);
        assert_eq!(respond(&tiny_http::Method::Post, "/", None).0, 405);
    }
}
