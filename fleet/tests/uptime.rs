//! A unit's uptime from a real database: the runs of timely heartbeats the store folds in SQL
//! give the same intervals as every heartbeat read one by one, on SQLite and PostgreSQL.

mod common;

use common::Postgres;
use fv_fleet::store::{HeartbeatRow, LinkEvent, Record, StatusRow, Store, UnitState};
use fv_fleet::uptime::{intervals, online_fraction};

const S: i64 = 1000;

fn beat(at_s: i64, interval_s: i64) -> Record {
    Record::Heartbeat(HeartbeatRow {
        site: "clinic-a".into(),
        device: "unit-1".into(),
        ts: format!("hb-{at_s}"),
        received_ms: at_s * S,
        interval_s: Some(interval_s),
        outbox_depth: None,
        pacs_outbox_depth: None,
        processed: None,
        failed: None,
        models: None,
    })
}

fn status(at_ms: i64, state: UnitState) -> Record {
    Record::Status(StatusRow {
        site: "clinic-a".into(),
        device: "unit-1".into(),
        ts: format!("st-{at_ms}"),
        state,
        reason: None,
        version: None,
        models: None,
        received_ms: at_ms,
    })
}

/// A day of a unit's link with everything the fold must get right: a gap, a last will between
/// two timely heartbeats, a reconnection at the instant of a heartbeat, a longer interval,
/// silence.
fn day() -> Vec<Record> {
    let mut r = vec![status(0, UnitState::Online)];
    r.extend((0..=3000).step_by(10).map(|t| beat(t, 10)));
    // 100 s without a heartbeat (more than 3 × 10 s): offline for a while.
    r.extend((3100..=5000).step_by(10).map(|t| beat(t, 10)));
    // A last will 5 s after a heartbeat, the next heartbeat 5 s later, then online again.
    r.push(status(4005 * S, UnitState::Offline));
    r.push(status(4010 * S, UnitState::Online));
    // The interval grows to 60 s: 150 s apart is within 3 × 60 s.
    r.extend((5060..=8000).step_by(60).map(|t| beat(t, 60)));
    r.extend((8150..=9000).step_by(150).map(|t| beat(t, 60)));
    r
}

/// Every heartbeat its own event, as the store returned them before it folded runs: the last
/// status before the window, then the window's statuses and heartbeats.
fn one_by_one(records: &[Record], from_ms: i64, to_ms: i64) -> Vec<LinkEvent> {
    let status_at = |s: &StatusRow| LinkEvent::Status {
        at_ms: s.received_ms,
        state: s.state,
    };
    let statuses = || {
        records.iter().filter_map(|r| match r {
            Record::Status(s) => Some(s),
            _ => None,
        })
    };
    let mut ev: Vec<LinkEvent> = statuses()
        .filter(|s| s.received_ms < from_ms)
        .max_by_key(|s| s.received_ms)
        .map(status_at)
        .into_iter()
        .collect();
    ev.extend(
        statuses()
            .filter(|s| (from_ms..to_ms).contains(&s.received_ms))
            .map(status_at),
    );
    ev.extend(records.iter().filter_map(|r| match r {
        Record::Heartbeat(h) if (from_ms..to_ms).contains(&h.received_ms) => {
            Some(LinkEvent::Heartbeats {
                at_ms: h.received_ms,
                last_ms: h.received_ms,
                interval_s: h.interval_s.unwrap_or(10),
            })
        }
        _ => None,
    }));
    ev.sort_by_key(|e| (e.at_ms(), matches!(e, LinkEvent::Heartbeats { .. })));
    ev
}

async fn folds_runs_exactly(db: &str) {
    let store = Store::open(db).await.unwrap();
    let records = day();
    store.write(&records).await.unwrap();
    for (from_s, to_s) in [(0, 10_000), (-500, 9_500), (3_050, 4_500), (4_007, 8_100)] {
        let (from, to) = (from_s * S, to_s * S);
        let folded = store
            .link_events("clinic-a", "unit-1", from, to)
            .await
            .unwrap();
        let all = one_by_one(&records, from, to);
        let (a, b) = (intervals(&folded, from, to), intervals(&all, from, to));
        assert_eq!(a, b, "window {from_s}..{to_s} s");
        assert!(
            folded.len() <= 12,
            "window {from_s}..{to_s} s: {} events for {} heartbeats and statuses",
            folded.len(),
            all.len()
        );
        let f = online_fraction(&a, from, to);
        assert!((0.0..=1.0).contains(&f));
    }
    // The day itself: online 0–3 030 s (the last heartbeat at 3 000 promised 30 s), 3 100 s
    // to the last will at 4 005 s, 4 010–5 030 s (60 s passed under a 10 s promise), 5 060 s
    // to 9 080 s (the last heartbeat at 8 900 s promised 180 s).
    let from = 0;
    let to = 10_000 * S;
    let iv = intervals(
        &store
            .link_events("clinic-a", "unit-1", from, to)
            .await
            .unwrap(),
        from,
        to,
    );
    let online_s = (3030 + (4005 - 3100) + (5030 - 4010) + (9080 - 5060)) as f64;
    let f = online_fraction(&iv, from, to);
    assert!((f - online_s / 10_000.0).abs() < 1e-9, "{f} against {iv:?}");

    // A healthy unit's day, 8 640 heartbeats at 10 s: its status and one run come back.
    let healthy: Vec<Record> = std::iter::once(status(0, UnitState::Online))
        .chain((0..86_400).step_by(10).map(|t| beat(t, 10)))
        .map(|mut r| {
            match &mut r {
                Record::Heartbeat(h) => h.device = "unit-2".into(),
                Record::Status(s) => s.device = "unit-2".into(),
                _ => {}
            }
            r
        })
        .collect();
    store.write(&healthy).await.unwrap();
    let day_ms = 86_400 * S;
    let folded = store
        .link_events("clinic-a", "unit-2", 0, day_ms)
        .await
        .unwrap();
    assert_eq!(folded.len(), 2, "{folded:?}");
    let f = online_fraction(&intervals(&folded, 0, day_ms), 0, day_ms);
    assert_eq!(f, 1.0);
}

#[tokio::test]
async fn sqlite_folds_timely_heartbeats_into_runs_with_the_same_uptime() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.sqlite");
    folds_runs_exactly(db.to_str().unwrap()).await;
}

#[tokio::test]
async fn postgres_folds_timely_heartbeats_into_runs_with_the_same_uptime() {
    let Some(pg) = Postgres::start() else {
        return;
    };
    folds_runs_exactly(&pg.url()).await;
}
