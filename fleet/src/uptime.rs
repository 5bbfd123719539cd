//! A unit's online and offline intervals, from what the fleet received: its status messages
//! (online at connect, offline from its goodbye or its last will) and its heartbeats. Times
//! are the fleet's receive times: a unit's own clock may be wrong in the field.

use crate::store::{LinkEvent, UnitState};
use serde::Serialize;

/// A unit is counted offline once this many of its heartbeat intervals pass without one,
/// as the dashboard marks it stale (a link can die without the broker noticing for a while).
pub const MISSED_HEARTBEATS: i64 = 3;

/// One stretch of time in one state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Interval {
    pub online: bool,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// The intervals covering `[from_ms, to_ms)`, given the unit's events in receive order (the
/// first may precede `from_ms`: the state the window starts in). Before anything is known the
/// unit counts as offline.
pub fn intervals(events: &[LinkEvent], from_ms: i64, to_ms: i64) -> Vec<Interval> {
    let mut out: Vec<Interval> = Vec::new();
    let mut push = |online: bool, a: i64, b: i64| {
        let (a, b) = (a.max(from_ms), b.min(to_ms));
        if a >= b {
            return;
        }
        match out.last_mut() {
            Some(last) if last.online == online && last.to_ms == a => last.to_ms = b,
            _ => out.push(Interval {
                online,
                from_ms: a,
                to_ms: b,
            }),
        }
    };
    // Online until this time unless something says otherwise (None: offline).
    let mut online_until: Option<i64> = None;
    let mut t = from_ms.min(events.first().map_or(from_ms, LinkEvent::at_ms));
    for e in events {
        let at = e.at_ms();
        // Up to this event: online while the promise holds, offline after.
        match online_until {
            Some(until) if until >= at => push(true, t, at),
            Some(until) => {
                push(true, t, until.max(t));
                push(false, until.max(t), at);
            }
            None => push(false, t, at),
        }
        t = at;
        online_until = match *e {
            // Online throughout a run of timely heartbeats.
            LinkEvent::Heartbeats {
                last_ms,
                interval_s,
                ..
            } => {
                push(true, at, last_ms);
                t = last_ms;
                Some(last_ms + MISSED_HEARTBEATS * interval_s * 1000)
            }
            // A status says online without a promise of when the next word comes: the
            // first heartbeat follows at once, so give it one default interval.
            LinkEvent::Status {
                state: UnitState::Online,
                ..
            } => Some(at + MISSED_HEARTBEATS * 10_000),
            LinkEvent::Status { .. } => None,
        };
    }
    match online_until {
        Some(until) if until >= to_ms => push(true, t, to_ms),
        Some(until) => {
            push(true, t, until.max(t));
            push(false, until.max(t), to_ms);
        }
        None => push(false, t, to_ms),
    }
    out
}

/// The share of `[from_ms, to_ms)` spent online.
pub fn online_fraction(intervals: &[Interval], from_ms: i64, to_ms: i64) -> f64 {
    let span = (to_ms - from_ms).max(1) as f64;
    let online: i64 = intervals
        .iter()
        .filter(|i| i.online)
        .map(|i| i.to_ms - i.from_ms)
        .sum();
    online as f64 / span
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(at_s: i64) -> LinkEvent {
        LinkEvent::Heartbeats {
            at_ms: at_s * 1000,
            last_ms: at_s * 1000,
            interval_s: 10,
        }
    }

    fn status(at_s: i64, state: UnitState) -> LinkEvent {
        LinkEvent::Status {
            at_ms: at_s * 1000,
            state,
        }
    }

    #[test]
    fn heartbeats_then_silence_then_back() {
        // Online at 100 s, heartbeats every 10 s to 150 s, silent, back at 400 s.
        let mut ev = vec![status(100, UnitState::Online)];
        ev.extend((100..=150).step_by(10).map(hb));
        ev.push(status(400, UnitState::Online));
        ev.push(hb(400));
        let iv = intervals(&ev, 0, 500_000);
        assert_eq!(
            iv,
            vec![
                Interval {
                    online: false,
                    from_ms: 0,
                    to_ms: 100_000
                },
                Interval {
                    online: true,
                    from_ms: 100_000,
                    to_ms: 180_000
                },
                Interval {
                    online: false,
                    from_ms: 180_000,
                    to_ms: 400_000
                },
                Interval {
                    online: true,
                    from_ms: 400_000,
                    to_ms: 430_000
                },
                Interval {
                    online: false,
                    from_ms: 430_000,
                    to_ms: 500_000
                },
            ]
        );
        let f = online_fraction(&iv, 0, 500_000);
        assert!((f - 110.0 / 500.0).abs() < 1e-9, "{f}");
    }

    #[test]
    fn last_will_ends_online_at_once() {
        let ev = vec![hb(0), hb(10), status(12, UnitState::Offline)];
        let iv = intervals(&ev, 0, 60_000);
        assert_eq!(
            iv[0],
            Interval {
                online: true,
                from_ms: 0,
                to_ms: 12_000
            }
        );
        assert_eq!(
            iv[1],
            Interval {
                online: false,
                from_ms: 12_000,
                to_ms: 60_000
            }
        );
    }

    #[test]
    fn a_state_from_before_the_window_carries_in() {
        // Offline since long before; nothing in the window: offline throughout.
        let ev = vec![status(-1000, UnitState::Offline)];
        assert_eq!(
            intervals(&ev, 0, 10_000),
            vec![Interval {
                online: false,
                from_ms: 0,
                to_ms: 10_000
            }]
        );
        assert!(intervals(&[], 0, 10_000).iter().all(|i| !i.online));
    }
}
