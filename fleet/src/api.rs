//! The read-only HTTP API under `/api/` (JSON; CSV with `format=csv` where a table makes
//! sense) and the dashboard's files at `/`. Times are RFC 3339 in UTC: the page shows them in
//! the viewer's zone; days are each site's own (`--site-zone`).

use crate::settings::Settings;
use crate::store::{now_ms, FindingKey, ResultFilter, ResultSummary, Store, UnitState};
use crate::uptime;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The longest window `uptime` and `outbox` read (heartbeats are many).
const MAX_WINDOW_MS: i64 = 31 * 86_400_000;
/// The most results one page holds.
const MAX_LIMIT: i64 = 1000;

/// What the handlers share.
pub struct ApiState {
    pub store: Store,
    pub settings: Settings,
}

/// An API error: a status and a message naming what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("missing or wrong token: send `Authorization: Bearer TOKEN`")]
    Unauthorized,
    #[error("database unavailable; try again")]
    Database(#[from] sqlx::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Database(e) => {
                tracing::error!("API: database: {e}");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The API and the page.
pub fn router(state: Arc<ApiState>) -> Router {
    let api = Router::new()
        .route("/results", get(results))
        .route("/results/{id}", get(result_by_id))
        .route("/counts", get(counts))
        .route("/drift", get(drift))
        .route("/sites", get(sites))
        .route("/units", get(units))
        .route("/units/{site}/{device}/uptime", get(uptime))
        .route("/units/{site}/{device}/outbox", get(outbox))
        .route("/stats", get(stats))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .nest("/api", api)
        .route("/config.json", get(config))
        .fallback(static_file)
        .with_state(state)
}

async fn auth(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.settings.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.as_bytes(), token.as_bytes()) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

/// Equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn parse_time(name: &str, v: &str) -> ApiResult<i64> {
    v.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| {
            ApiError::BadRequest(format!(
                "{name}=`{v}`: not an RFC 3339 time such as 2026-12-01T00:00:00Z ({e})"
            ))
        })
}

/// `[since, until)` from a query, defaulting to the last `default_ms`.
fn window(since: Option<&str>, until: Option<&str>, default_ms: i64) -> ApiResult<(i64, i64)> {
    let to = until
        .map(|u| parse_time("until", u))
        .transpose()?
        .unwrap_or_else(now_ms);
    let from = since
        .map(|s| parse_time("since", s))
        .transpose()?
        .unwrap_or(to - default_ms);
    if from >= to {
        return Err(ApiError::BadRequest("since must be before until".into()));
    }
    Ok((from, to))
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Json,
    Csv,
}

fn csv_response<R: AsRef<[u8]>>(
    header_row: &[&str],
    rows: impl IntoIterator<Item = Vec<R>>,
) -> Response {
    let write = || -> anyhow::Result<Vec<u8>> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(header_row)?;
        for r in rows {
            w.write_record(&r)?;
        }
        Ok(w.into_inner()?)
    };
    match write() {
        Ok(body) => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct ResultsQuery {
    since: Option<String>,
    until: Option<String>,
    site: Option<String>,
    device: Option<String>,
    day: Option<String>,
    /// `asc` (oldest first) or `desc` (newest first, the default).
    order: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
    #[serde(default)]
    format: Format,
}

#[derive(Serialize)]
struct ResultView<'a> {
    id: &'a str,
    site: &'a str,
    device: &'a str,
    processed_at: String,
    day: &'a str,
    finding: &'a str,
    probability: Option<f64>,
    boxes: i64,
    error: Option<&'a str>,
}

impl<'a> From<&'a ResultSummary> for ResultView<'a> {
    fn from(r: &'a ResultSummary) -> Self {
        ResultView {
            id: &r.id,
            site: &r.site,
            device: &r.device,
            processed_at: rfc3339(r.processed_ms),
            day: &r.day,
            finding: r.finding,
            probability: r.probability,
            boxes: r.boxes,
            error: r.error.as_deref(),
        }
    }
}

/// `GET /api/results?since=&until=&site=&device=&day=&order=&limit=&offset=&format=`
async fn results(
    State(state): State<Arc<ApiState>>,
    Query(q): Query<ResultsQuery>,
) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit={limit}: between 1 and {MAX_LIMIT}"
        )));
    }
    let ascending = match q.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(o) => return Err(ApiError::BadRequest(format!("order=`{o}`: asc or desc"))),
    };
    let filter = ResultFilter {
        since_ms: q
            .since
            .as_deref()
            .map(|s| parse_time("since", s))
            .transpose()?,
        until_ms: q
            .until
            .as_deref()
            .map(|s| parse_time("until", s))
            .transpose()?,
        site: q.site,
        device: q.device,
        day: q.day,
        ascending,
        limit,
        offset: q.offset.unwrap_or(0).max(0),
    };
    let rows = state.store.results(&filter).await?;
    Ok(match q.format {
        Format::Json => Json(rows.iter().map(ResultView::from).collect::<Vec<_>>()).into_response(),
        Format::Csv => csv_response(
            &[
                "id",
                "site",
                "device",
                "processed_at",
                "day",
                "finding",
                "probability",
                "boxes",
                "error",
            ],
            rows.iter().map(|r| {
                vec![
                    r.id.clone(),
                    r.site.clone(),
                    r.device.clone(),
                    rfc3339(r.processed_ms),
                    r.day.clone(),
                    r.finding.to_owned(),
                    r.probability.map(|p| format!("{p:.4}")).unwrap_or_default(),
                    r.boxes.to_string(),
                    r.error.clone().unwrap_or_default(),
                ]
            }),
        ),
    })
}

/// `GET /api/results/{id}`: the message as the unit sent it, less its source file name.
async fn result_by_id(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    match state.store.result(&id).await? {
        Some(message) => {
            Ok(([(header::CONTENT_TYPE, "application/json")], message).into_response())
        }
        None => Err(ApiError::NotFound(format!("no result with id `{id}`"))),
    }
}

#[derive(Deserialize)]
struct CountsQuery {
    days: Option<u32>,
    #[serde(default)]
    format: Format,
}

#[derive(Serialize)]
struct DayCounts {
    site: String,
    day: String,
    fracture: i64,
    suspicious: i64,
    no_fracture: i64,
    not_applicable: i64,
    failed: i64,
}

/// The first site-local day `days` back, as stored (`YYYY-MM-DD`): a day early in UTC
/// covers every site's zone; the exact cut is each site's own.
fn first_day(days: u32) -> ApiResult<String> {
    if !(1..=400).contains(&days) {
        return Err(ApiError::BadRequest(format!(
            "days={days}: between 1 and 400"
        )));
    }
    Ok(jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .saturating_sub(jiff::ToSpan::days(i64::from(days)))
        .to_string())
}

/// `GET /api/counts?days=30&format=`: results per site and site-local day, by finding.
async fn counts(
    State(state): State<Arc<ApiState>>,
    Query(q): Query<CountsQuery>,
) -> ApiResult<Response> {
    let from = first_day(q.days.unwrap_or(30))?;
    let mut table: BTreeMap<(String, String), [i64; 5]> = BTreeMap::new();
    for c in state.store.counts(&from).await? {
        let slot = FindingKey::ALL
            .iter()
            .position(|k| *k == c.finding)
            .unwrap_or(FindingKey::ALL.len() - 1);
        table.entry((c.site, c.day)).or_default()[slot] += c.n;
    }
    let rows: Vec<DayCounts> = table
        .into_iter()
        .map(|((site, day), n)| DayCounts {
            site,
            day,
            fracture: n[0],
            suspicious: n[1],
            no_fracture: n[2],
            not_applicable: n[3],
            failed: n[4],
        })
        .collect();
    Ok(match q.format {
        Format::Json => Json(rows).into_response(),
        Format::Csv => csv_response(
            &[
                "site",
                "day",
                "fracture",
                "suspicious",
                "no_fracture",
                "not_applicable",
                "failed",
            ],
            rows.iter().map(|r| {
                vec![
                    r.site.clone(),
                    r.day.clone(),
                    r.fracture.to_string(),
                    r.suspicious.to_string(),
                    r.no_fracture.to_string(),
                    r.not_applicable.to_string(),
                    r.failed.to_string(),
                ]
            }),
        ),
    })
}

#[derive(Deserialize)]
struct DriftQuery {
    days: Option<u32>,
}

/// One unit's day under the drift watch.
#[derive(Serialize)]
struct UnitDay {
    site: String,
    device: String,
    day: String,
    /// Results with a finding that day.
    read: u64,
    /// The figures against what validation expects (`None`: too few images to judge).
    judgement: Option<fv_core::drift::DayJudgement>,
    /// Any figure outside its interval.
    flagged: bool,
}

/// `GET /api/drift?days=14`: each unit's days (site-local) against what the classifier's
/// manifest expects (`--expect`); flagged days first. `enabled: false` without `--expect`.
async fn drift(
    State(state): State<Arc<ApiState>>,
    Query(q): Query<DriftQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    // Off is an answer, not an error: the page asks on every load and hides the section.
    let Some(expected) = &state.settings.expected else {
        return Ok(Json(serde_json::json!({
            "enabled": false,
            "why": "no drift watch: start fv-fleet with --expect models/<classifier>.json",
        })));
    };
    let from = first_day(q.days.unwrap_or(14))?;
    let mut table: BTreeMap<(String, String, String), fv_core::drift::DayCounts> = BTreeMap::new();
    for c in state.store.unit_days(&from).await? {
        let d = table.entry((c.site, c.device, c.day)).or_default();
        let n = c.n.max(0) as u64;
        match c.finding {
            FindingKey::Failed => continue,
            FindingKey::Fracture => d.fracture += n,
            FindingKey::Suspicious => d.suspicious += n,
            FindingKey::NotApplicable => d.not_applicable += n,
            FindingKey::NoFracture => {}
        }
        d.read += n;
        d.probability_sum += c.probability_sum;
    }
    let mut rows: Vec<UnitDay> = table
        .into_iter()
        .map(|((site, device, day), counts)| {
            let judgement = expected.judge(&counts);
            UnitDay {
                site,
                device,
                day,
                read: counts.read,
                flagged: judgement.as_ref().is_some_and(|j| !j.flags.is_empty()),
                judgement,
            }
        })
        .collect();
    rows.sort_by_key(|r| !r.flagged);
    Ok(Json(serde_json::json!({
        "enabled": true,
        "expected": expected,
        "min_images": fv_core::drift::MIN_IMAGES,
        "days": rows,
    })))
}

/// `GET /api/sites`: each site with its zone and its current day there.
async fn sites(State(state): State<Arc<ApiState>>) -> ApiResult<Json<serde_json::Value>> {
    let mut names: Vec<String> = state
        .store
        .units()
        .await?
        .into_iter()
        .map(|u| u.site)
        .collect();
    names.dedup();
    let now = jiff::Timestamp::now();
    let zones = &state.settings.zones;
    Ok(Json(json!(names
        .iter()
        .map(|s| json!({ "site": s, "zone": zones.name(s), "today": zones.day(s, now) }))
        .collect::<Vec<_>>())))
}

/// `GET /api/units`: every unit with its state (online, stale, offline, gone or removed),
/// last heartbeat and share of the last 24 hours online (since first seen, if later).
async fn units(State(state): State<Arc<ApiState>>) -> ApiResult<Json<serde_json::Value>> {
    let now = now_ms();
    let gone_ms = state.settings.gone_after.as_millis() as i64;
    let mut out = Vec::new();
    for u in state.store.units().await? {
        let silent_ms = now - u.last_seen_ms;
        let interval_ms = u.interval_s.unwrap_or(10).max(1) * 1000;
        let state_name = match u.state {
            UnitState::Removed => "removed",
            _ if silent_ms > gone_ms => "gone",
            UnitState::Online
                if u.heartbeat_ms
                    .is_some_and(|h| now - h > uptime::MISSED_HEARTBEATS * interval_ms) =>
            {
                "stale"
            }
            s => s.as_str(),
        };
        // Since it was first seen, if that is within the day: a unit installed an hour ago
        // and online since is online 100 %, not 4 %.
        let from = (now - 86_400_000).max(u.first_seen_ms).min(now - 1);
        let events = state
            .store
            .link_events(&u.site, &u.device, from, now)
            .await?;
        let online_24h = uptime::online_fraction(&uptime::intervals(&events, from, now), from, now);
        out.push(json!({
            "site": u.site,
            "device": u.device,
            "state": state_name,
            "reason": u.reason,
            "state_since": rfc3339(u.state_ms),
            "first_seen": rfc3339(u.first_seen_ms),
            "last_seen": rfc3339(u.last_seen_ms),
            "heartbeat_at": u.heartbeat_ms.map(rfc3339),
            "interval_s": u.interval_s,
            "outbox_depth": u.outbox_depth,
            "pacs_outbox_depth": u.pacs_outbox_depth,
            "processed": u.processed,
            "failed": u.failed,
            "version": u.version,
            "models": u.models.as_deref().and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok()),
            "online_24h": online_24h,
        }));
    }
    Ok(Json(json!(out)))
}

#[derive(Deserialize)]
struct WindowQuery {
    since: Option<String>,
    until: Option<String>,
}

fn checked_window(q: &WindowQuery) -> ApiResult<(i64, i64)> {
    let (from, to) = window(q.since.as_deref(), q.until.as_deref(), 86_400_000)?;
    if to - from > MAX_WINDOW_MS {
        return Err(ApiError::BadRequest("at most 31 days at a time".into()));
    }
    Ok((from, to))
}

/// `GET /api/units/{site}/{device}/uptime?since=&until=` (default: the last 24 hours).
async fn uptime(
    State(state): State<Arc<ApiState>>,
    Path((site, device)): Path<(String, String)>,
    Query(q): Query<WindowQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let (from, to) = checked_window(&q)?;
    let events = state.store.link_events(&site, &device, from, to).await?;
    let iv = uptime::intervals(&events, from, to);
    Ok(Json(json!({
        "site": site,
        "device": device,
        "since": rfc3339(from),
        "until": rfc3339(to),
        "online_fraction": uptime::online_fraction(&iv, from, to),
        "intervals": iv.iter().map(|i| json!({
            "state": if i.online { "online" } else { "offline" },
            "from": rfc3339(i.from_ms),
            "to": rfc3339(i.to_ms),
        })).collect::<Vec<_>>(),
    })))
}

/// `GET /api/units/{site}/{device}/outbox?since=&until=`: the outbox depth over time (the
/// largest in each of about 300 buckets).
async fn outbox(
    State(state): State<Arc<ApiState>>,
    Path((site, device)): Path<(String, String)>,
    Query(q): Query<WindowQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let (from, to) = checked_window(&q)?;
    let step = ((to - from) / 300).max(1000);
    let points = state.store.outbox(&site, &device, from, to, step).await?;
    Ok(Json(json!(points
        .iter()
        .map(|p| json!({
            "t": rfc3339(p.t_ms),
            "outbox_depth": p.outbox_depth,
            "pacs_outbox_depth": p.pacs_outbox_depth,
        }))
        .collect::<Vec<_>>())))
}

#[derive(Deserialize)]
struct StatsQuery {
    since: Option<String>,
}

/// `GET /api/stats?since=`: totals, and the ingestion lag (unit processed → stored) of the
/// results received since then.
async fn stats(
    State(state): State<Arc<ApiState>>,
    Query(q): Query<StatsQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let since = match q.since.as_deref() {
        Some(s) => parse_time("since", s)?,
        None => now_ms() - 3_600_000,
    };
    let (results, units, rejected) = state.store.totals().await?;
    let mut lags: Vec<i64> = state
        .store
        .lags(since)
        .await?
        .into_iter()
        .map(|(processed, received)| received - processed)
        .collect();
    lags.sort_unstable();
    let pct = |p: f64| -> Option<i64> {
        (!lags.is_empty()).then(|| lags[((lags.len() - 1) as f64 * p).round() as usize])
    };
    Ok(Json(json!({
        "results": results,
        "units": units,
        "rejected": rejected,
        "database": format!("{:?}", state.store.backend()).to_lowercase(),
        "lag_ms": { "n": lags.len(), "p50": pct(0.5), "p95": pct(0.95), "max": lags.last() },
    })))
}

/// `GET /config.json`: what the page needs to know about this server.
async fn config(State(state): State<Arc<ApiState>>) -> Json<serde_json::Value> {
    let s = &state.settings;
    Json(json!({
        "broker": s.dashboard_broker,
        "prefix": s.prefix,
        "history": "api/",
        "token_required": s.token.is_some(),
        "gone_after_s": s.gone_after.as_secs(),
    }))
}

async fn static_file(uri: Uri) -> Response {
    match fv_dashboard::asset(uri.path()) {
        Some(a) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(a.content_type),
                ),
                // Always this binary's files: no stale page after an upgrade.
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            a.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }

    #[test]
    fn windows() {
        let (a, b) = window(
            Some("2026-12-01T00:00:00Z"),
            Some("2026-12-02T00:00:00Z"),
            1,
        )
        .unwrap();
        assert_eq!(b - a, 86_400_000);
        assert!(window(Some("yesterday"), None, 1).is_err());
        assert!(window(
            Some("2026-12-02T00:00:00Z"),
            Some("2026-12-01T00:00:00Z"),
            1
        )
        .is_err());
    }
}
