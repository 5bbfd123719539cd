//! `fv-edge`: the daemon beside a portable X-ray unit. It reads images (watch folder with
//! DICOM, PNG/TIFF 16-bit and JPEG), runs the exported models with tract, and publishes
//! results over MQTT through an on-disk outbox, writing a local result and overlay for the
//! person at the unit. The binary in `main.rs` is a thin shell over this library.

pub mod bench;
pub mod config;
pub mod daemon;
pub mod dashboard;
pub mod dicom;
pub mod engine;
pub mod input;
pub mod inspect;
pub mod models;
pub mod mqtt;
pub mod outbox;
pub mod overlay;
pub mod pipeline;
pub mod v4l;
