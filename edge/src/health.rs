//! The daemon's health counters: what the worker, the DICOM node and the PACS sender count
//! and say is wrong, shared between their threads, published in each heartbeat
//! ([`fv_core::wire::HeartbeatMessage`]) and shown on the reading screen.

use serde::Serialize;

/// Counters shared with the worker, reported in heartbeats.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Inputs read successfully.
    pub processed: u64,
    /// Inputs that failed.
    pub failed: u64,
    /// Inputs read and found outside the models' scope (counted in `processed` too).
    pub not_applicable: u64,
    /// The last failure's message (bounded, pseudonymous: what the fleet may see).
    pub last_error: Option<String>,
    /// Results set aside unsent because they exceed the packet limit.
    pub oversized: u64,
    /// Why the publisher cannot do its work right now (`None` when it can).
    pub publisher_stalled: Option<String>,
    /// Structured Reports waiting for the PACS (`None`: no PACS configured).
    pub pacs_outbox_depth: Option<usize>,
    /// Reports the PACS has stored since start.
    pub pacs_sent: u64,
    /// Why the PACS sender cannot deliver right now.
    pub pacs_stalled: Option<String>,
    /// Why the DICOM node refuses objects right now (too little disk).
    pub dicom_refusing: Option<String>,
}
