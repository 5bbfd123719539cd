//! `fv-train`: FracAtlas loading and splits, models in burn, training, evaluation reports,
//! and ONNX export. The binary in `main.rs` is a thin shell over this library.

pub mod bench;
pub mod carry;
pub mod classify;
pub mod data;
pub mod detect;
pub mod export;
pub mod fuse;
pub mod models;
pub mod onnx;
pub mod plots;
pub mod run;
pub mod scope;
pub mod shifts;
pub mod weights;
