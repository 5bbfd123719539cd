//! `fv-fleet load`: simulated units publish results (QoS 1) and heartbeats through a real
//! broker at a fixed rate, then the running fv-fleet's `/api/stats` says how many it stored
//! and how late. For BENCHMARKS.md; the messages are shaped like fv-edge's.

use crate::http_get;
use crate::settings::DEFAULT_PREFIX;
use fv_core::broker::BrokerUrl;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `fv-fleet load`'s flags.
#[derive(Clone, Debug, clap::Args)]
pub struct LoadArgs {
    /// The broker the units publish to.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub mqtt: String,
    /// fv-fleet's address, e.g. http://127.0.0.1:8090.
    #[arg(long)]
    pub api: String,
    /// The API token, if fv-fleet has one.
    #[arg(long, env = "FV_FLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Simulated units.
    #[arg(long, default_value_t = 50)]
    pub units: u32,
    /// Results per second per unit.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// How long the units publish.
    #[arg(long, default_value = "5min")]
    pub duration: humantime::Duration,
    /// Topic prefix.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// How long to wait after publishing for fv-fleet to store everything.
    #[arg(long, default_value = "2min")]
    pub drain_timeout: humantime::Duration,
}

fn stored(api: &str, token: Option<&str>, since: &str) -> anyhow::Result<serde_json::Value> {
    let (status, body) = http_get(&format!("{api}/api/stats?since={since}"), token)?;
    anyhow::ensure!(status == 200, "GET {api}/api/stats: HTTP {status}: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// Publishes, waits for fv-fleet to store it all, prints a JSON summary.
pub async fn run(a: LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.rate > 0.0 && a.units > 0,
        "--rate and --units must be positive"
    );
    let broker: BrokerUrl = a.mqtt.parse()?;
    let api = a.api.trim_end_matches('/').to_owned();
    let token = a.token.clone();
    let start = jiff::Timestamp::now();
    let since = start.to_string();
    let before = {
        let (api, token, since) = (api.clone(), token.clone(), since.clone());
        tokio::task::spawn_blocking(move || stored(&api, token.as_deref(), &since)).await??
    };
    let base = before["results"].as_i64().unwrap_or(0);
    let run_id = start.as_millisecond();
    let published = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let duration: Duration = a.duration.into();
    let mut tasks = Vec::new();
    for i in 0..a.units {
        let (broker, prefix) = (broker.clone(), a.prefix.clone());
        let (published, acked) = (published.clone(), acked.clone());
        let period = Duration::from_secs_f64(1.0 / a.rate);
        tasks.push(tokio::spawn(async move {
            let site = format!("site-{}", i % 5);
            let device = format!("load-{i}");
            let mut o = MqttOptions::new(format!("fv-load-{run_id}-{i}"), broker.host, broker.port);
            o.set_keep_alive(Duration::from_secs(15));
            let (client, mut eventloop) = AsyncClient::new(o, 256);
            let base = format!("{prefix}/{site}/{device}");
            let driver = tokio::spawn(async move {
                while let Ok(e) = eventloop.poll().await {
                    if let Event::Incoming(Packet::PubAck(_)) = e {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            // Spread the units over one period so that they do not publish in lockstep.
            tokio::time::sleep(period.mul_f64(f64::from(i) / 50.0 % 1.0)).await;
            let mut tick = tokio::time::interval(period);
            let mut seq = 0u64;
            while t0.elapsed() < duration {
                tick.tick().await;
                let now = jiff::Timestamp::now().to_string();
                let (finding, p) = match seq % 10 {
                    0 => ("fracture", 0.91),
                    1 | 2 => ("suspicious", 0.42),
                    _ => ("no_fracture", 0.05),
                };
                let msg = json!({
                    "schema": "fractuvision.result/1",
                    "id": format!("load-{run_id}-{i}-{seq}"),
                    "site": site, "device": device,
                    "source": {"kind": "file", "name": format!("img{seq}.jpg")},
                    "study": null, "captured_at": null, "processed_at": now,
                    "models": [{"name": "classifier", "version": "load", "precision": "fp32", "sha256": "0"}],
                    "timing_ms": {"decode": 1.0, "preprocess": 1.0, "classify": 10.0, "detect": null, "total": 12.0},
                    "finding": finding, "fracture_probability": p, "boxes": [],
                });
                if client
                    .publish(format!("{base}/result"), QoS::AtLeastOnce, false, msg.to_string())
                    .await
                    .is_ok()
                {
                    published.fetch_add(1, Ordering::Relaxed);
                }
                if seq.is_multiple_of((10.0 * a.rate).max(1.0) as u64) {
                    let hb = json!({"ts": now, "uptime_s": seq, "interval_s": 10, "outbox_depth": 0,
                        "processed": seq, "failed": 0});
                    let _ = client
                        .publish(format!("{base}/heartbeat"), QoS::AtMostOnce, false, hb.to_string())
                        .await;
                }
                seq += 1;
            }
            // Let the last PUBACKs come in before leaving.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
        }));
    }
    for t in tasks {
        t.await?;
    }
    let publish_s = t0.elapsed().as_secs_f64();
    let published = published.load(Ordering::Relaxed) as i64;
    let acked = acked.load(Ordering::Relaxed) as i64;
    // Until everything the broker took is stored, or the drain timeout.
    let drain_start = Instant::now();
    let after = loop {
        let (api, token, since) = (api.clone(), token.clone(), since.clone());
        let s =
            tokio::task::spawn_blocking(move || stored(&api, token.as_deref(), &since)).await??;
        let n = s["results"].as_i64().unwrap_or(0) - base;
        if n >= acked || drain_start.elapsed() > Duration::from(a.drain_timeout) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let stored_n = after["results"].as_i64().unwrap_or(0) - base;
    let total_s = t0.elapsed().as_secs_f64();
    let summary = json!({
        "units": a.units,
        "rate_per_unit_per_s": a.rate,
        "publish_s": publish_s,
        "published": published,
        "acked_by_broker": acked,
        "stored": stored_n,
        "drain_s": drain_start.elapsed().as_secs_f64(),
        "stored_per_s": stored_n as f64 / total_s,
        "lag_ms": after["lag_ms"],
        "database": after["database"],
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    anyhow::ensure!(
        stored_n >= acked,
        "fv-fleet stored {stored_n} of the {acked} results the broker accepted"
    );
    Ok(())
}
