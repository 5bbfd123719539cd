//! The models directory: manifests beside ONNX files. Each model's file is checked against
//! its manifest's sha256 before it is loaded; a mismatch refuses to start.

use crate::engine::{Engine, EngineKind, TractEngine};
use anyhow::Context as _;
use fv_core::imaging::{DecodeOptions, MinSides};
use fv_core::manifest::{Manifest, Precision, Task};
use fv_core::result::ModelRef;
use std::path::{Path, PathBuf};

/// The precision chosen when a directory holds several and none is asked for: fp32, exact
/// on tract's CPU path (int8 is for accelerators; fp16 has no fast CPU kernels in tract).
pub const DEFAULT_PRECISION: Precision = Precision::Fp32;

/// A model ready to run.
pub struct Model {
    /// The manifest beside the ONNX file, validated on load.
    pub manifest: Manifest,
    /// The ONNX file.
    pub path: PathBuf,
    /// The engine running it.
    pub engine: Box<dyn Engine>,
}

impl Model {
    /// How results name it.
    pub fn reference(&self) -> ModelRef {
        ModelRef {
            name: self.manifest.name.clone(),
            version: self.manifest.version.clone(),
            sha256: self.manifest.onnx_sha256.clone(),
            precision: self.manifest.precision,
            engine: Some(self.engine.name().to_owned()),
        }
    }
}

/// The classifier and, when the directory has one, the detector.
pub struct Models {
    /// Fracture classifier.
    pub classifier: Model,
    /// Fracture detector.
    pub detector: Option<Model>,
}

impl Models {
    /// The smallest decoded image a JPEG may be reduced to for these models: what each
    /// model's input needs ([`fv_core::preprocess::InputSpec::min_decoded_sides`]).
    pub fn min_sides(&self) -> MinSides {
        std::iter::once(&self.classifier)
            .chain(&self.detector)
            .map(|m| m.manifest.input.min_decoded_sides())
            .fold(MinSides::default(), MinSides::max)
    }

    /// `options` with JPEGs decoded at the DCT scale these models need when `reduced`
    /// (the configuration's `reduced_decode`), else at full size.
    pub fn decode_options(&self, options: &DecodeOptions, reduced: bool) -> DecodeOptions {
        DecodeOptions {
            reduce_to: reduced.then(|| self.min_sides()),
            ..options.clone()
        }
    }
}

/// A manifest found in the directory with its ONNX file.
#[derive(Clone, Debug)]
pub struct Found {
    /// Parsed manifest.
    pub manifest: Manifest,
    /// Manifest file.
    pub json: PathBuf,
    /// ONNX file beside it.
    pub onnx: PathBuf,
}

/// Every model manifest in `dir` (JSON files with a `manifest_version`).
pub fn scan(dir: &Path) -> anyhow::Result<Vec<Found>> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "{}: cannot read the models directory; pass --models DIR (default ./models)",
            dir.display()
        )
    })?;
    let mut found = Vec::new();
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for json in paths {
        if json.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&json)
            .with_context(|| format!("{}: cannot read", json.display()))?;
        if !text.contains("\"manifest_version\"") {
            continue;
        }
        let manifest = Manifest::from_json(&text, &json)?;
        let onnx = json.with_extension("onnx");
        found.push(Found {
            manifest,
            json,
            onnx,
        });
    }
    Ok(found)
}

fn choose(
    found: &[Found],
    task: Task,
    name: Option<&str>,
    precision: Option<Precision>,
    dir: &Path,
) -> anyhow::Result<Option<Found>> {
    let of_task: Vec<&Found> = found
        .iter()
        .filter(|f| f.manifest.task == task)
        .filter(|f| name.is_none_or(|n| f.manifest.name == n))
        .collect();
    if of_task.is_empty() {
        return Ok(None);
    }
    let mut names: Vec<&str> = of_task.iter().map(|f| f.manifest.name.as_str()).collect();
    names.dedup();
    anyhow::ensure!(
        names.len() == 1,
        "{}: several {task:?} models ({}); choose one with `classifier`/`detector` in the config",
        dir.display(),
        names.join(", ")
    );
    let want = precision.unwrap_or(DEFAULT_PRECISION);
    let pick = of_task
        .iter()
        .find(|f| f.manifest.precision == want)
        // Only one precision present and none asked for: take it.
        .or_else(|| (precision.is_none() && of_task.len() == 1).then(|| &of_task[0]));
    match pick {
        Some(f) => Ok(Some((*f).clone())),
        None => anyhow::bail!(
            "{}: model `{}` has no {} file (found: {}); pass --precision with one of those",
            dir.display(),
            names[0],
            want,
            of_task
                .iter()
                .map(|f| f.manifest.precision.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// An ONNX file's bytes, checked against its manifest's sha256. Engines are built from these
/// very bytes, so a file swapped after the check can never run under the manifest's hash.
pub struct Checked {
    /// Where it was found.
    pub found: Found,
    /// The ONNX file's content.
    pub bytes: Vec<u8>,
}

impl Checked {
    /// The model's input shape, `[1, channels, height, width]`.
    pub fn input_shape(&self) -> [usize; 4] {
        let i = &self.found.manifest.input;
        [1, i.channels as usize, i.height as usize, i.width as usize]
    }

    /// tract on these bytes (what the trainer's checks and calibration run).
    pub fn tract(&self) -> anyhow::Result<TractEngine> {
        TractEngine::from_bytes(&self.bytes, &self.found.onnx, &self.input_shape())
    }
}

impl Found {
    /// The manifest `json` (any file name) and the ONNX file beside it.
    pub fn open(json: &Path) -> anyhow::Result<Found> {
        Ok(Found {
            manifest: Manifest::from_path(json)?,
            json: json.to_path_buf(),
            onnx: json.with_extension("onnx"),
        })
    }

    /// Reads the ONNX file once and checks it against the manifest's sha256.
    pub fn read_checked(&self) -> anyhow::Result<Checked> {
        let bytes = std::fs::read(&self.onnx)
            .with_context(|| format!("{}: cannot read", self.onnx.display()))?;
        let sha = fv_core::manifest::sha256_hex(&bytes);
        anyhow::ensure!(
            sha == self.manifest.onnx_sha256,
            "{}: sha256 {sha} does not match its manifest {} ({}); the file was changed or \
             damaged: copy the model and its manifest again",
            self.onnx.display(),
            self.json.display(),
            self.manifest.onnx_sha256
        );
        Ok(Checked {
            found: self.clone(),
            bytes,
        })
    }
}

/// Loads one model with tract after checking its hash.
pub fn load(found: &Found) -> anyhow::Result<Model> {
    load_with(found, EngineKind::Tract, Path::new("state/engine-cache"))
}

/// Loads one model with `engine` after checking its hash; `cache` holds TensorRT engines.
pub fn load_with(found: &Found, engine: EngineKind, cache: &Path) -> anyhow::Result<Model> {
    let checked = found.read_checked()?;
    let engine = build(engine, &checked, cache)?;
    tracing::info!("{}: runs on {}", found.onnx.display(), engine.name());
    Ok(Model {
        manifest: found.manifest.clone(),
        path: found.onnx.clone(),
        engine,
    })
}

/// The engine `kind` for the checked ONNX `bytes` of `found`. [`EngineKind::Auto`] tries
/// ONNX Runtime (the faster engine on the CPU, BENCHMARKS.md; TensorRT first in a `tensorrt`
/// build) and falls back to tract, saying why.
fn build(kind: EngineKind, checked: &Checked, cache: &Path) -> anyhow::Result<Box<dyn Engine>> {
    let found = &checked.found;
    // Only ONNX Runtime's TensorRT provider caches engines.
    #[cfg(not(feature = "ort"))]
    let _ = cache;
    Ok(match kind {
        EngineKind::Auto => {
            let ort = if cfg!(feature = "tensorrt") {
                EngineKind::Tensorrt
            } else {
                EngineKind::OrtCpu
            };
            match build(ort, checked, cache) {
                Ok(e) => e,
                Err(e) => {
                    tracing::info!(
                        "{}: engine auto: ONNX Runtime is not used ({e:#}); tract runs it",
                        found.onnx.display()
                    );
                    build(EngineKind::Tract, checked, cache)?
                }
            }
        }
        EngineKind::Tract => Box::new(checked.tract()?),
        #[cfg(feature = "ort")]
        EngineKind::OrtCpu | EngineKind::Tensorrt => {
            use crate::engine::onnxruntime::{OrtEngine, Provider};
            let want = if kind == EngineKind::Tensorrt {
                Provider::TensorRt
            } else {
                Provider::Cpu
            };
            Box::new(OrtEngine::from_bytes(
                &checked.bytes,
                &found.onnx,
                checked.input_shape(),
                want,
                cache,
                &found.manifest.onnx_sha256,
            )?)
        }
        #[cfg(not(feature = "ort"))]
        other => anyhow::bail!(
            "engine {other:?} needs ONNX Runtime support: rebuild with the `ort` feature (or `tensorrt`)"
        ),
    })
}

/// What to load from a models directory.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Precision to run (default [`DEFAULT_PRECISION`]).
    pub precision: Option<Precision>,
    /// Classifier name, when the directory has several.
    pub classifier: Option<String>,
    /// Detector name, when the directory has several.
    pub detector: Option<String>,
    /// Engine (default auto).
    pub engine: EngineKind,
    /// Where TensorRT engines are cached (the state dir's `engine-cache`).
    pub engine_cache: Option<PathBuf>,
    /// The share of fractures in this unit's stream, which the classifier's probability is
    /// corrected to (default: its manifest's `prevalence.deployment`).
    pub prevalence: Option<f64>,
}

/// Loads the classifier (required) and the detector (optional) from `dir`.
pub fn load_dir(dir: &Path, sel: &Selection) -> anyhow::Result<Models> {
    let found = scan(dir)?;
    let classifier = choose(
        &found,
        Task::Classify,
        sel.classifier.as_deref(),
        sel.precision,
        dir,
    )?
    .with_context(|| {
        format!(
            "{}: no classifier manifest (task \"classify\"); export one with `fv-train export`",
            dir.display()
        )
    })?;
    let detector = choose(
        &found,
        Task::Detect,
        sel.detector.as_deref(),
        sel.precision,
        dir,
    )?;
    let mut classifier = classifier;
    if let Some(deployment) = sel.prevalence {
        let m = &mut classifier.manifest;
        let fitted = m.prevalence.map(|p| p.fitted).with_context(|| {
            format!(
                "{}: its manifest says no prevalence it was fitted at; set one with `fv-train expect --prevalence` before setting a unit's",
                m.name
            )
        })?;
        m.prevalence = Some(
            fv_core::calibration::Prevalence::new(fitted, deployment)
                .with_context(|| format!("the unit's prevalence for {}", m.name))?,
        );
    }
    let cache = sel
        .engine_cache
        .clone()
        .unwrap_or_else(|| PathBuf::from("state/engine-cache"));
    if let Some(f) = &classifier.manifest.fusion {
        let with = detector.as_ref().map(|d| &d.manifest);
        if fv_core::reading::fusion_with(&classifier.manifest, with).is_some() {
            tracing::info!(
                "{}: fused with detector {}: the detector runs on every image (unless detect = never)",
                classifier.manifest.name,
                f.detector
            );
        } else {
            tracing::warn!(
                "{}: its fusion was fitted with detector {} (ONNX sha256 {}), which is not the one installed; the classifier is read alone",
                classifier.manifest.name,
                f.detector,
                &f.detector_sha256[..12]
            );
        }
    }
    Ok(Models {
        classifier: load_with(&classifier, sel.engine, &cache)?,
        detector: detector
            .as_ref()
            .map(|d| load_with(d, sel.engine, &cache))
            .transpose()?,
    })
}
