//! Datasets: FracAtlas as published, and the report `fv-train data check` prints.

pub mod check;
pub mod classify;
pub mod detect;
pub mod fracatlas;
pub mod shift;

pub use fracatlas::{ClassificationSplitConfig, DatasetError, FracAtlas, ImageRecord, Split};

/// A part of a split: what a report is about. Written as `train`, `valid`, `test` in files.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum SplitPart {
    /// Fitted on.
    Train,
    /// Checkpoints, calibration and thresholds are chosen here.
    Valid,
    /// Reported, never tuned on.
    Test,
}

impl SplitPart {
    /// The name files and reports use.
    pub fn as_str(self) -> &'static str {
        match self {
            SplitPart::Train => "train",
            SplitPart::Valid => "valid",
            SplitPart::Test => "test",
        }
    }
}

impl std::fmt::Display for SplitPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
