//! Datasets: FracAtlas as published, and the report `fv-train data check` prints.

pub mod check;
pub mod classify;
pub mod detect;
pub mod fracatlas;

pub use fracatlas::{ClassificationSplitConfig, DatasetError, FracAtlas, ImageRecord, Split};
