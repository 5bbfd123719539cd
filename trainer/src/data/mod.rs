//! Datasets: FracAtlas as published, and the report `fv-train data check` prints.

pub mod check;
pub mod classify;
pub mod detect;
pub mod fracatlas;

pub use fracatlas::{ClassificationSplitConfig, DatasetError, FracAtlas, ImageRecord, Split};

/// Splits per-item results into the successes and the failures, each in input order: a bad
/// image is reported, never silently dropped.
pub fn partition<T, E>(results: Vec<Result<T, E>>) -> (Vec<T>, Vec<E>) {
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => failed.push(e),
        }
    }
    (ok, failed)
}
