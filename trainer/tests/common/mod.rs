//! What the trainer's integration tests share: the committed FracAtlas sample and the
//! hold-out sizes it can afford (it has five usable non-fractured images).

#![allow(dead_code)] // each test binary uses its own part of this module

use fv_train::classify::RunData;
use fv_train::data::ClassificationSplitConfig;
use std::path::{Path, PathBuf};

/// `tests/data/fracatlas-sample`.
pub fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/fracatlas-sample")
}

/// One non-fractured image each for validation and test.
pub fn small_holdout(seed: u64) -> ClassificationSplitConfig {
    ClassificationSplitConfig {
        seed,
        valid_non_fractured: 1,
        test_non_fractured: 1,
        ..ClassificationSplitConfig::default()
    }
}

/// All of the sample, split with [`small_holdout`].
pub fn sample_run_data(seed: u64) -> RunData {
    RunData {
        split: small_holdout(seed),
        limit_per_class: None,
    }
}
