//! fv-fleet: the fleet's history. It subscribes to every unit's results, statuses and
//! heartbeats with a persistent MQTT session, keeps them in SQLite or PostgreSQL
//! ([`store`]), and serves the dashboard with a read-only HTTP API ([`api`]).
//!
//! Layout: `settings` (flags resolved once), `ingest` (MQTT → records → store, acknowledged
//! only once stored), `store` (the one query layer, schema migrations, retention), `uptime`
//! (online intervals from statuses and heartbeats), `api` (axum), `load` (a load generator for
//! BENCHMARKS.md). No patient data: the store keeps what MQTT carries, less file names.

pub mod api;
pub mod ingest;
pub mod load;
pub mod settings;
pub mod store;
pub mod uptime;

use settings::Settings;
use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::time::Duration;
use store::{now_ms, Store};
use tokio::sync::watch;

/// How often old history is deleted.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Runs the ingester, the retention sweep and (with `--listen`) the API until `shutdown`.
pub async fn serve(settings: Settings, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let store = Store::open(&settings.db).await?;
    tracing::info!(
        "database {} ({:?})",
        store::redacted(&settings.db),
        store.backend()
    );
    let listener = match settings.listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("--listen {addr}: cannot listen: {e} (is the port in use?)")
        })?),
        None => None,
    };
    let ingest = (!settings.api_only).then(|| {
        tokio::spawn(ingest::run(
            store.clone(),
            settings.clone(),
            shutdown.clone(),
        ))
    });
    // The ingesters keep the store trim; an API-only instance may sit on a read replica.
    let retention = (!settings.api_only).then(|| {
        let (store, keep, mut shutdown) = (store.clone(), settings.retention, shutdown.clone());
        tokio::spawn(async move {
            loop {
                let cutoff = now_ms() - keep.as_millis() as i64;
                match store.expire(cutoff, 5000).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("retention: deleted {n} rows older than {keep:?}"),
                    Err(e) => tracing::error!("retention: {e}"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETENTION_EVERY) => {}
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
            }
        })
    });
    if let Some(listener) = listener {
        let addr = listener.local_addr()?;
        tracing::info!("dashboard and API on http://{addr}/");
        let state = Arc::new(api::ApiState {
            store,
            settings: settings.clone(),
        });
        let mut stop = shutdown.clone();
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await?;
    }
    if let Some(ingest) = ingest {
        let _ = ingest.await;
    }
    if let Some(retention) = retention {
        let _ = retention.await;
    }
    Ok(())
}

/// A plain HTTP/1.0 GET (the load generator and the tests read the API with it):
/// `(status, body)`.
pub fn http_get(url: &str, token: Option<&str>) -> anyhow::Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("`{url}`: only http:// URLs"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut s = std::net::TcpStream::connect(host)
        .map_err(|e| anyhow::anyhow!("GET {url}: cannot connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n{auth}\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("GET {url}: no HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("GET {url}: bad status line"))?;
    Ok((status, body.to_owned()))
}
