//! `fv-runtime`: the one way FractuVision runs a model. The engines (tract always; ONNX
//! Runtime and TensorRT with the `ort` / `tensorrt` features) sit behind [`Engine`]; models
//! are loaded from a directory of manifests with each ONNX file checked against its manifest's
//! sha256 ([`models`]); [`Models::read`] turns one decoded image into one reading. fv-edge
//! serves with it, and fv-train's export checks, calibration and fusion run the same tract
//! engine, so what was checked is what serves.

pub mod engine;
pub mod logging;
pub mod models;
pub mod read;

pub use engine::{set_threads, Engine, EngineKind, OpTime, TractEngine};
pub use logging::init_logging;
pub use models::{load_dir, Checked, Found, Model, Models, Selection};
pub use read::{DetectPolicy, ImageReading, ReadOptions};
