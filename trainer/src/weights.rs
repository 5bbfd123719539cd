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
    // A run's kept checkpoint (`best.safetensors.gz`, f16) is read as it is, widened.
    let mut store = if path.extension().is_some_and(|e| e == "gz") {
        let bytes = crate::carry::widened_checkpoint(path).map_err(|e| WeightsError::Read {
            path: path.to_owned(),
            message: format!("{e:#}"),
        })?;
        SafetensorsStore::from_bytes(Some(bytes))
    } else {
        SafetensorsStore::from_file(path)
    };
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

/// Packs `from` into `to` (`*.safetensors.gz`, f16): a `.safetensors` checkpoint (a finished
/// run's weights, kept in `results/` after its resume pack leaves the tree) as it is, anything
/// else as a PyTorch checkpoint ([`convert_pytorch`]). Returns the number of tensors written.
pub fn convert(from: &Path, to: &Path) -> anyhow::Result<usize> {
    if from.extension().is_some_and(|e| e == "safetensors") {
        crate::carry::narrow_checkpoint(from, to)
    } else {
        convert_pytorch(from, to)
    }
}

/// Converts a published PyTorch checkpoint (`from`, a state dict in either of PyTorch's
/// formats, read without Python) into a packed checkpoint `to` (`*.safetensors.gz`, f16):
/// each name's parts lose their leading underscores (`_blocks.0._bn1.weight` →
/// `blocks.0.bn1.weight`, the reference EfficientNet's naming), batch-norm step counters are
/// dropped. Returns the number of tensors written.
pub fn convert_pytorch(from: &Path, to: &Path) -> anyhow::Result<usize> {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let reader = pytorch_reader::PytorchReader::new(from)
        .map_err(|e| anyhow::anyhow!("{}: not a PyTorch checkpoint: {e}", from.display()))?;
    let mut tensors = Vec::new();
    for (name, t) in reader.tensors() {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        anyhow::ensure!(
            t.dtype() == pytorch_reader::DType::F32,
            "{}: tensor `{name}` is {:?}; only f32 weights are converted",
            from.display(),
            t.dtype()
        );
        let data = t
            .read()
            .map_err(|e| anyhow::anyhow!("{}: cannot read tensor `{name}`: {e}", from.display()))?;
        let ours: Vec<&str> = name.split('.').map(|p| p.trim_start_matches('_')).collect();
        tensors.push((ours.join("."), t.shape().to_vec(), data));
    }
    anyhow::ensure!(!tensors.is_empty(), "{}: holds no tensors", from.display());
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let views = tensors
        .iter()
        .map(|(n, shape, data)| Ok((n.clone(), TensorView::new(Dtype::F32, shape.clone(), data)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", from.display()))?;
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| anyhow::anyhow!("{}: cannot convert: {e}", from.display()))?;
    crate::carry::write_narrowed(&bytes, from, to)
}

/// Writes to `out` the mean of the checkpoints `inputs` (a run's last epochs, say), tensor by
/// tensor: an average of weights along one training path generalizes like an exponential
/// moving average of them. Every file must hold the same tensors with the same shapes; f32
/// tensors are averaged, any other type must be equal in all. A `.gz` input is a kept
/// checkpoint (f16, packed), read as f32.
pub fn average(inputs: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use safetensors::{Dtype, SafeTensors};
    anyhow::ensure!(
        !inputs.is_empty(),
        "name at least one checkpoint to average"
    );
    // A finished run's kept weights (`best.safetensors.gz`, f16) are read widened, so that
    // two runs' kept weights can be averaged (a soup of seeds).
    let bytes: Vec<Vec<u8>> = inputs
        .iter()
        .map(|p| {
            if p.extension().is_some_and(|e| e == "gz") {
                crate::carry::widened_checkpoint(p)
            } else {
                std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))
            }
        })
        .collect::<anyhow::Result<_>>()?;
    let files: Vec<SafeTensors> = bytes
        .iter()
        .zip(inputs)
        .map(|(b, p)| {
            SafeTensors::deserialize(b)
                .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", p.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    let (first, first_path) = (&files[0], &inputs[0]);
    let mut names = first.names();
    names.sort_unstable();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for name in names {
        let base = first.tensor(name)?;
        let mut views = Vec::with_capacity(files.len());
        for (f, p) in files.iter().zip(inputs) {
            let v = f.tensor(name).map_err(|_| {
                anyhow::anyhow!(
                    "{}: no tensor `{name}`, which {} has: not a checkpoint of the same model",
                    p.display(),
                    first_path.display()
                )
            })?;
            anyhow::ensure!(
                v.dtype() == base.dtype() && v.shape() == base.shape(),
                "{}: tensor `{name}` is {:?} {:?}, {} has {:?} {:?}",
                p.display(),
                v.dtype(),
                v.shape(),
                first_path.display(),
                base.dtype(),
                base.shape()
            );
            views.push(v);
        }
        let data = match base.dtype() {
            Dtype::F32 => {
                let mut sum = vec![0f64; base.data().len() / 4];
                for v in &views {
                    for (s, c) in sum.iter_mut().zip(v.data().chunks_exact(4)) {
                        *s += f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                    }
                }
                let n = views.len() as f64;
                sum.iter()
                    .flat_map(|s| ((s / n) as f32).to_le_bytes())
                    .collect()
            }
            d => {
                for (v, p) in views.iter().zip(inputs) {
                    anyhow::ensure!(
                        v.data() == base.data(),
                        "{}: tensor `{name}` ({d:?}) differs from {}'s and cannot be averaged",
                        p.display(),
                        first_path.display()
                    );
                }
                base.data().to_vec()
            }
        };
        tensors.push((name.to_owned(), base.dtype(), base.shape().to_vec(), data));
    }
    let views = tensors
        .iter()
        .map(|(n, d, s, b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    // The first file's header metadata (the writer's format notes) travels along.
    let (_, header) = SafeTensors::read_metadata(&bytes[0])?;
    let serialized = safetensors::serialize(views, header.metadata().clone())?;
    std::fs::write(out, serialized).with_context(|| format!("{}: cannot write", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;

    fn write(path: &Path, tensors: &[(&str, Vec<f32>)]) {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, v)| {
                let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                ((*n).to_owned(), vec![v.len()], b)
            })
            .collect();
        let views = bytes.iter().map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        });
        std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    #[test]
    fn a_safetensors_checkpoint_is_packed_as_it_is_and_a_stranger_named() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (
            dir.path().join("w.safetensors"),
            dir.path().join("w.safetensors.gz"),
        );
        write(&from, &[("w", vec![1.0, -2.5]), ("bn.mean", vec![0.25])]);
        assert_eq!(convert(&from, &to).unwrap(), 2);
        let bytes = crate::carry::widened_checkpoint(&to).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let w: Vec<f32> = st
            .tensor("w")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(w, [1.0, -2.5]);
        std::fs::write(&from, b"not a checkpoint").unwrap();
        let err = convert(&from, &to).unwrap_err().to_string();
        assert!(
            err.contains("w.safetensors") && err.contains("not a safetensors"),
            "{err}"
        );
    }

    #[test]
    fn checkpoints_average_tensor_by_tensor_and_a_stranger_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c, out) = (
            dir.path().join("a.safetensors"),
            dir.path().join("b.safetensors"),
            dir.path().join("c.safetensors"),
            dir.path().join("mean.safetensors"),
        );
        write(&a, &[("w", vec![1.0, 2.0]), ("bn.mean", vec![0.0])]);
        write(&b, &[("w", vec![3.0, 6.0]), ("bn.mean", vec![1.0])]);
        // One of them kept as a finished run keeps its weights (f16, packed).
        let kept = dir.path().join("b.safetensors.gz");
        convert(&b, &kept).unwrap();
        average(&[a.clone(), kept], &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let values = |name: &str| -> Vec<f32> {
            st.tensor(name)
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        assert_eq!(values("w"), vec![2.0, 4.0]);
        assert_eq!(values("bn.mean"), vec![0.5]);

        write(&c, &[("w", vec![1.0, 2.0, 3.0]), ("bn.mean", vec![0.0])]);
        let err = average(&[a, c], &out).unwrap_err().to_string();
        assert!(
            err.contains("c.safetensors") && err.contains("`w`"),
            "{err}"
        );
    }
}
