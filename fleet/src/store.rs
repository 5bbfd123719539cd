//! The fleet's history in a real database: SQLite in a file by default, PostgreSQL when a
//! fleet outgrows one machine. One query layer (sqlx's `Any` driver) and one set of SQL for
//! both: only types and statements both speak (TEXT, BIGINT, DOUBLE PRECISION, `$N`
//! parameters, `ON CONFLICT`), times as milliseconds since the epoch.
//!
//! What is stored is what MQTT carries and nothing more; a result's source file name is
//! dropped before it is written (a clinic may name files after patients).

use anyhow::Context as _;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::collections::{BTreeMap, HashSet};

/// Which database is behind the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A file, no server.
    Sqlite,
    /// A server, shared by several ingesters.
    Postgres,
}

/// `--db`: a `postgres://` or `postgresql://` URL, a `sqlite:` URL, or a file path (SQLite,
/// created when missing).
pub fn database_url(db: &str) -> (Backend, String) {
    if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        (Backend::Postgres, db.to_owned())
    } else if db.starts_with("sqlite:") {
        (Backend::Sqlite, db.to_owned())
    } else {
        (Backend::Sqlite, format!("sqlite://{db}?mode=rwc"))
    }
}

/// The database named without its password, for messages and logs.
pub fn redacted(db: &str) -> String {
    match (db.find("://"), db.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &db[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &db[..s + 3], &db[at..]),
                None => db.to_owned(),
            }
        }
        _ => db.to_owned(),
    }
}

/// Schema versions, applied in order, each in one transaction and recorded in
/// `fleet_migrations`. Add a new entry to change the schema; never edit an applied one.
const MIGRATIONS: &[(i64, &str, &[&str])] = &[
    (
        1,
        "results, statuses, heartbeats, units, rejected",
        &[
            "CREATE TABLE results (
            id TEXT PRIMARY KEY,
            site TEXT NOT NULL,
            device TEXT NOT NULL,
            processed_ms BIGINT NOT NULL,
            day TEXT NOT NULL,
            finding TEXT NOT NULL,
            probability DOUBLE PRECISION,
            boxes BIGINT NOT NULL,
            error TEXT,
            received_ms BIGINT NOT NULL,
            message TEXT NOT NULL)",
            "CREATE INDEX results_site_day ON results (site, day)",
            "CREATE INDEX results_unit_time ON results (site, device, processed_ms)",
            "CREATE INDEX results_time ON results (processed_ms)",
            // A status is kept once per (unit, its timestamp, state): a retained status comes
            // again with every new subscription and must not look like a new change.
            "CREATE TABLE statuses (
            site TEXT NOT NULL,
            device TEXT NOT NULL,
            ts TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT,
            received_ms BIGINT NOT NULL,
            PRIMARY KEY (site, device, ts, state))",
            "CREATE INDEX statuses_unit_time ON statuses (site, device, received_ms)",
            "CREATE TABLE heartbeats (
            site TEXT NOT NULL,
            device TEXT NOT NULL,
            ts TEXT NOT NULL,
            received_ms BIGINT NOT NULL,
            interval_s BIGINT,
            outbox_depth BIGINT,
            pacs_outbox_depth BIGINT,
            processed BIGINT,
            failed BIGINT,
            PRIMARY KEY (site, device, ts))",
            "CREATE INDEX heartbeats_unit_time ON heartbeats (site, device, received_ms)",
            // Each unit's latest state, so that the fleet view is one small read.
            "CREATE TABLE units (
            site TEXT NOT NULL,
            device TEXT NOT NULL,
            first_seen_ms BIGINT NOT NULL,
            last_seen_ms BIGINT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT,
            state_ms BIGINT NOT NULL,
            version TEXT,
            models TEXT,
            heartbeat_ms BIGINT,
            interval_s BIGINT,
            outbox_depth BIGINT,
            pacs_outbox_depth BIGINT,
            processed BIGINT,
            failed BIGINT,
            PRIMARY KEY (site, device))",
            // Messages that could not be read: kept (and acknowledged) so that nothing is lost
            // and one bad message cannot stop the ingester.
            "CREATE TABLE rejected (
            topic TEXT NOT NULL,
            received_ms BIGINT NOT NULL,
            reason TEXT NOT NULL,
            payload TEXT NOT NULL)",
            "CREATE INDEX rejected_time ON rejected (received_ms)",
        ],
    ),
    (
        2,
        "results expire by the time fv-fleet received them",
        // A unit's clock decides processed_ms; only the fleet's own clock may decide deletion.
        &["CREATE INDEX results_received ON results (received_ms)"],
    ),
];

/// Results written by one INSERT (11 parameters each: well under SQLite's 32 766 and
/// PostgreSQL's 65 535).
const RESULT_ROWS: usize = 200;

/// A result as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultRow {
    pub id: String,
    pub site: String,
    pub device: String,
    pub processed_ms: i64,
    /// `YYYY-MM-DD` in the site's time zone.
    pub day: String,
    pub finding: FindingKey,
    pub probability: Option<f64>,
    pub boxes: i64,
    /// The error code of a failed reading.
    pub error: Option<String>,
    pub received_ms: i64,
    /// The message, as JSON, without the source file name.
    pub message: String,
}

/// What a result counts as: a reading's finding, or a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FindingKey {
    Fracture,
    Suspicious,
    NoFracture,
    NotApplicable,
    Failed,
}

impl FindingKey {
    /// Every key, in the order the dashboard shows them.
    pub const ALL: [FindingKey; 5] = [
        FindingKey::Fracture,
        FindingKey::Suspicious,
        FindingKey::NoFracture,
        FindingKey::NotApplicable,
        FindingKey::Failed,
    ];

    /// Its name in the database, the API and the result message.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKey::Fracture => "fracture",
            FindingKey::Suspicious => "suspicious",
            FindingKey::NoFracture => "no_fracture",
            FindingKey::NotApplicable => "not_applicable",
            FindingKey::Failed => "failed",
        }
    }

    fn parse(s: &str) -> FindingKey {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .unwrap_or(FindingKey::Failed)
    }
}

impl From<Option<fv_core::result::Finding>> for FindingKey {
    fn from(f: Option<fv_core::result::Finding>) -> Self {
        use fv_core::result::Finding;
        match f {
            Some(Finding::Fracture) => FindingKey::Fracture,
            Some(Finding::Suspicious) => FindingKey::Suspicious,
            Some(Finding::NoFracture) => FindingKey::NoFracture,
            Some(Finding::NotApplicable) => FindingKey::NotApplicable,
            None => FindingKey::Failed,
        }
    }
}

/// A unit's status message (retained; its last will says offline).
#[derive(Clone, Debug, PartialEq)]
pub struct StatusRow {
    pub site: String,
    pub device: String,
    /// The unit's own timestamp of the status, which identifies it.
    pub ts: String,
    pub state: UnitState,
    pub reason: Option<String>,
    pub version: Option<String>,
    /// The models, as JSON.
    pub models: Option<String>,
    pub received_ms: i64,
}

/// A unit's state as the store knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitState {
    Online,
    Offline,
    /// An empty retained status: the unit was decommissioned.
    Removed,
}

impl UnitState {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitState::Online => "online",
            UnitState::Offline => "offline",
            UnitState::Removed => "removed",
        }
    }

    pub fn parse(s: &str) -> UnitState {
        match s {
            "online" => UnitState::Online,
            "removed" => UnitState::Removed,
            _ => UnitState::Offline,
        }
    }
}

/// A heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub struct HeartbeatRow {
    pub site: String,
    pub device: String,
    pub ts: String,
    pub received_ms: i64,
    pub interval_s: Option<i64>,
    pub outbox_depth: Option<i64>,
    pub pacs_outbox_depth: Option<i64>,
    pub processed: Option<i64>,
    pub failed: Option<i64>,
    pub models: Option<String>,
}

/// A message that could not be read.
#[derive(Clone, Debug, PartialEq)]
pub struct RejectedRow {
    pub topic: String,
    pub received_ms: i64,
    pub reason: String,
    pub payload: String,
}

/// One message, ready to store.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Result(ResultRow),
    Status(StatusRow),
    Heartbeat(HeartbeatRow),
    Rejected(RejectedRow),
}

/// What one write did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Results stored for the first time.
    pub results: usize,
    /// Results already stored (QoS 1 delivers at least once).
    pub duplicates: usize,
    pub statuses: usize,
    pub heartbeats: usize,
    pub rejected: usize,
}

/// Which results a query wants.
#[derive(Clone, Debug, Default)]
pub struct ResultFilter {
    /// Processed at or after (ms).
    pub since_ms: Option<i64>,
    /// Processed before (ms).
    pub until_ms: Option<i64>,
    pub site: Option<String>,
    pub device: Option<String>,
    /// A site-local day, `YYYY-MM-DD`.
    pub day: Option<String>,
    /// Oldest first (for a client that syncs with `since`); newest first otherwise.
    pub ascending: bool,
    pub limit: i64,
    pub offset: i64,
}

/// A result as listed.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ResultSummary {
    pub id: String,
    pub site: String,
    pub device: String,
    pub processed_ms: i64,
    pub day: String,
    pub finding: &'static str,
    pub probability: Option<f64>,
    pub boxes: i64,
    pub error: Option<String>,
}

/// Results of one finding at one site on one day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DayCount {
    pub site: String,
    pub day: String,
    pub finding: FindingKey,
    pub n: i64,
}

/// One unit's results of one day with one finding: how many, and their probabilities summed.
#[derive(Clone, Debug, PartialEq)]
pub struct UnitDayCount {
    pub site: String,
    pub device: String,
    pub day: String,
    pub finding: FindingKey,
    pub n: i64,
    pub probability_sum: f64,
}

/// A unit's latest state.
#[derive(Clone, Debug, PartialEq)]
pub struct UnitRow {
    pub site: String,
    pub device: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub state: UnitState,
    pub reason: Option<String>,
    pub state_ms: i64,
    pub version: Option<String>,
    pub models: Option<String>,
    pub heartbeat_ms: Option<i64>,
    pub interval_s: Option<i64>,
    pub outbox_depth: Option<i64>,
    pub pacs_outbox_depth: Option<i64>,
    pub processed: Option<i64>,
    pub failed: Option<i64>,
}

/// What happened to a unit's link, in the order received (for its uptime).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A status message.
    Status { at_ms: i64, state: UnitState },
    /// Heartbeats from `at_ms` to `last_ms`, each within its promise of the one before and
    /// no status between them (one heartbeat when the two are equal); the last promises the
    /// next within `interval_s`.
    Heartbeats {
        at_ms: i64,
        last_ms: i64,
        interval_s: i64,
    },
}

impl LinkEvent {
    pub fn at_ms(&self) -> i64 {
        match *self {
            LinkEvent::Status { at_ms, .. } | LinkEvent::Heartbeats { at_ms, .. } => at_ms,
        }
    }
}

/// The outbox depth in one time bucket (the largest seen).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OutboxPoint {
    pub t_ms: i64,
    pub outbox_depth: Option<i64>,
    pub pacs_outbox_depth: Option<i64>,
}

/// The store.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects (creating a SQLite file when missing) and brings the schema up to date.
    pub async fn open(db: &str) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let (backend, url) = database_url(db);
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: the API's reads never wait for the ingester's writes. FULL:
                        // a batch is on disk before the broker is told it was received,
                        // so not even a power cut loses an acknowledged message.
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = FULL",
                            "PRAGMA busy_timeout = 10000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .with_context(|| {
                format!(
                    "database `{}`: cannot connect (for PostgreSQL, is the server running and \
                     the user allowed? for SQLite, is the folder writable?)",
                    redacted(db)
                )
            })?;
        let store = Store { pool, backend };
        store
            .migrate()
            .await
            .with_context(|| format!("database `{}`: schema migration failed", redacted(db)))?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn schema_version(&self) -> Result<i64, sqlx::Error> {
        let row = sqlx::query("SELECT MAX(version) FROM fleet_migrations")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.unwrap_or(0))
    }

    async fn migrate(&self) -> Result<(), sqlx::Error> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS fleet_migrations (
                version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        for &(version, name, statements) in MIGRATIONS {
            if self.schema_version().await? >= version {
                continue;
            }
            let applied = async {
                let mut tx = self.pool.begin().await?;
                for sql in statements {
                    sqlx::query(sql).execute(&mut *tx).await?;
                }
                sqlx::query(
                    "INSERT INTO fleet_migrations (version, name, applied_ms) VALUES ($1, $2, $3)",
                )
                .bind(version)
                .bind(name)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
                tx.commit().await
            }
            .await;
            if let Err(e) = applied {
                // Another ingester on the same PostgreSQL may have applied it first.
                if self.schema_version().await? < version {
                    return Err(e);
                }
            } else {
                tracing::info!("database schema: applied migration {version} ({name})");
            }
        }
        Ok(())
    }

    /// Writes a batch in one transaction: all of it is stored, or none (and the caller does
    /// not acknowledge it, so the broker delivers it again).
    pub async fn write(&self, batch: &[Record]) -> Result<Written, sqlx::Error> {
        let mut w = Written::default();
        let mut tx = self.pool.begin().await?;
        let results: Vec<&ResultRow> = batch
            .iter()
            .filter_map(|r| match r {
                Record::Result(r) => Some(r),
                _ => None,
            })
            .collect();
        // Many rows a statement: one round trip per RESULT_ROWS results, which is what keeps
        // PostgreSQL up with a burst (one statement a result managed about 1000 a second here).
        let mut new_ids: HashSet<String> = HashSet::new();
        for chunk in results.chunks(RESULT_ROWS) {
            let mut sql = String::from(
                "INSERT INTO results (id, site, device, processed_ms, day, finding, probability,
                    boxes, error, received_ms, message) VALUES ",
            );
            for i in 0..chunk.len() {
                let p: Vec<String> = (1..=11).map(|k| format!("${}", i * 11 + k)).collect();
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("({})", p.join(", ")));
            }
            // RETURNING names the rows that were new: a redelivered result is not.
            sql.push_str(" ON CONFLICT (id) DO NOTHING RETURNING id");
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = q
                    .bind(&r.id)
                    .bind(&r.site)
                    .bind(&r.device)
                    .bind(r.processed_ms)
                    .bind(&r.day)
                    .bind(r.finding.as_str())
                    .bind(r.probability)
                    .bind(r.boxes)
                    .bind(r.error.as_deref())
                    .bind(r.received_ms)
                    .bind(&r.message);
            }
            for row in q.fetch_all(&mut *tx).await? {
                new_ids.insert(row.try_get(0)?);
            }
        }
        w.results = new_ids.len();
        w.duplicates = results.len() - new_ids.len();
        // A unit that delivers a new result is connected: one update a unit and batch.
        let mut seen: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for r in results.iter().filter(|r| new_ids.contains(&r.id)) {
            let at = seen.entry((&r.site, &r.device)).or_insert(r.received_ms);
            *at = (*at).max(r.received_ms);
        }
        for ((site, device), at) in seen {
            sqlx::query(
                "INSERT INTO units (site, device, first_seen_ms, last_seen_ms, state, state_ms)
                 VALUES ($1, $2, $3, $3, 'online', $3)
                 ON CONFLICT (site, device) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
            )
            .bind(site)
            .bind(device)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        for record in batch {
            match record {
                // Written together above.
                Record::Result(_) => {}
                Record::Status(s) => {
                    let done = sqlx::query(
                        "INSERT INTO statuses (site, device, ts, state, reason, received_ms)
                         VALUES ($1, $2, $3, $4, $5, $6)
                         ON CONFLICT (site, device, ts, state) DO NOTHING",
                    )
                    .bind(&s.site)
                    .bind(&s.device)
                    .bind(&s.ts)
                    .bind(s.state.as_str())
                    .bind(s.reason.as_deref())
                    .bind(s.received_ms)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 0 {
                        continue; // a retained status seen before: no change
                    }
                    w.statuses += 1;
                    sqlx::query(
                        "INSERT INTO units (site, device, first_seen_ms, last_seen_ms, state,
                            reason, state_ms, version, models)
                         VALUES ($1, $2, $3, $3, $4, $5, $3, $6, $7)
                         ON CONFLICT (site, device) DO UPDATE SET
                            last_seen_ms = excluded.last_seen_ms,
                            state = excluded.state,
                            reason = excluded.reason,
                            state_ms = CASE WHEN units.state = excluded.state
                                THEN units.state_ms ELSE excluded.state_ms END,
                            version = COALESCE(excluded.version, units.version),
                            models = COALESCE(excluded.models, units.models)",
                    )
                    .bind(&s.site)
                    .bind(&s.device)
                    .bind(s.received_ms)
                    .bind(s.state.as_str())
                    .bind(s.reason.as_deref())
                    .bind(s.version.as_deref())
                    .bind(s.models.as_deref())
                    .execute(&mut *tx)
                    .await?;
                }
                Record::Heartbeat(h) => {
                    let done = sqlx::query(
                        "INSERT INTO heartbeats (site, device, ts, received_ms, interval_s,
                            outbox_depth, pacs_outbox_depth, processed, failed)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                         ON CONFLICT (site, device, ts) DO NOTHING",
                    )
                    .bind(&h.site)
                    .bind(&h.device)
                    .bind(&h.ts)
                    .bind(h.received_ms)
                    .bind(h.interval_s)
                    .bind(h.outbox_depth)
                    .bind(h.pacs_outbox_depth)
                    .bind(h.processed)
                    .bind(h.failed)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 0 {
                        continue;
                    }
                    w.heartbeats += 1;
                    // A heartbeat means the unit is connected, even if its status was lost.
                    sqlx::query(
                        "INSERT INTO units (site, device, first_seen_ms, last_seen_ms, state,
                            state_ms, models, heartbeat_ms, interval_s, outbox_depth,
                            pacs_outbox_depth, processed, failed)
                         VALUES ($1, $2, $3, $3, 'online', $3, $4, $3, $5, $6, $7, $8, $9)
                         ON CONFLICT (site, device) DO UPDATE SET
                            last_seen_ms = excluded.last_seen_ms,
                            state_ms = CASE WHEN units.state = 'online'
                                THEN units.state_ms ELSE excluded.state_ms END,
                            state = 'online',
                            reason = NULL,
                            models = COALESCE(excluded.models, units.models),
                            heartbeat_ms = excluded.heartbeat_ms,
                            interval_s = excluded.interval_s,
                            outbox_depth = excluded.outbox_depth,
                            pacs_outbox_depth = excluded.pacs_outbox_depth,
                            processed = excluded.processed,
                            failed = excluded.failed",
                    )
                    .bind(&h.site)
                    .bind(&h.device)
                    .bind(h.received_ms)
                    .bind(h.models.as_deref())
                    .bind(h.interval_s)
                    .bind(h.outbox_depth)
                    .bind(h.pacs_outbox_depth)
                    .bind(h.processed)
                    .bind(h.failed)
                    .execute(&mut *tx)
                    .await?;
                }
                Record::Rejected(r) => {
                    sqlx::query(
                        "INSERT INTO rejected (topic, received_ms, reason, payload)
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&r.topic)
                    .bind(r.received_ms)
                    .bind(&r.reason)
                    .bind(&r.payload)
                    .execute(&mut *tx)
                    .await?;
                    w.rejected += 1;
                }
            }
        }
        tx.commit().await?;
        Ok(w)
    }

    /// Results matching a filter, at most `limit`.
    pub async fn results(&self, f: &ResultFilter) -> Result<Vec<ResultSummary>, sqlx::Error> {
        let mut sql = String::from(
            "SELECT id, site, device, processed_ms, day, finding, probability, boxes, error
             FROM results WHERE 1 = 1",
        );
        let mut texts: Vec<&str> = Vec::new();
        let mut n = 0;
        let mut param = |sql: &mut String, clause: &str| {
            n += 1;
            sql.push_str(&clause.replace('?', &format!("${n}")));
        };
        if f.since_ms.is_some() {
            param(&mut sql, " AND processed_ms >= ?");
        }
        if f.until_ms.is_some() {
            param(&mut sql, " AND processed_ms < ?");
        }
        for (value, clause) in [
            (&f.site, " AND site = ?"),
            (&f.device, " AND device = ?"),
            (&f.day, " AND day = ?"),
        ] {
            if let Some(v) = value {
                param(&mut sql, clause);
                texts.push(v);
            }
        }
        let order = if f.ascending { "ASC" } else { "DESC" };
        sql.push_str(&format!(
            " ORDER BY processed_ms {order}, id {order} LIMIT {} OFFSET {}",
            f.limit.max(0),
            f.offset.max(0)
        ));
        let mut q = sqlx::query(&sql);
        if let Some(v) = f.since_ms {
            q = q.bind(v);
        }
        if let Some(v) = f.until_ms {
            q = q.bind(v);
        }
        for t in texts {
            q = q.bind(t);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(summary).collect()
    }

    /// One result's message, by id.
    pub async fn result(&self, id: &str) -> Result<Option<String>, sqlx::Error> {
        let row = sqlx::query("SELECT message FROM results WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get::<String, _>(0)).transpose()
    }

    /// Results per site, day and finding, from a site-local day on.
    pub async fn counts(&self, from_day: &str) -> Result<Vec<DayCount>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT site, day, finding, COUNT(*) FROM results WHERE day >= $1
             GROUP BY site, day, finding ORDER BY site, day, finding",
        )
        .bind(from_day)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DayCount {
                    site: r.try_get(0)?,
                    day: r.try_get(1)?,
                    finding: FindingKey::parse(&r.try_get::<String, _>(2)?),
                    n: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Results per unit, day and finding, from a site-local day on.
    pub async fn unit_days(&self, from_day: &str) -> Result<Vec<UnitDayCount>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT site, device, day, finding, COUNT(*), COALESCE(SUM(probability), 0.0)
             FROM results WHERE day >= $1
             GROUP BY site, device, day, finding ORDER BY site, device, day, finding",
        )
        .bind(from_day)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UnitDayCount {
                    site: r.try_get(0)?,
                    device: r.try_get(1)?,
                    day: r.try_get(2)?,
                    finding: FindingKey::parse(&r.try_get::<String, _>(3)?),
                    n: r.try_get(4)?,
                    probability_sum: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Every unit's latest state.
    pub async fn units(&self) -> Result<Vec<UnitRow>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT site, device, first_seen_ms, last_seen_ms, state, reason, state_ms, version,
                models, heartbeat_ms, interval_s, outbox_depth, pacs_outbox_depth, processed,
                failed
             FROM units ORDER BY site, device",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UnitRow {
                    site: r.try_get(0)?,
                    device: r.try_get(1)?,
                    first_seen_ms: r.try_get(2)?,
                    last_seen_ms: r.try_get(3)?,
                    state: UnitState::parse(&r.try_get::<String, _>(4)?),
                    reason: r.try_get(5)?,
                    state_ms: r.try_get(6)?,
                    version: r.try_get(7)?,
                    models: r.try_get(8)?,
                    heartbeat_ms: r.try_get(9)?,
                    interval_s: r.try_get(10)?,
                    outbox_depth: r.try_get(11)?,
                    pacs_outbox_depth: r.try_get(12)?,
                    processed: r.try_get(13)?,
                    failed: r.try_get(14)?,
                })
            })
            .collect()
    }

    /// A unit's statuses and heartbeats received in `[from_ms, to_ms)`, oldest first,
    /// preceded by the last status before `from_ms` (the state the window starts in). The
    /// database folds each run of timely heartbeats into one event, so a healthy unit's day
    /// (8 640 heartbeats at 10 s) comes back as a few rows.
    pub async fn link_events(
        &self,
        site: &str,
        device: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<LinkEvent>, sqlx::Error> {
        const STATUSES: &str = "SELECT received_ms, state FROM statuses
             WHERE site = $1 AND device = $2 AND received_ms >= $3 AND received_ms < $4";
        let before = self
            .unit_rows(
                &format!("{STATUSES} ORDER BY received_ms DESC LIMIT 1"),
                (site, device),
                i64::MIN,
                from_ms,
            )
            .await?;
        let within = self
            .unit_rows(STATUSES, (site, device), from_ms, to_ms)
            .await?;
        let mut events = Vec::new();
        for r in before.iter().chain(&within) {
            events.push(LinkEvent::Status {
                at_ms: r.try_get(0)?,
                state: UnitState::parse(&r.try_get::<String, _>(1)?),
            });
        }
        // A heartbeat starts a run when it is the window's first, comes after the one
        // before it had promised (`MISSED_HEARTBEATS` intervals), or after a status; only
        // the rows that start or end a run come back.
        let runs = format!(
            "WITH h AS (
                SELECT received_ms AS at,
                    CASE WHEN COALESCE(interval_s, 10) < 1 THEN 1
                        ELSE COALESCE(interval_s, 10) END AS iv
                FROM heartbeats
                WHERE site = $1 AND device = $2 AND received_ms >= $3 AND received_ms < $4),
            l AS (
                SELECT at, iv, LAG(at) OVER (ORDER BY at) AS prev_at,
                    LAG(iv) OVER (ORDER BY at) AS prev_iv
                FROM h),
            s AS (
                SELECT at, iv,
                    CASE WHEN prev_at IS NULL OR at - prev_at > {missed} * 1000 * prev_iv
                        OR EXISTS (SELECT 1 FROM statuses st
                            WHERE st.site = $1 AND st.device = $2
                            AND st.received_ms > l.prev_at AND st.received_ms <= l.at)
                    THEN 1 ELSE 0 END AS starts
                FROM l),
            e AS (
                SELECT at, iv, starts,
                    LEAD(starts, 1, 1) OVER (ORDER BY at) AS next_starts
                FROM s)
            SELECT at, iv, starts FROM e WHERE starts = 1 OR next_starts = 1 ORDER BY at",
            missed = crate::uptime::MISSED_HEARTBEATS
        );
        for r in &self
            .unit_rows(&runs, (site, device), from_ms, to_ms)
            .await?
        {
            let (at, iv): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
            match events.last_mut() {
                Some(LinkEvent::Heartbeats {
                    last_ms,
                    interval_s,
                    ..
                }) if r.try_get::<i64, _>(2)? == 0 => {
                    *last_ms = at;
                    *interval_s = iv;
                }
                _ => events.push(LinkEvent::Heartbeats {
                    at_ms: at,
                    last_ms: at,
                    interval_s: iv,
                }),
            }
        }
        // Statuses before heartbeats at the same instant: a heartbeat right after an
        // offline status is a reconnection.
        events.sort_by_key(|e| (e.at_ms(), matches!(e, LinkEvent::Heartbeats { .. })));
        Ok(events)
    }

    /// A unit's outbox depth over `[from_ms, to_ms)`, the largest in each `step_ms` bucket.
    pub async fn outbox(
        &self,
        site: &str,
        device: &str,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<OutboxPoint>, sqlx::Error> {
        let step = step_ms.max(1000);
        // The step is an integer we chose, not user text: formatted in, so that the
        // bucket expression is the same statement on both databases.
        let sql = format!(
            "SELECT (received_ms / {step}) * {step}, MAX(outbox_depth), MAX(pacs_outbox_depth)
             FROM heartbeats
             WHERE site = $1 AND device = $2 AND received_ms >= $3 AND received_ms < $4
             GROUP BY received_ms / {step} ORDER BY 1"
        );
        let rows = self.unit_rows(&sql, (site, device), from_ms, to_ms).await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxPoint {
                    t_ms: r.try_get(0)?,
                    outbox_depth: r.try_get(1)?,
                    pacs_outbox_depth: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// Runs a query whose parameters are a unit and a time window: `$1` site, `$2` device,
    /// `$3` from (ms, inclusive), `$4` to (exclusive).
    async fn unit_rows(
        &self,
        sql: &str,
        (site, device): (&str, &str),
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<AnyRow>, sqlx::Error> {
        sqlx::query(sql)
            .bind(site)
            .bind(device)
            .bind(from_ms)
            .bind(to_ms)
            .fetch_all(&self.pool)
            .await
    }

    /// `(processed_ms, received_ms)` of results received since `since_ms` (at most 100 000,
    /// newest), for the ingestion lag.
    pub async fn lags(&self, since_ms: i64) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT processed_ms, received_ms FROM results WHERE received_ms >= $1
             ORDER BY received_ms DESC LIMIT 100000",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// How many results, units and rejected messages are stored.
    pub async fn totals(&self) -> Result<(i64, i64, i64), sqlx::Error> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM results), (SELECT COUNT(*) FROM units),
                (SELECT COUNT(*) FROM rejected)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
    }

    /// Deletes what fv-fleet received before `cutoff_ms` (never by a unit's own clock, which
    /// may be years off), `batch` rows per statement so that a large
    /// backlog never holds one long transaction (the ingester keeps writing meanwhile).
    /// Returns the rows deleted.
    pub async fn expire(&self, cutoff_ms: i64, batch: i64) -> Result<u64, sqlx::Error> {
        let statements = [
            "DELETE FROM results WHERE id IN
                (SELECT id FROM results WHERE received_ms < $1 LIMIT $2)",
            "DELETE FROM heartbeats WHERE (site, device, ts) IN
                (SELECT site, device, ts FROM heartbeats WHERE received_ms < $1 LIMIT $2)",
            "DELETE FROM statuses WHERE (site, device, ts, state) IN
                (SELECT site, device, ts, state FROM statuses WHERE received_ms < $1 LIMIT $2)",
            "DELETE FROM rejected WHERE received_ms IN
                (SELECT received_ms FROM rejected WHERE received_ms < $1 LIMIT $2)",
        ];
        let mut total = 0;
        for sql in statements {
            loop {
                let n = sqlx::query(sql)
                    .bind(cutoff_ms)
                    .bind(batch)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                total += n;
                if n < batch as u64 {
                    break;
                }
            }
        }
        Ok(total)
    }
}

fn summary(r: &AnyRow) -> Result<ResultSummary, sqlx::Error> {
    Ok(ResultSummary {
        id: r.try_get(0)?,
        site: r.try_get(1)?,
        device: r.try_get(2)?,
        processed_ms: r.try_get(3)?,
        day: r.try_get(4)?,
        finding: FindingKey::parse(&r.try_get::<String, _>(5)?).as_str(),
        probability: r.try_get(6)?,
        boxes: r.try_get(7)?,
        error: r.try_get(8)?,
    })
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            database_url("fleet.sqlite"),
            (Backend::Sqlite, "sqlite://fleet.sqlite?mode=rwc".into())
        );
        assert_eq!(database_url("postgres://u:p@h/db").0, Backend::Postgres);
        assert_eq!(
            redacted("postgres://fleet:s3cret@db.local:5432/fleet"),
            "postgres://fleet:***@db.local:5432/fleet"
        );
        assert_eq!(redacted("fleet.sqlite"), "fleet.sqlite");
    }

    fn result(id: &str, site: &str, day: &str, finding: FindingKey) -> Record {
        Record::Result(ResultRow {
            id: id.into(),
            site: site.into(),
            device: "unit-1".into(),
            processed_ms: 1_000,
            day: day.into(),
            finding,
            probability: Some(0.5),
            boxes: 1,
            error: None,
            received_ms: 2_000,
            message: "{}".into(),
        })
    }

    #[tokio::test]
    async fn sqlite_round_trip_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("fleet.sqlite");
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        let batch = [
            result("a", "s1", "2026-12-01", FindingKey::Fracture),
            result("b", "s1", "2026-12-01", FindingKey::NoFracture),
            result("a", "s1", "2026-12-01", FindingKey::Fracture),
        ];
        let w = store.write(&batch).await.unwrap();
        assert_eq!((w.results, w.duplicates), (2, 1));
        // Opening again applies no migration twice.
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        assert_eq!(store.write(&batch).await.unwrap().duplicates, 3);
        let counts = store.counts("2026-11-01").await.unwrap();
        assert_eq!(counts.len(), 2);
        assert!(counts.iter().all(|c| c.n == 1));
        let listed = store
            .results(&ResultFilter {
                site: Some("s1".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(store.totals().await.unwrap(), (2, 1, 0));
        // A unit's clock says 1 000, the fleet received them at 2 000: the fleet's clock
        // decides when they go.
        assert_eq!(store.expire(1_001, 1).await.unwrap(), 0);
        assert_eq!(store.totals().await.unwrap().0, 2);
        assert_eq!(store.expire(2_001, 1).await.unwrap(), 2);
        assert_eq!(store.totals().await.unwrap().0, 0);
    }
}
