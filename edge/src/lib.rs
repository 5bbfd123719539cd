//! `fv-edge`: the daemon beside a portable X-ray unit. It reads images (watch folder with
//! DICOM, PNG/TIFF 16-bit and JPEG), runs the exported models through fv-runtime (tract, or
//! ONNX Runtime where it loads), and publishes results over MQTT through an on-disk outbox,
//! writing a local result and overlay for the person at the unit. As a DICOM node it also
//! takes images by C-STORE and returns to the PACS, per DICOM image, a Structured Report and a
//! Secondary Capture that shows the marks in any viewer. The binary in `main.rs` is a thin
//! shell over this library.

pub mod bench;
pub mod config;
pub mod daemon;
pub mod dashboard;
pub mod dimse;
pub mod health;
pub mod inspect;
pub mod pipeline;
pub mod sinks;
pub mod sources;
