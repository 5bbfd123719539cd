//! `fv-edge bench`: how fast each model runs on each engine, and how much the whole path
//! (decode → preprocess → classify → detect → result) adds, measured side by side in one run
//! so that ratios mean something on a shared machine.

use crate::pipeline::{file_source, Pipeline, PipelineConfig};
use anyhow::Context as _;
use fv_core::imaging::DecodeOptions;
use fv_core::manifest::{Precision, Task};
use fv_core::preprocess::preprocess;
use fv_runtime::engine::{EngineKind, OpTime};
use fv_runtime::models::{load_with, scan, Found, Model, Models};
use fv_runtime::DetectPolicy;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Models directory.
    pub models: PathBuf,
    /// Timed runs per measurement.
    pub iterations: usize,
    /// Untimed runs first.
    pub warmup: usize,
    /// Engines to compare (ONNX Runtime is skipped with a note when it cannot load).
    pub engines: Vec<EngineKind>,
    /// Threads each engine may use for one inference (tract's and ONNX Runtime's alike).
    pub threads: usize,
    /// The committed FracAtlas sample: the whole-path inputs come from it.
    pub samples: PathBuf,
}

/// Latency figures of one measurement, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// Timed runs.
    pub iterations: usize,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile (nearest rank).
    pub p95_ms: f64,
    /// Mean milliseconds over the timed iterations (after warm-up).
    pub mean_ms: f64,
    /// Runs per second at the mean.
    pub per_s: f64,
}

impl Latency {
    fn of(mut ms: Vec<f64>) -> Latency {
        ms.sort_by(f64::total_cmp);
        let n = ms.len().max(1);
        let rank = |q: f64| ms[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        let mean = ms.iter().sum::<f64>() / n as f64;
        Latency {
            iterations: ms.len(),
            p50_ms: round3(rank(0.5)),
            p95_ms: round3(rank(0.95)),
            mean_ms: round3(mean),
            per_s: round3(1000.0 / mean),
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One model on one engine, alone.
#[derive(Clone, Debug, Serialize)]
pub struct EngineRow {
    /// Manifest name.
    pub model: String,
    /// fp32 / fp16 / int8.
    pub precision: Precision,
    /// `tract`, `onnxruntime-cpu`, …
    pub engine: String,
    /// Intra-op threads.
    pub threads: usize,
    /// Latency of one batch-1 run.
    pub latency: Latency,
    /// Resident memory added by loading and running it, MiB.
    pub rss_added_mib: f64,
    /// Load time (read, check sha256, optimise), ms.
    pub load_ms: f64,
}

/// The whole path for one input.
#[derive(Clone, Debug, Serialize)]
pub struct PathRow {
    /// What the input is.
    pub input: String,
    /// `full` (the daemon's default), or `model scale`: a JPEG decoded at the DCT scale the
    /// models need (`reduced_decode`; other inputs are decoded whole either way).
    pub decode: String,
    /// Width × height as decoded.
    pub size: String,
    /// The engine that ran (`tract`, `ort-cpu`, …).
    pub engine: String,
    /// Classifier precision.
    pub precision: Precision,
    /// The detector that ran on every input (name and precision), if the models have one.
    pub detector: Option<String>,
    /// Decode → result.
    pub latency: Latency,
    /// The models alone (engine rows: the classifier, plus the detector when one runs), p50 ms.
    pub engine_p50_ms: f64,
    /// Whole path p50 / engine p50.
    pub ratio: f64,
    /// Where the path's time goes: each stage's p50 over the same runs, as the pipeline
    /// times it (the detector's own preprocessing is inside `detect`).
    pub stages_p50_ms: Stages,
}

/// Median milliseconds of each stage of the whole path.
#[derive(Clone, Debug, Serialize)]
pub struct Stages {
    /// Reading and decoding the file (DICOM: with rescale and window).
    pub decode: f64,
    /// The classifier's resize and normalization.
    pub preprocess: f64,
    /// The classifier (both views with test-time flips).
    pub classify: f64,
    /// The detector with its preprocessing, when it ran.
    pub detect: f64,
}

impl Stages {
    fn of(timings: &[fv_core::result::Timing]) -> Stages {
        let p50 = |f: &dyn Fn(&fv_core::result::Timing) -> f64| {
            round3(Latency::of(timings.iter().map(f).collect()).p50_ms)
        };
        Stages {
            decode: p50(&|t| t.decode),
            preprocess: p50(&|t| t.preprocess),
            classify: p50(&|t| t.classify),
            detect: p50(&|t| t.detect.unwrap_or(0.0)),
        }
    }
}

/// A ratio with its goal.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    /// What is divided by what.
    pub what: String,
    /// The value (p50 over p50).
    pub value: f64,
    /// The goal, as text.
    pub goal: String,
    /// Whether the goal is met.
    pub met: bool,
}

/// Where one model's time goes on one engine, by operator.
#[derive(Clone, Debug, Serialize)]
pub struct ProfileRow {
    /// Manifest name.
    pub model: String,
    /// fp32 / fp16 / int8.
    pub precision: Precision,
    /// The engine that says it (tract).
    pub engine: String,
    /// Operators, slowest first. Timing each node adds a little to each; the shares are
    /// what counts.
    pub ops: Vec<OpTime>,
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// CPU and cores.
    pub machine: String,
    /// Library versions.
    pub versions: Vec<String>,
    /// Engines alone.
    pub engines: Vec<EngineRow>,
    /// Engines alone, by operator, where the engine can say.
    pub profiles: Vec<ProfileRow>,
    /// Whole path.
    pub paths: Vec<PathRow>,
    /// Side-by-side ratios.
    pub ratios: Vec<Ratio>,
    /// Engines that were asked for and could not run, and why.
    pub skipped: Vec<String>,
    /// Peak resident memory of the whole run, MiB.
    pub peak_rss_mib: f64,
}

fn proc_status_kib(field: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {cores} cores available")
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed().as_secs_f64() * 1e3)
}

/// A 16-bit DICOM (DX, 12 bits stored, MONOCHROME2) written from a sample image: a portable
/// unit's usual output, without any patient data.
pub fn write_dicom_16(image: &image::GrayImage, out: &Path) -> anyhow::Result<()> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::{tags, uids};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
    let stored: Vec<u16> = image
        .as_raw()
        .iter()
        .map(|&v| (u32::from(v) * 4095 / 255) as u16)
        .collect();
    let us = |t, v: u16| DataElement::new(t, VR::US, PrimitiveValue::from(v));
    let s = |t, vr, v: &str| DataElement::new(t, vr, PrimitiveValue::from(v));
    let sop = "2.25.1000000000000000000000000000000000001";
    let obj = InMemDicomObject::from_element_iter([
        s(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
        ),
        s(tags::SOP_INSTANCE_UID, VR::UI, sop),
        s(
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            "2.25.1000000000000000000000000000000000002",
        ),
        s(tags::MODALITY, VR::CS, "DX"),
        us(tags::SAMPLES_PER_PIXEL, 1),
        s(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, image.height() as u16),
        us(tags::COLUMNS, image.width() as u16),
        us(tags::BITS_ALLOCATED, 16),
        us(tags::BITS_STORED, 12),
        us(tags::HIGH_BIT, 11),
        us(tags::PIXEL_REPRESENTATION, 0),
        s(tags::WINDOW_CENTER, VR::DS, "2047.5"),
        s(tags::WINDOW_WIDTH, VR::DS, "4096"),
        DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(stored.into())),
    ]);
    obj.with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .media_storage_sop_class_uid(uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION)
            .media_storage_sop_instance_uid(sop),
    )?
    .write_to_file(out)
    .with_context(|| format!("{}: cannot write the DICOM", out.display()))?;
    Ok(())
}

/// Runs every measurement. `progress` gets one line per step, for a person watching.
pub fn run(o: &BenchOptions, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Report> {
    fv_runtime::engine::set_threads(Some(o.threads));
    let found = scan(&o.models)?;
    anyhow::ensure!(
        !found.is_empty(),
        "{}: no models (manifest + ONNX) to measure",
        o.models.display()
    );
    let cache = std::env::temp_dir().join("fv-edge-bench-engine-cache");
    let mut engines = Vec::new();
    let mut profiles = Vec::new();
    let mut skipped = Vec::new();
    let mut loaded: Vec<(EngineKind, Found, Model)> = Vec::new();
    for kind in &o.engines {
        for f in &found {
            let before = proc_status_kib("VmRSS:").unwrap_or(0.0);
            let (model, load_ms) = timed(|| load_with(f, *kind, &cache));
            let mut model = match model {
                Ok(m) => m,
                Err(e) => {
                    let why = format!("{kind:?} on {}: {e:#}", f.onnx.display());
                    progress(&format!("skipped: {why}"));
                    skipped.push(why);
                    continue;
                }
            };
            let shape = [
                1,
                f.manifest.input.channels as usize,
                f.manifest.input.height as usize,
                f.manifest.input.width as usize,
            ];
            // A real radiograph's tensor: some kernels take data-dependent paths.
            let sample = load_sample(&o.samples.join("Fractured/IMG0002628.jpg"))?;
            let tensor = preprocess(&sample, &f.manifest.input).tensor;
            anyhow::ensure!(tensor.shape == shape, "preprocess gave {:?}", tensor.shape);
            for _ in 0..o.warmup {
                model.engine.run(&tensor)?;
            }
            let mut ms = Vec::with_capacity(o.iterations);
            for _ in 0..o.iterations {
                let (r, t) = timed(|| model.engine.run(&tensor));
                r?;
                ms.push(t);
            }
            let after = proc_status_kib("VmRSS:").unwrap_or(0.0);
            if let Some(ops) = model.engine.profile(&tensor, o.iterations)? {
                profiles.push(ProfileRow {
                    model: f.manifest.name.clone(),
                    precision: f.manifest.precision,
                    engine: model.engine.name().to_owned(),
                    ops,
                });
            }
            let row = EngineRow {
                model: f.manifest.name.clone(),
                precision: f.manifest.precision,
                engine: model.engine.name().to_owned(),
                threads: o.threads,
                latency: Latency::of(ms),
                rss_added_mib: round3((after - before).max(0.0) / 1024.0),
                load_ms: round3(load_ms),
            };
            progress(&format!(
                "{} {:?} on {}: p50 {:.2} ms, p95 {:.2} ms",
                row.model, row.precision, row.engine, row.latency.p50_ms, row.latency.p95_ms
            ));
            engines.push(row);
            loaded.push((*kind, f.clone(), model));
        }
    }

    // The whole path, per engine, with each classifier precision and the detector if any.
    let dicom = std::env::temp_dir().join(format!(
        "fv-edge-bench-{}-cr-1760x2140-16bit.dcm",
        std::process::id()
    ));
    write_dicom_16(
        &load_gray8(&o.samples.join("Non_fractured/IMG0002296.jpg"))?,
        &dicom,
    )?;
    let inputs = [
        (
            "JPEG 2304×2880 (IMG0002322)",
            o.samples.join("Fractured/IMG0002322.jpg"),
        ),
        (
            "JPEG 373×454 (IMG0002628)",
            o.samples.join("Fractured/IMG0002628.jpg"),
        ),
        ("DICOM 16-bit 1760×2140 (from IMG0002296)", dicom.clone()),
    ];
    let mut paths = Vec::new();
    // The engine rows' models are let go here; the whole path loads its own.
    let measured: Vec<(EngineKind, Found)> = loaded.into_iter().map(|(k, f, _)| (k, f)).collect();
    for (kind, f) in measured
        .iter()
        .filter(|(_, f)| f.manifest.task == Task::Classify)
    {
        let kind = *kind;
        // The detector of the classifier's precision where there is one, else any.
        let detectors: Vec<&Found> = measured
            .iter()
            .filter(|(k, d)| *k == kind && d.manifest.task == Task::Detect)
            .map(|(_, d)| d)
            .collect();
        let detector = detectors
            .iter()
            .find(|d| d.manifest.precision == f.manifest.precision)
            .or(detectors.first())
            .copied();
        let mut pipeline = Pipeline {
            models: Models {
                classifier: load_with(f, kind, &cache)?,
                detector: detector.map(|d| load_with(d, kind, &cache)).transpose()?,
            },
            config: PipelineConfig {
                site: "bench".into(),
                device: "bench".into(),
                uid_salt: "bench".into(),
                read: fv_runtime::ReadOptions {
                    detect: DetectPolicy::Always,
                    min_score: None,
                },
            },
        };
        let engine_name = pipeline.models.classifier.engine.name().to_owned();
        let p50_of = |m: &Found| {
            engines
                .iter()
                .find(|r| {
                    r.model == m.manifest.name
                        && r.precision == m.manifest.precision
                        && r.engine == engine_name
                })
                .map_or(f64::NAN, |r| r.latency.p50_ms)
        };
        // The engine's share of the path: the classifier (twice when its manifest asks for
        // test-time flips), plus the detector when it runs.
        let views = if f.manifest.test_time_hflip { 2.0 } else { 1.0 };
        let engine_p50 = views * p50_of(f) + detector.map_or(0.0, p50_of);
        // Each input decoded whole (the daemon's default) and, as `reduced_decode` does, at
        // the DCT scale the models need, in the same run.
        let runs = inputs
            .iter()
            .flat_map(|(label, path)| [false, true].map(|reduced| (*label, path, reduced)));
        for (label, path, reduced) in runs {
            let options = pipeline
                .models
                .decode_options(&DecodeOptions::default(), reduced);
            let run_once = |p: &mut Pipeline| {
                let outcome = p.process(file_source(path), || {
                    crate::sources::input::load_file(path, &options)
                });
                match outcome.message.error {
                    Some(e) => Err(anyhow::anyhow!("{}: {}", path.display(), e.message)),
                    None => Ok((
                        outcome.input.map(|i| (i.image.width(), i.image.height())),
                        outcome.message.timing_ms,
                    )),
                }
            };
            let mut size = String::new();
            for _ in 0..o.warmup {
                run_once(&mut pipeline)?;
            }
            let mut ms = Vec::with_capacity(o.iterations);
            let mut stages = Vec::with_capacity(o.iterations);
            for _ in 0..o.iterations {
                let (r, t) = timed(|| run_once(&mut pipeline));
                let (decoded, timing) = r?;
                if let Some((w, h)) = decoded {
                    size = format!("{w}×{h}");
                }
                ms.push(t);
                stages.push(timing);
            }
            let latency = Latency::of(ms);
            let row = PathRow {
                input: label.to_owned(),
                decode: if reduced { "model scale" } else { "full" }.to_owned(),
                size,
                engine: engine_name.clone(),
                precision: f.manifest.precision,
                detector: detector
                    .map(|d| format!("{} {:?}", d.manifest.name, d.manifest.precision)),
                engine_p50_ms: engine_p50,
                ratio: round3(latency.p50_ms / engine_p50),
                latency,
                stages_p50_ms: Stages::of(&stages),
            };
            progress(&format!(
                "whole path, {} ({} decode) on {} {:?}: p50 {:.1} ms ({:.2}× the engine)",
                row.input, row.decode, row.engine, row.precision, row.latency.p50_ms, row.ratio
            ));
            paths.push(row);
        }
    }

    let _ = std::fs::remove_file(&dicom);
    let ratios = ratios(&engines, &paths);
    let mut versions = vec![
        format!("fv-edge {}", env!("CARGO_PKG_VERSION")),
        "tract 0.23.9".to_owned(),
    ];
    if cfg!(feature = "ort") {
        versions.push("ort 2.0.0-rc.15 (api-17), ONNX Runtime from ORT_DYLIB_PATH".into());
    }
    Ok(Report {
        machine: machine(),
        versions,
        engines,
        profiles,
        paths,
        ratios,
        skipped,
        peak_rss_mib: round3(proc_status_kib("VmHWM:").unwrap_or(0.0) / 1024.0),
    })
}

/// Issue 19's goals: tract within 1.5× ONNX Runtime at equal threads, int8 1.5× faster than
/// fp32 on the same engine, the whole path within 1.3× the engines' own time.
const TRACT_OVER_ORT: f64 = 1.5;
const INT8_SPEEDUP: f64 = 1.5;
const PATH_OVER_ENGINE: f64 = 1.3;

fn ratios(engines: &[EngineRow], paths: &[PathRow]) -> Vec<Ratio> {
    let mut v = Vec::new();
    let find = |model: &str, p: Precision, engine: &str| {
        engines
            .iter()
            .find(|r| r.model == model && r.precision == p && r.engine == engine)
    };
    for r in engines.iter().filter(|r| r.engine == "tract") {
        if let Some(o) = find(&r.model, r.precision, "onnxruntime-cpu") {
            let value = round3(r.latency.p50_ms / o.latency.p50_ms);
            v.push(Ratio {
                what: format!(
                    "{} {:?}: tract / ONNX Runtime ({} threads each)",
                    r.model, r.precision, o.threads
                ),
                value,
                goal: format!("≤ {TRACT_OVER_ORT}"),
                met: value <= TRACT_OVER_ORT,
            });
        }
    }
    for r in engines.iter().filter(|r| r.precision != Precision::Fp32) {
        // A converted model shares its fp32 reference's input; its name may differ.
        if let Some(base) = engines.iter().find(|b| {
            b.engine == r.engine
                && b.precision == Precision::Fp32
                && r.model.starts_with(b.model.as_str())
        }) {
            let value = round3(base.latency.p50_ms / r.latency.p50_ms);
            v.push(Ratio {
                what: format!(
                    "{} on {}: fp32 / {:?} (speed-up)",
                    base.model, r.engine, r.precision
                ),
                value,
                goal: format!("≥ {INT8_SPEEDUP}"),
                met: value >= INT8_SPEEDUP,
            });
        }
    }
    for p in paths {
        v.push(Ratio {
            what: format!(
                "whole path / engine, {} ({} decode) on {} {:?}",
                p.input, p.decode, p.engine, p.precision
            ),
            value: p.ratio,
            goal: format!("≤ {PATH_OVER_ENGINE}"),
            met: p.ratio <= PATH_OVER_ENGINE,
        });
    }
    v
}

fn load_sample(path: &Path) -> anyhow::Result<fv_core::imaging::XrayImage> {
    Ok(
        crate::sources::input::load_file(path, &DecodeOptions::default())
            .map_err(|e| {
                anyhow::anyhow!(
                    "{} (the bench reads the committed FracAtlas sample: pass --samples DIR)",
                    e.message
                )
            })?
            .image,
    )
}

fn load_gray8(path: &Path) -> anyhow::Result<image::GrayImage> {
    Ok(image::open(path)
        .with_context(|| {
            format!(
                "{}: cannot read (the bench reads the committed FracAtlas sample: pass --samples DIR)",
                path.display()
            )
        })?
        .to_luma8())
}

/// The report as Markdown tables, for BENCHMARKS.md.
pub fn markdown(r: &Report) -> String {
    let mut s = format!("Machine: {}. {}.\n\n", r.machine, r.versions.join(", "));
    s += "| model | precision | engine | threads | p50 ms | p95 ms | per s | load ms | RSS added MiB |\n";
    s += "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
    for e in &r.engines {
        s += &format!(
            "| {} | {:?} | {} | {} | {:.2} | {:.2} | {:.1} | {:.0} | {:.1} |\n",
            e.model,
            e.precision,
            e.engine,
            e.threads,
            e.latency.p50_ms,
            e.latency.p95_ms,
            e.latency.per_s,
            e.load_ms,
            e.rss_added_mib
        );
    }
    for p in &r.profiles {
        s += &format!(
            "\n{} {:?} on {}, by operator (slowest first, those over 1 %):\n\n",
            p.model, p.precision, p.engine
        );
        s += "| operator | nodes | ms per run | share |\n| --- | --- | --- | --- |\n";
        for op in p.ops.iter().filter(|op| op.share >= 0.01) {
            s += &format!(
                "| {} | {} | {:.2} | {:.1} % |\n",
                op.op,
                op.nodes,
                op.ms,
                100.0 * op.share
            );
        }
    }
    s += "\n| whole path: input | decode | decoded size | engine | precision | detector | p50 ms | p95 ms | engine p50 ms | ratio | stages p50 ms: decode / preprocess / classify / detect |\n";
    s += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
    for p in &r.paths {
        let st = &p.stages_p50_ms;
        s += &format!(
            "| {} | {} | {} | {} | {:?} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.1} / {:.1} / {:.1} / {:.1} |\n",
            p.input,
            p.decode,
            p.size,
            p.engine,
            p.precision,
            p.detector.as_deref().unwrap_or("none"),
            p.latency.p50_ms,
            p.latency.p95_ms,
            p.engine_p50_ms,
            p.ratio,
            st.decode,
            st.preprocess,
            st.classify,
            st.detect
        );
    }
    s += "\n| ratio | value | goal | met |\n| --- | --- | --- | --- |\n";
    for q in &r.ratios {
        s += &format!(
            "| {} | {:.2} | {} | {} |\n",
            q.what,
            q.value,
            q.goal,
            if q.met { "yes" } else { "no" }
        );
    }
    for k in &r.skipped {
        s += &format!("\nSkipped: {k}\n");
    }
    s += &format!("\nPeak RSS of the run: {:.0} MiB.\n", r.peak_rss_mib);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let l = Latency::of((1..=20).map(f64::from).collect());
        assert_eq!(l.p50_ms, 10.0);
        assert_eq!(l.p95_ms, 19.0);
        assert_eq!(l.mean_ms, 10.5);
        let one = Latency::of(vec![4.0]);
        assert_eq!((one.p50_ms, one.p95_ms), (4.0, 4.0));
    }
}
