//! Loading published weights (safetensors, Hugging Face / PyTorch layout) into our modules,
//! with errors that name the tensor and both shapes.

use burn::module::Module;
use burn::store::{ApplyError, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use std::path::{Path, PathBuf};

/// Why weights could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file is missing or unreadable.
    #[error("{path}: cannot read the weights file: {message}; convert published weights with the scripts in trainer/scripts/")]
    Read {
        /// The file.
        path: PathBuf,
        /// The reader's message.
        message: String,
    },
    /// A tensor has the wrong shape.
    #[error("{path}: tensor `{tensor}` has shape {found:?} in the file but the model expects {expected:?}; are these weights for this --model?")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor's path in the model.
        tensor: String,
        /// What the model needs.
        expected: Vec<usize>,
        /// What the file holds.
        found: Vec<usize>,
    },
    /// Tensors the model needs are not in the file.
    #[error("{path}: {count} tensors the model needs are missing, first `{first}`; are these weights for this --model?")]
    Missing {
        /// The file.
        path: PathBuf,
        /// How many.
        count: usize,
        /// The first one.
        first: String,
    },
    /// Anything else the loader refused.
    #[error("{path}: tensor `{tensor}`: {message}")]
    Other {
        /// The file.
        path: PathBuf,
        /// The tensor's path in the model.
        tensor: String,
        /// The loader's message.
        message: String,
    },
}

/// What a load left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Tensors loaded.
    pub applied: usize,
    /// Model tensors kept at their fresh values (allowed by `skip`).
    pub kept_fresh: Vec<String>,
    /// File tensors the model has no place for.
    pub unused: Vec<String>,
}

/// Loads `path` into `model`. PyTorch conventions are adapted (linear weights transposed,
/// norm `weight`/`bias` read as `gamma`/`beta`). Model tensors whose path starts with one of
/// `skip` (a fresh classifier head, say) may be absent from the file; any other missing
/// tensor, and any shape mismatch, is an error.
///
/// `remap` rewrites the file's tensor names (regex, replacement) before matching.
pub fn load_safetensors<M: Module>(
    mut model: M,
    path: &Path,
    skip: &[&str],
    remap: &[(&str, &str)],
) -> Result<(M, LoadReport), WeightsError> {
    if !path.is_file() {
        return Err(WeightsError::Read {
            path: path.to_owned(),
            message: "no such file".into(),
        });
    }
    let mut store = SafetensorsStore::from_file(path);
    for (from, to) in remap {
        store = store.with_key_remapping(from, *to);
    }
    let mut store = store
        .with_from_adapter(PyTorchToBurnAdapter)
        .allow_partial(true)
        .skip_enum_variants(true)
        .validate(false);
    let result = model
        .load_from(&mut store)
        .map_err(|e| WeightsError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let is_skipped = |name: &str| skip.iter().any(|s| name.starts_with(s));
    // Tensors of another shape under `skip` (a COCO head in a one-class model) stay fresh.
    let mut reshaped = Vec::new();
    for e in &result.errors {
        if let ApplyError::ShapeMismatch { path: tensor, .. } = e {
            if is_skipped(tensor) {
                reshaped.push(tensor.clone());
                continue;
            }
        }
        return Err(match e {
            ApplyError::ShapeMismatch {
                path: tensor,
                expected,
                found,
            } if !is_skipped(tensor) => WeightsError::Shape {
                path: path.to_owned(),
                tensor: tensor.clone(),
                expected: expected.to_vec(),
                found: found.to_vec(),
            },
            other => WeightsError::Other {
                path: path.to_owned(),
                tensor: String::new(),
                message: other.to_string(),
            },
        });
    }
    let missing: Vec<String> = result
        .missing
        .iter()
        .map(|(name, _)| name.clone())
        .filter(|n| !is_skipped(n))
        .collect();
    if let Some(first) = missing.first() {
        return Err(WeightsError::Missing {
            path: path.to_owned(),
            count: missing.len(),
            first: first.clone(),
        });
    }
    Ok((
        model,
        LoadReport {
            applied: result.applied.len(),
            kept_fresh: result
                .missing
                .iter()
                .map(|(n, _)| n.clone())
                .chain(reshaped)
                .collect(),
            unused: result.unused.clone(),
        },
    ))
}
