//! `fv-train export`: a run's best checkpoint to ONNX with its manifest, the contract the
//! edge reads (see `fv_core::manifest`).
//!
//! The graph is captured from the burn forward pass by `burn-onnx` (its `export` feature):
//! the model as trained, with a softmax on top so the edge reads probabilities.

use crate::evaluate::ClassifyMetrics;
use crate::training::{build_model, RunDir, TrainConfig};
use anyhow::Context as _;
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};
use burn_onnx::export::OnnxExporter;
use fv_core::manifest::{
    Manifest, OutputSpec, Precision, Task, TestMetrics, Thresholds, TrainingRecord,
    MANIFEST_VERSION,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
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

fn metric_values(m: &ClassifyMetrics) -> Option<TestMetrics> {
    let t = m.test.as_ref()?;
    let mut values = BTreeMap::new();
    let mut put = |k: &str, v: Option<f64>| {
        if let Some(v) = v {
            values.insert(k.to_owned(), v);
        }
    };
    put("roc_auc", t.at_0_5.roc_auc);
    put("pr_auc", t.at_0_5.pr_auc);
    put("ece", t.at_0_5.ece);
    put("sensitivity@suspicious", t.at_suspicious.sensitivity);
    put("specificity@suspicious", t.at_suspicious.specificity);
    put("sensitivity@definite", t.at_definite.sensitivity);
    put("specificity@definite", t.at_definite.specificity);
    put("precision@definite", t.at_definite.precision);
    put(
        "balanced_accuracy@definite",
        t.at_definite.balanced_accuracy,
    );
    Some(TestMetrics {
        split: t.split.clone(),
        n_per_class: BTreeMap::from([
            ("fractured".to_owned(), t.n_fractured),
            ("not_fractured".to_owned(), t.n_non_fractured),
        ]),
        values,
    })
}

/// The checked-out commit, or `unknown` outside a git work tree.
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// Softmax over two logits, written as `[σ(l₀ − l₁), σ(l₁ − l₀)]`: the same values, with
/// ops burn-onnx 0.22 lowers (it has no Softmax).
fn two_class_probabilities(logits: Tensor<2>) -> Tensor<2> {
    let [b, _] = logits.dims();
    let d = logits.clone().slice([0..b, 1..2]) - logits.slice([0..b, 0..1]);
    Tensor::cat(vec![sigmoid(-d.clone()), sigmoid(d)], 1)
}

/// Exports `run`'s best checkpoint as `out_dir/<name>.onnx` and `out_dir/<name>.json`.
pub fn export_run(
    run: &RunDir,
    precision: Precision,
    name: &str,
    version: &str,
    out_dir: &Path,
) -> anyhow::Result<Exported> {
    anyhow::ensure!(
        precision == Precision::Fp32,
        "precision {precision:?} is not exported yet: only fp32 is; int8 and fp16 follow in the export issue"
    );
    anyhow::ensure!(
        run.best().is_file(),
        "{}: no checkpoint; train the run with `fv-train classify` first",
        run.best().display()
    );
    let read = |file: &str| -> anyhow::Result<String> {
        let p = run.0.join(file);
        std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))
    };
    let config: TrainConfig = serde_json::from_str(&read("config.json")?)?;
    let metrics: ClassifyMetrics = serde_json::from_str(&read("metrics.json")?)
        .context("the run has no metrics.json: evaluate it with `fv-train eval` first")?;
    let device = Device::flex();
    let model = build_model(&config, Some(&run.best()), &device)?;
    let s = config.image_size as usize;
    let sample = Tensor::<4>::zeros([1, 3, s, s], &device);
    let onnx = OnnxExporter::new()
        .export(&model, sample, |m, x| two_class_probabilities(m.forward(x)))
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot export {} to ONNX: {e}",
                run.0.display(),
                config.model.name()
            )
        })?;
    std::fs::create_dir_all(out_dir)?;
    let onnx_path = out_dir.join(format!("{name}.onnx"));
    let bytes = onnx.into_bytes();
    std::fs::write(&onnx_path, &bytes)
        .with_context(|| format!("writing {}", onnx_path.display()))?;
    let sha = Sha256::digest(&bytes);
    let onnx_sha256 = sha.iter().map(|b| format!("{b:02x}")).collect();

    let mut input = config.input_spec();
    input.name = input_name(&bytes).unwrap_or(input.name);
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        name: name.into(),
        version: version.into(),
        task: Task::Classify,
        input,
        outputs: vec![OutputSpec {
            name: output_name(&bytes).unwrap_or_else(|| "output".into()),
            shape: vec![1, 2],
            meaning: "probabilities".into(),
        }],
        labels: vec!["not_fractured".into(), "fractured".into()],
        thresholds: Thresholds {
            suspicious: metrics.thresholds.suspicious.threshold,
            definite: metrics.thresholds.definite.threshold,
        },
        precision,
        metrics: metric_values(&metrics),
        training: Some(TrainingRecord {
            data: "FracAtlas (Abedeen et al. 2023, CC BY 4.0)".into(),
            split: "fractured: official split; non-fractured: seeded hold-out (see data.json)"
                .into(),
            // The commit the run was trained from, recorded by `classify`.
            git_commit: std::fs::read_to_string(run.0.join("git_commit.txt"))
                .map(|c| c.trim().to_owned())
                .unwrap_or_else(|_| format!("unknown (exported at {})", git_commit())),
            command: std::fs::read_to_string(run.0.join("command.txt"))
                .unwrap_or_else(|_| {
                    format!(
                        "fv-train classify --model {} (see config.json)",
                        config.model.name()
                    )
                })
                .trim()
                .to_owned(),
        }),
        onnx_sha256,
    };
    let manifest_path = out_dir.join(format!("{name}.json"));
    std::fs::write(
        &manifest_path,
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;
    Ok(Exported {
        onnx: onnx_path,
        manifest: manifest_path,
        content: manifest,
    })
}

/// The graph's first input name, read from the protobuf without a full parse.
fn input_name(bytes: &[u8]) -> Option<String> {
    io_names(bytes).0
}

fn output_name(bytes: &[u8]) -> Option<String> {
    io_names(bytes).1
}

/// Reads the first `graph.input` and `graph.output` names (ModelProto field 7 is the graph;
/// GraphProto fields 11 and 12 are inputs and outputs; ValueInfoProto field 1 is the name).
fn io_names(bytes: &[u8]) -> (Option<String>, Option<String>) {
    fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*i)?;
            *i += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    /// Length-delimited fields `(number, payload)` of one message.
    fn fields(b: &[u8]) -> Vec<(u64, &[u8])> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let Some(key) = varint(b, &mut i) else { break };
            match key & 7 {
                0 => {
                    if varint(b, &mut i).is_none() {
                        break;
                    }
                }
                1 => i += 8,
                5 => i += 4,
                2 => {
                    let Some(len) = varint(b, &mut i) else { break };
                    let end = i + len as usize;
                    if end > b.len() {
                        break;
                    }
                    out.push((key >> 3, &b[i..end]));
                    i = end;
                }
                _ => break,
            }
        }
        out
    }
    let name_of = |vi: &[u8]| {
        fields(vi)
            .into_iter()
            .find(|f| f.0 == 1)
            .map(|f| String::from_utf8_lossy(f.1).into_owned())
    };
    let Some((_, graph)) = fields(bytes).into_iter().find(|f| f.0 == 7) else {
        return (None, None);
    };
    let g = fields(graph);
    let first = |n| g.iter().find(|f| f.0 == n).and_then(|f| name_of(f.1));
    (first(11), first(12))
}
