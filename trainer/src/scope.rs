//! `fv-train scope`: gives an exported classifier the check that keeps it from reading images
//! outside its scope ([`fv_core::scope`]).
//!
//! 1. The classifier's pooled embedding (the input of its last linear layer) and the output of
//!    each residual block, pooled over the image, are read on a seeded sample of training
//!    images, exactly as fv-edge reads an image (fv-core's decoder and preprocessing, the ONNX
//!    graph in tract).
//! 2. Per layer, their mean and a Ledoit–Wolf shrunk covariance give a Mahalanobis distance;
//!    the mean over the layers of `(v − μ)ᵀ Σ⁻¹ (v − μ) / D` is appended to the graph as one
//!    more output, written as subtractions and matrix products by `L⁻ᵀ` (Σ = LLᵀ), so any
//!    engine runs it.
//! 3. The threshold is a quantile of the distances of the validation images, as they are and
//!    under the fleet's shifts ([`Shift::SUITE`]): another unit's radiographs must stay in
//!    scope. Test images and any out-of-scope folder are read with the final graph and
//!    reported; they choose nothing.

use crate::classify::run_split_samples;
use crate::data::classify::{Photometric, Sample};
use crate::data::shift::Shift;
use crate::onnx::graph::{self, float_tensor, float_value, node, Index};
use anyhow::Context as _;
use fv_core::imaging::{decode_file, DecodeOptions, XrayImage};
use fv_core::manifest::{sha256_hex, Manifest, OutputMeaning, OutputSpec};
use fv_core::metrics::classification::{roc_auc, Scored};
use fv_core::preprocess::preprocess;
use fv_core::scope::{Applicability, ScopeFit, ScopeReading};
use fv_core::Probability;
use fv_runtime::{Found, TractEngine};
use nalgebra::DMatrix;
use rand::seq::SliceRandom as _;
use rand::SeedableRng as _;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The name of the output the check adds, and the prefix of its nodes and initializers.
pub const OUTPUT: &str = "scope_distance";
const PREFIX: &str = "fv.scope.";

/// What to fit, on which data.
#[derive(Clone, Debug)]
pub struct ScopeOptions {
    /// The classifier's manifest (the ONNX file beside it).
    pub classifier: PathBuf,
    /// The classifier's run folder, or a copy of its `data.json`'s folder: names the split.
    pub run: PathBuf,
    /// The FracAtlas folder.
    pub data: PathBuf,
    /// Training images for the mean and covariance.
    pub train_images: usize,
    /// Each training image also read once under a random photometric change drawn as the
    /// classifier's `--photometric` training drew them, so that what it learned to read
    /// (another unit's processing) is inside the scope.
    pub train_processed: bool,
    /// Shifted copies of each validation image (each a different shift of the suite).
    pub shifts_per_image: usize,
    /// The quantile of the validation distances the threshold sits at.
    pub quantile: f64,
    /// Folders of images outside the scope, reported only (each folder is one kind).
    pub outside: Vec<PathBuf>,
    /// Where `scope.json` and `distances.csv` go.
    pub out: PathBuf,
    /// Write the graph and the manifest back.
    pub write: bool,
}

/// One image's distance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Distance {
    /// Which set: `valid`, `valid-shifted`, `test`, or `outside/<folder>`.
    pub set: String,
    /// The image (FracAtlas id or file name), and the shift for shifted ones.
    pub image: String,
    /// Its distance; `None` when it could not be read.
    pub distance: Option<f64>,
    /// The classifier's raw fracture probability on it (one view, uncalibrated).
    pub probability: Option<f64>,
    /// How coloured its source was.
    pub colour: Option<f64>,
    /// The truth, for FracAtlas images.
    pub fractured: Option<bool>,
}

/// Refusals on one set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetReport {
    /// The set.
    pub set: String,
    /// Images read.
    pub images: usize,
    /// Images above the threshold (unreadable ones not counted in either).
    pub refused: usize,
    /// `refused / images`.
    pub share: f64,
    /// Median distance.
    pub median: f64,
    /// For a shift: the classifier's raw ROC-AUC on its validation images as they are, and
    /// under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roc_auc: Option<[f64; 2]>,
    /// For a shift: whether the classifier still reads it (ROC-AUC lower by at most
    /// [`READABLE_AUC_DROP`]), so that its images count in the threshold's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readable: Option<bool>,
}

/// The largest ROC-AUC drop under a shift for which the classifier still counts as reading
/// it. A shift beyond it (heavy noise, say) is one the models cannot read: its images should
/// be refused, so they do not widen the threshold.
pub const READABLE_AUC_DROP: f64 = 0.05;

/// `OUT/scope.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScopeReport {
    /// The classifier.
    pub classifier: String,
    /// The check as written to the manifest.
    pub applicability: Applicability,
    /// The shrinkage Ledoit–Wolf chose.
    pub shrinkage: f64,
    /// Per set: validation, shifted validation, test, each outside folder.
    pub sets: Vec<SetReport>,
    /// Per shift: refusals on the validation images under it.
    pub shifts: Vec<SetReport>,
    /// Images that could not be read at all, with why.
    pub failures: Vec<String>,
}

/// The tensor that feeds the last linear layer: the input of the last `MatMul` or `Gemm`
/// whose weight is an initializer with one dimension equal to the number of labels.
fn embedding_tensor(g: &graph::GraphProto, labels: usize) -> anyhow::Result<(String, usize)> {
    let index = Index::new(g);
    for n in g.node.iter().rev() {
        if n.op_type != "MatMul" && n.op_type != "Gemm" {
            continue;
        }
        let Some(w) = n.input.get(1).and_then(|w| index.initializer.get(w)) else {
            continue;
        };
        let dims = &g.initializer[*w].dims;
        if dims.len() == 2 && dims.contains(&(labels as i64)) {
            let width = dims.iter().find(|&&d| d != labels as i64).copied();
            let width = width.unwrap_or(labels as i64) as usize;
            return Ok((n.input[0].clone(), width));
        }
    }
    anyhow::bail!("no final linear layer over {labels} labels found in the graph")
}

/// The graph without an earlier scope check (so that fitting again starts from the export).
fn strip(model: &mut graph::ModelProto) -> anyhow::Result<()> {
    let g = graph::graph_mut(model)?;
    g.node
        .retain(|n| !n.name.starts_with(PREFIX) && !n.output.iter().any(|o| o == OUTPUT));
    g.output
        .retain(|o| o.name != OUTPUT && !o.name.starts_with(PREFIX));
    g.initializer.retain(|t| !t.name.starts_with(PREFIX));
    Ok(())
}

/// Where the check looks: the pooled embedding and, pooled over the image, the output of
/// every residual block (an `Add` of two computed tensors), where the texture of an image is
/// still visible: a photograph or a CT slice can end up near a radiograph in the last layer,
/// rarely in all of them.
fn residual_outputs(g: &graph::GraphProto) -> Vec<String> {
    let index = Index::new(g);
    // A tensor computed from initializers alone (a reshaped bias) is a constant: an `Add` with
    // one is a bias, not a residual connection (the head's logits are made so).
    let mut constant: std::collections::HashSet<&str> =
        g.initializer.iter().map(|t| t.name.as_str()).collect();
    for n in &g.node {
        let inputs = n.input.iter().filter(|i| !i.is_empty());
        if inputs.clone().all(|i| constant.contains(i.as_str())) {
            constant.extend(n.output.iter().map(String::as_str));
        }
    }
    g.node
        .iter()
        .filter(|n| n.op_type == "Add" && n.input.len() == 2)
        .filter(|n| n.input.iter().all(|i| !constant.contains(i.as_str())))
        .filter(|n| n.input.iter().all(|i| index.producer.contains_key(i)))
        .map(|n| n.output[0].clone())
        .collect()
}

/// One place the check looks: a 2-D tensor, or a 4-D one pooled over the image.
#[derive(Clone, Debug)]
struct Layer {
    tensor: String,
    pooled: bool,
}

impl Layer {
    /// The name of its `[1, C]` vector in the graph.
    fn vector(&self, i: usize) -> String {
        if self.pooled {
            format!("{PREFIX}{i}.vector")
        } else {
            self.tensor.clone()
        }
    }

    /// Nodes that make its vector.
    fn nodes(&self, i: usize) -> Vec<graph::NodeProto> {
        if !self.pooled {
            return Vec::new();
        }
        let pooled = format!("{PREFIX}{i}.pooled");
        let mut flatten = node("Flatten", &self.vector(i), &[&pooled], &[&self.vector(i)]);
        flatten.attribute.push(graph::int_attr("axis", 1));
        vec![
            node("GlobalAveragePool", &pooled, &[&self.tensor], &[&pooled]),
            flatten,
        ]
    }
}

/// The graph with each layer's vector as an extra output, in order.
fn with_vectors(model: &graph::ModelProto, layers: &[Layer]) -> anyhow::Result<Vec<u8>> {
    let mut m = model.clone();
    let g = graph::graph_mut(&mut m)?;
    for (i, l) in layers.iter().enumerate() {
        g.node.extend(l.nodes(i));
        let out = format!("{PREFIX}{i}.out");
        g.node
            .push(node("Identity", &out, &[&l.vector(i)], &[&out]));
        g.output.push(float_value(&out, &[1, -1]));
    }
    Ok(graph::encode(&m))
}

/// One layer's fit: its mean and whitening matrix (row-major `d × d`).
struct Fitted {
    mean: Vec<f32>,
    whiten: Vec<f32>,
}

/// The graph with the distance appended as the output [`OUTPUT`], shape `[1, 1]`: the mean
/// over the layers of each one's squared Mahalanobis distance divided by its width.
fn with_distance(
    model: &graph::ModelProto,
    layers: &[Layer],
    fits: &[Fitted],
) -> anyhow::Result<Vec<u8>> {
    let mut m = model.clone();
    let g = graph::graph_mut(&mut m)?;
    let mut parts = Vec::new();
    for (i, (l, f)) in layers.iter().zip(fits).enumerate() {
        let d = f.mean.len();
        let name = |s: &str| format!("{PREFIX}{i}.{s}");
        g.node.extend(l.nodes(i));
        g.initializer
            .push(float_tensor(&name("mean"), &[1, d as i64], &f.mean));
        g.initializer.push(float_tensor(
            &name("whiten"),
            &[d as i64, d as i64],
            &f.whiten,
        ));
        g.initializer.push(float_tensor(
            &name("average"),
            &[d as i64, 1],
            &vec![1.0 / (d * layers.len()) as f32; d],
        ));
        let (centred, whitened, squared, part) = (
            name("centred"),
            name("whitened"),
            name("squared"),
            name("part"),
        );
        g.node.push(node(
            "Sub",
            &centred,
            &[&l.vector(i), &name("mean")],
            &[&centred],
        ));
        g.node.push(node(
            "MatMul",
            &whitened,
            &[&centred, &name("whiten")],
            &[&whitened],
        ));
        g.node
            .push(node("Mul", &squared, &[&whitened, &whitened], &[&squared]));
        g.node.push(node(
            "MatMul",
            &part,
            &[&squared, &name("average")],
            &[&part],
        ));
        parts.push(part);
    }
    let mut total = parts[0].clone();
    for (i, p) in parts.iter().enumerate().skip(1) {
        let out = if i + 1 == parts.len() {
            OUTPUT.to_owned()
        } else {
            format!("{PREFIX}sum.{i}")
        };
        g.node.push(node(
            "Add",
            &format!("{PREFIX}add.{i}"),
            &[&total, p],
            &[&out],
        ));
        total = out;
    }
    if parts.len() == 1 {
        g.node.push(node(
            "Identity",
            &format!("{PREFIX}total"),
            &[&total],
            &[OUTPUT],
        ));
    }
    g.output.push(float_value(OUTPUT, &[1, 1]));
    Ok(graph::encode(&m))
}

/// Mean and Ledoit–Wolf shrunk covariance of the rows of `x` (n × d), in f64.
fn shrunk_covariance(x: &DMatrix<f64>) -> (Vec<f64>, DMatrix<f64>, f64) {
    let (n, d) = x.shape();
    let mean: Vec<f64> = (0..d).map(|j| x.column(j).mean()).collect();
    let mut c = x.clone();
    for (j, m) in mean.iter().enumerate() {
        c.column_mut(j).add_scalar_mut(-m);
    }
    let s = c.transpose() * &c / n as f64;
    let mu = s.trace() / d as f64;
    let s_fro2 = s.norm_squared();
    let fourth: f64 = c.row_iter().map(|r| r.norm_squared().powi(2)).sum();
    let beta = ((fourth / n as f64 - s_fro2) / (d as f64 * n as f64)).max(0.0);
    let delta = (s_fro2 - 2.0 * mu * s.trace() + d as f64 * mu * mu) / d as f64;
    let shrinkage = if delta > 0.0 {
        (beta.min(delta)) / delta
    } else {
        1.0
    };
    let mut sigma = s * (1.0 - shrinkage);
    for i in 0..d {
        sigma[(i, i)] += shrinkage * mu;
    }
    (mean, sigma, shrinkage)
}

/// `L⁻ᵀ` for `Σ = LLᵀ`, row-major `d × d`: `(e − μ)·L⁻ᵀ` has identity covariance.
fn whitening(sigma: DMatrix<f64>) -> anyhow::Result<Vec<f32>> {
    let d = sigma.nrows();
    let chol =
        nalgebra::Cholesky::new(sigma).context("the shrunk covariance is not positive definite")?;
    let l_inv = chol
        .l()
        .solve_lower_triangular(&DMatrix::identity(d, d))
        .context("the Cholesky factor is singular")?;
    // Column-major storage of L⁻¹ is row-major storage of L⁻ᵀ.
    Ok(l_inv.iter().map(|&v| v as f32).collect())
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// One image as the edge decodes it.
fn decode(path: &Path) -> anyhow::Result<XrayImage> {
    Ok(decode_file(path, &DecodeOptions::default())?.image)
}

/// The images of an outside folder, sorted by name.
fn images_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    Ok(v)
}

/// The least colour a grey radiograph stored in colour shows (JPEG's chroma noise) that the
/// check still lets through, whatever validation shows.
pub const MIN_MAX_COLOUR: f64 = 0.02;

fn set_report(set: &str, d: &[&Distance], threshold: f64, max_colour: f64) -> SetReport {
    let mut v: Vec<f64> = d.iter().filter_map(|d| d.distance).collect();
    v.sort_by(f64::total_cmp);
    // The edge's own decision, from fv-core.
    let refused = d
        .iter()
        .filter_map(|d| Some((d.distance?, d.colour.unwrap_or(0.0))))
        .filter(|&(distance, colour)| {
            !ScopeReading {
                distance,
                threshold,
                colour,
                max_colour: Some(max_colour),
            }
            .in_scope()
        })
        .count();
    SetReport {
        set: set.into(),
        images: v.len(),
        refused,
        share: if v.is_empty() {
            0.0
        } else {
            refused as f64 / v.len() as f64
        },
        median: quantile(&v, 0.5),
        roc_auc: None,
        readable: None,
    }
}

fn auc_of(d: &[&Distance]) -> Option<f64> {
    let scored: Vec<Scored> = d
        .iter()
        .filter_map(|d| {
            Some(Scored {
                score: Probability::saturating(d.probability?),
                positive: d.fractured?,
            })
        })
        .collect();
    roc_auc(&scored)
}

/// Fits, chooses, measures, and (with `write`) installs the check; see the module doc.
pub fn scope(o: &ScopeOptions) -> anyhow::Result<ScopeReport> {
    let found = Found::open(&o.classifier)?;
    let checked = found.read_checked()?;
    let mut manifest = checked.found.manifest.clone();
    anyhow::ensure!(
        manifest.task == fv_core::manifest::Task::Classify,
        "{}: not a classifier's manifest",
        o.classifier.display()
    );
    let onnx_path = o.classifier.with_extension("onnx");
    let mut model = graph::decode(&std::fs::read(&onnx_path)?)?;
    strip(&mut model)?;
    manifest
        .outputs
        .retain(|x| x.meaning != OutputMeaning::ScopeDistance);
    let g = model.graph.as_ref().context("no graph")?;
    let (tensor, width) = embedding_tensor(g, manifest.labels.len())?;
    let mut layers: Vec<Layer> = residual_outputs(g)
        .into_iter()
        .map(|tensor| Layer {
            tensor,
            pooled: true,
        })
        .collect();
    layers.push(Layer {
        tensor: tensor.clone(),
        pooled: false,
    });
    tracing::info!(
        "the check looks at {} residual block outputs and the embedding {tensor} ({width} values)",
        layers.len() - 1
    );
    let shape = checked.input_shape();

    let [mut train_s, valid_s, test_s] = run_split_samples(&o.run, &o.data)?;
    train_s.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(17));
    train_s.truncate(o.train_images);

    // 1. Training vectors, every layer at once.
    let first = manifest.outputs.len();
    let embed = TractEngine::from_bytes(&with_vectors(&model, &layers)?, &onnx_path, &shape)?;
    let photometric = Photometric::default();
    let rows: Vec<Vec<Vec<f32>>> = train_s
        .par_iter()
        .enumerate()
        .flat_map_iter(|(i, s)| {
            let image = decode(&s.path).map_err(|e| tracing::warn!("{}: {e:#}", s.id));
            let mut views = Vec::new();
            if let Ok(image) = image {
                if o.train_processed {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(i as u64);
                    let shift = Shift::random_photometric(&photometric, &mut rng);
                    views.push(shift.apply(&image, i as u64));
                }
                views.push(image);
            }
            views.into_iter().filter_map(|view| {
                let pre = preprocess(&view, &manifest.input);
                embed
                    .run_values(&pre.tensor.data)
                    .map(|mut v| v.split_off(first))
                    .map_err(|e| tracing::warn!("{}: {e:#}", s.id))
                    .ok()
            })
        })
        .collect();
    anyhow::ensure!(
        rows.len() > width / 4,
        "only {} training images read for a {width}-value embedding",
        rows.len()
    );
    tracing::info!("read {} training images' vectors", rows.len());
    let mut fits = Vec::new();
    let mut shrinkages = Vec::new();
    for l in 0..layers.len() {
        let d = rows[0][l].len();
        let x = DMatrix::from_fn(rows.len(), d, |i, j| f64::from(rows[i][l][j]));
        let (mean, sigma, shrinkage) = shrunk_covariance(&x);
        shrinkages.push(shrinkage);
        fits.push(Fitted {
            mean: mean.iter().map(|&v| v as f32).collect(),
            whiten: whitening(sigma)?,
        });
    }
    let shrinkage = shrinkages.iter().sum::<f64>() / shrinkages.len() as f64;

    // 2. The final graph, and every distance read through it.
    let bytes = with_distance(&model, &layers, &fits)?;
    let engine = TractEngine::from_bytes(&bytes, &onnx_path, &shape)?;
    let k = manifest.outputs.len(); // the new output comes after the existing ones
    let read = |image: &XrayImage| -> anyhow::Result<(f64, f64, f64)> {
        let pre = preprocess(image, &manifest.input);
        let out = engine.run_values(&pre.tensor.data)?;
        let p = out
            .first()
            .and_then(|o| o.get(1))
            .context("no fracture column")?;
        let d = out.get(k).and_then(|o| o.first()).context("no distance")?;
        Ok((f64::from(*d), f64::from(*p), f64::from(image.colour())))
    };
    let truth: std::collections::HashMap<&str, bool> = valid_s
        .iter()
        .chain(&test_s)
        .map(|s| (s.id.as_str(), s.label))
        .collect();
    let mut failures = Vec::new();
    let mut jobs: Vec<(String, String, PathBuf, Option<Shift>)> = Vec::new();
    let suite = Shift::SUITE;
    for (i, s) in valid_s.iter().enumerate() {
        jobs.push(("valid".into(), s.id.clone(), s.path.clone(), None));
        for j in 0..o.shifts_per_image {
            let shift = suite[(i * o.shifts_per_image + j) % suite.len()];
            jobs.push((
                "valid-shifted".into(),
                format!("{}@{}", s.id, shift.name()),
                s.path.clone(),
                Some(shift),
            ));
        }
    }
    let add = |jobs: &mut Vec<_>, set: &str, samples: &[Sample]| {
        for s in samples {
            jobs.push((set.to_owned(), s.id.clone(), s.path.clone(), None));
        }
    };
    add(&mut jobs, "test", &test_s);
    for dir in &o.outside {
        let kind = dir
            .file_name()
            .map_or("outside".into(), |n| n.to_string_lossy().into_owned());
        for p in images_in(dir)? {
            let name = p.file_name().unwrap_or_default().to_string_lossy().into();
            jobs.push((format!("outside/{kind}"), name, p, None));
        }
    }
    let distances: Vec<Distance> = jobs
        .par_iter()
        .enumerate()
        .map(|(n, (set, image, path, shift))| {
            let r = decode(path).and_then(|i| {
                let i = match shift {
                    Some(s) => s.apply(&i, n as u64),
                    None => i,
                };
                read(&i)
            });
            let r = r
                .map_err(|e| tracing::warn!("{}: {e:#}", path.display()))
                .ok();
            let id = image.split('@').next().unwrap_or_default();
            Distance {
                set: set.clone(),
                image: image.clone(),
                distance: r.map(|r| r.0),
                probability: r.map(|r| r.1),
                colour: r.map(|r| r.2),
                fractured: truth.get(id).copied(),
            }
        })
        .collect();
    for (d, job) in distances.iter().zip(&jobs) {
        if d.distance.is_none() {
            failures.push(format!("{} ({})", job.2.display(), d.set));
        }
    }

    // 3. The threshold, on validation only: the images as they are, and under each shift the
    // classifier still reads.
    let of = |set: &str| -> Vec<&Distance> { distances.iter().filter(|d| d.set == set).collect() };
    let valid_by_id: std::collections::HashMap<&str, &Distance> = of("valid")
        .into_iter()
        .map(|d| (d.image.as_str(), d))
        .collect();
    let under = |s: &Shift| -> (Vec<&Distance>, Vec<&Distance>) {
        let tag = format!("@{}", s.name());
        let shifted: Vec<&Distance> = distances
            .iter()
            .filter(|d| d.set == "valid-shifted" && d.image.ends_with(&tag))
            .collect();
        let plain = shifted
            .iter()
            .filter_map(|d| valid_by_id.get(d.image.split('@').next()?).copied())
            .collect();
        (plain, shifted)
    };
    let readable: Vec<(Shift, Option<[f64; 2]>, bool)> = suite
        .iter()
        .map(|s| {
            let (plain, shifted) = under(s);
            let auc = auc_of(&plain).zip(auc_of(&shifted)).map(|(a, b)| [a, b]);
            let ok = auc.is_some_and(|[a, b]| b >= a - READABLE_AUC_DROP);
            (*s, auc, ok)
        })
        .collect();
    let mut chooser: Vec<f64> = of("valid").iter().filter_map(|d| d.distance).collect();
    for (s, _, ok) in &readable {
        if *ok {
            chooser.extend(under(s).1.iter().filter_map(|d| d.distance));
        }
    }
    chooser.sort_by(f64::total_cmp);
    let threshold = quantile(&chooser, o.quantile);
    anyhow::ensure!(
        threshold.is_finite() && threshold > 0.0,
        "no validation distances"
    );
    // Radiographs are grey: twice the most colour a validation image shows, at least what
    // JPEG's chroma noise puts into a grey image stored in colour.
    let most = of("valid")
        .iter()
        .filter_map(|d| d.colour)
        .fold(0.0, f64::max);
    let max_colour = (2.0 * most).max(MIN_MAX_COLOUR);
    let valid = set_report("valid", &of("valid"), threshold, max_colour);
    let shifted = set_report("valid-shifted", &of("valid-shifted"), threshold, max_colour);
    let mut sets = vec![
        valid.clone(),
        shifted.clone(),
        set_report("test", &of("test"), threshold, max_colour),
    ];
    let mut kinds: Vec<&str> = distances
        .iter()
        .map(|d| d.set.as_str())
        .filter(|s| s.starts_with("outside/"))
        .collect();
    kinds.dedup();
    for kind in &kinds {
        sets.push(set_report(kind, &of(kind), threshold, max_colour));
    }
    let all_outside: Vec<&Distance> = distances
        .iter()
        .filter(|d| d.set.starts_with("outside/"))
        .collect();
    if !all_outside.is_empty() {
        sets.push(set_report(
            "outside (all)",
            &all_outside,
            threshold,
            max_colour,
        ));
    }
    let shifts = readable
        .iter()
        .map(|(s, auc, ok)| SetReport {
            roc_auc: *auc,
            readable: Some(*ok),
            ..set_report(&s.name(), &under(s).1, threshold, max_colour)
        })
        .collect();
    let applicability = Applicability {
        output: OUTPUT.into(),
        threshold,
        max_colour: Some(max_colour),
        method: format!(
            "mean over {} layers (each residual block's output pooled over the image, and the \
             pooled embedding {tensor}) of the squared Mahalanobis distance divided by the \
             layer's width, from {} training views{} (Ledoit-Wolf shrinkage, mean {shrinkage:.3})",
            layers.len(),
            rows.len(),
            if o.train_processed {
                ": each image as it is and under a random photometric change"
            } else {
                ""
            }
        ),
        fitted: ScopeFit {
            train_images: rows.len(),
            valid_images: valid.images,
            shifts: readable
                .iter()
                .filter(|r| r.2)
                .map(|r| r.0.name())
                .collect(),
            quantile: o.quantile,
            valid_refused: valid.share,
            valid_shifted_refused: shifted.share,
        },
    };
    let report = ScopeReport {
        classifier: manifest.name.clone(),
        applicability: applicability.clone(),
        shrinkage,
        sets,
        shifts,
        failures,
    };
    std::fs::create_dir_all(&o.out)?;
    std::fs::write(
        o.out.join("scope.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let mut csv = csv::Writer::from_path(o.out.join("distances.csv"))?;
    for d in &distances {
        csv.serialize(d)?;
    }
    csv.flush()?;

    if o.write {
        manifest
            .outputs
            .retain(|x| x.meaning != OutputMeaning::ScopeDistance);
        manifest.outputs.push(OutputSpec {
            name: OUTPUT.into(),
            shape: vec![1, 1],
            meaning: OutputMeaning::ScopeDistance,
        });
        manifest.applicability = Some(applicability);
        manifest.onnx_sha256 = sha256_hex(&bytes);
        let json = serde_json::to_string_pretty(&manifest)? + "\n";
        // The manifest must read back before anything is replaced.
        Manifest::from_json(&json, &o.classifier)?;
        fv_core::durable::write(&onnx_path, &bytes)
            .with_context(|| format!("{}: cannot write", onnx_path.display()))?;
        fv_core::durable::write(&o.classifier, json.as_bytes())
            .with_context(|| format!("{}: cannot write", o.classifier.display()))?;
    }
    Ok(report)
}

/// The report as a Markdown table.
pub fn summary_table(r: &ScopeReport) -> String {
    let mut s = format!(
        "threshold {:.3} (validation quantile {}), colour at most {:.3}, shrinkage {:.3}\n\n| set | images | refused | share | median distance |\n| --- | ---: | ---: | ---: | ---: |\n",
        r.applicability.threshold,
        r.applicability.fitted.quantile,
        r.applicability.max_colour.unwrap_or(1.0),
        r.shrinkage
    );
    for x in &r.sets {
        s += &format!(
            "| {} | {} | {} | {:.1} % | {:.3} |\n",
            x.set,
            x.images,
            x.refused,
            100.0 * x.share,
            x.median
        );
    }
    s += "\n| validation under | images | refused | share | median distance | ROC-AUC as is → shifted | counted |\n| --- | ---: | ---: | ---: | ---: | --- | --- |\n";
    for x in &r.shifts {
        s += &format!(
            "| {} | {} | {} | {:.1} % | {:.3} | {} | {} |\n",
            x.set,
            x.images,
            x.refused,
            100.0 * x.share,
            x.median,
            x.roc_auc
                .map_or("—".into(), |[a, b]| format!("{a:.3} → {b:.3}")),
            if x.readable == Some(true) {
                "yes"
            } else {
                "no: not read, so refused"
            }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitening_gives_the_mahalanobis_distance() {
        // Two correlated coordinates: the distance along the correlation is small, across it
        // large, which a Euclidean distance cannot tell.
        let rows: Vec<[f64; 2]> = (0..400)
            .map(|i| {
                let t = (i as f64 * 0.37).sin() * 3.0;
                let e = (i as f64 * 1.91).cos() * 0.3;
                [t + e, t - e]
            })
            .collect();
        let x = DMatrix::from_fn(rows.len(), 2, |i, j| rows[i][j]);
        let (mean, sigma, shrinkage) = shrunk_covariance(&x);
        assert!((0.0..0.2).contains(&shrinkage), "{shrinkage}");
        let w = whitening(sigma.clone()).unwrap();
        let dist = |p: [f64; 2]| {
            let c = [p[0] - mean[0], p[1] - mean[1]];
            let z = [
                c[0] * f64::from(w[0]) + c[1] * f64::from(w[2]),
                c[0] * f64::from(w[1]) + c[1] * f64::from(w[3]),
            ];
            z[0] * z[0] + z[1] * z[1]
        };
        let inv = sigma.try_inverse().unwrap();
        let p = nalgebra::Vector2::new(1.0 - mean[0], -1.0 - mean[1]);
        let exact = (p.transpose() * inv * p)[0];
        assert!(
            (dist([1.0, -1.0]) - exact).abs() < 1e-3 * exact,
            "{} {exact}",
            dist([1.0, -1.0])
        );
        assert!(dist([2.0, 2.0]) < dist([1.0, -1.0]));
    }
}
