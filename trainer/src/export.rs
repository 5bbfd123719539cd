//! Writing what an export produces, for both tasks: the model file and its sha256, the
//! manifest (validated by fv-core before it is written: a manifest the edge would refuse is
//! never written), where the model came from, and the options of `fv-train export`.
//! The tasks' own exports are `classify/export.rs` and `detect/export.rs`.

use crate::onnx::quantize::Calibration;
use crate::run::git_commit;
use anyhow::Context as _;
use fv_core::manifest::{Manifest, Precision, TrainingRecord};
use std::path::{Path, PathBuf};

/// What an export wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Exported {
    /// The ONNX file.
    pub onnx: PathBuf,
    /// The manifest beside it.
    pub manifest: PathBuf,
    /// The manifest's content.
    pub content: Manifest,
}

/// |p − p_reference| over validation, summarized as a [`Conversion`] records it.
pub(crate) struct AbsDiffs {
    pub max: f64,
    pub median: f64,
    pub mean: Option<f64>,
}

impl AbsDiffs {
    pub fn of(mut diffs: Vec<f64>) -> Self {
        diffs.sort_by(f64::total_cmp);
        AbsDiffs {
            max: diffs.last().copied().unwrap_or(0.0),
            median: diffs.get(diffs.len() / 2).copied().unwrap_or(0.0),
            mean: (!diffs.is_empty()).then(|| diffs.iter().sum::<f64>() / diffs.len() as f64),
        }
    }
}

/// What to export and how.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportOptions {
    /// Precision of the written graph.
    pub precision: Precision,
    /// File stem of `<name>.onnx` and `<name>.json`.
    pub name: String,
    /// Version written into the manifest.
    pub version: String,
    /// Where to write.
    pub out_dir: PathBuf,
    /// The FracAtlas folder: fp16 and int8 need it to calibrate and to measure the converted
    /// graph on the run's own validation and test splits.
    pub data: Option<PathBuf>,
    /// Training images to calibrate int8 activations on.
    pub calib_images: usize,
    /// How activation ranges are chosen.
    pub calibration: Calibration,
    /// Compare the converted graph on at most this many validation images (half of them
    /// fractured); thresholds and test metrics then stay the fp32 graph's. `None`: all, and
    /// the converted graph gets its own thresholds and test metrics.
    pub check_limit: Option<usize>,
}

impl ExportOptions {
    /// fp32 defaults for `name` into `out_dir`.
    pub fn new(precision: Precision, name: &str, out_dir: &Path) -> Self {
        ExportOptions {
            precision,
            name: name.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            out_dir: out_dir.into(),
            data: None,
            calib_images: 64,
            calibration: Calibration::Percentile { p: 99.99 },
            // tract has no fast fp16 kernels on x86: score a subset.
            check_limit: (precision == Precision::Fp16).then_some(32),
        }
    }
}

/// Where a run's model came from: the commit and exact command its training recorded
/// (`git_commit.txt`, `command.txt`), or `fallback_command` and the current commit.
pub fn training_record(run: &Path, split: String, fallback_command: String) -> TrainingRecord {
    let read = |f: &str| std::fs::read_to_string(run.join(f)).map(|t| t.trim().to_owned());
    TrainingRecord {
        data: "FracAtlas (Abedeen et al. 2023, CC BY 4.0)".into(),
        split,
        git_commit: read("git_commit.txt")
            .unwrap_or_else(|_| format!("unknown (exported at {})", git_commit())),
        command: read("command.txt").unwrap_or(fallback_command),
    }
}

/// Writes `<out_dir>/<stem>.json` beside the ONNX file.
pub fn write_manifest(
    out_dir: &Path,
    stem: &str,
    onnx: PathBuf,
    manifest: Manifest,
) -> anyhow::Result<Exported> {
    let path = out_dir.join(format!("{stem}.json"));
    save_manifest(&path, &manifest)?;
    Ok(Exported {
        onnx,
        manifest: path,
        content: manifest,
    })
}

/// Writes `manifest` to `path`, durably, only if the edge will accept it (the checks fv-edge
/// runs at start-up).
pub fn save_manifest(path: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(manifest)? + "\n";
    Manifest::from_json(&text, path).with_context(|| {
        format!(
            "{}: a manifest the edge would refuse was not written",
            path.display()
        )
    })?;
    fv_core::durable::write(path, text.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// Writes `<out_dir>/<stem>.onnx`; returns its path and sha256 (hex), for the manifest.
pub fn write_model(out_dir: &Path, stem: &str, bytes: &[u8]) -> anyhow::Result<(PathBuf, String)> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let path = out_dir.join(format!("{stem}.onnx"));
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok((path, fv_core::manifest::sha256_hex(bytes)))
}
