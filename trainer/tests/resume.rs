//! Runs that outlive a session: a run stopped at an epoch's end or in the middle of one, then
//! resumed, ends with the weights of an uninterrupted run.
//!
//! Its own test binary, so its own process: burn's random generator is global, and tests
//! running beside it in one process would draw from it between this test's steps; the two
//! tests here take turns through `RNG`.

mod common;

use burn::tensor::Device;
use common::sample_dir;
use fv_train::classify::split_samples;
use fv_train::classify::train;
use fv_train::classify::train::{LrSchedule, Sampling, TrainConfig};
use fv_train::data::classify::Sample;
use fv_train::data::FracAtlas;
use fv_train::models::ModelKind;
use fv_train::run::RunDir;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// Held by each test for its whole run: burn's generator is global.
static RNG: Mutex<()> = Mutex::new(());

/// The f32 tensors of a safetensors file, by name (the format: an 8-byte header length, a
/// JSON header of names, dtypes and byte ranges, then the data).
fn read_tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = BTreeMap::new();
    for (name, t) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        assert_eq!(t["dtype"], "F32", "{name}");
        let r = &t["data_offsets"];
        let (a, b) = (
            r[0].as_u64().unwrap() as usize,
            r[1].as_u64().unwrap() as usize,
        );
        let v = data[a..b]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        out.insert(name.clone(), v);
    }
    out
}

/// The largest difference between two checkpoints, relative to the largest weight.
fn max_difference(a: &Path, b: &Path) -> f32 {
    let (a, b) = (read_tensors(a), read_tensors(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let mut diff = 0.0f32;
    let mut scale = 0.0f32;
    for (k, va) in &a {
        for (x, y) in va.iter().zip(&b[k]) {
            diff = diff.max((x - y).abs());
            scale = scale.max(x.abs());
        }
    }
    diff / scale.max(1e-12)
}

/// The sample's training and validation images and a classifier small enough to train a
/// few times in a test.
fn tiny_classifier_run() -> (Vec<Sample>, Vec<Sample>, TrainConfig) {
    let data = FracAtlas::open(&sample_dir()).unwrap();
    let split = data
        .classification_split(&common::small_holdout(42))
        .unwrap();
    let [train_s, valid_s, _] = split_samples(&data, &split, None);
    let mut config = TrainConfig::study(ModelKind::EfficientnetLite0);
    config.image_size = 32;
    config.batch_size = 2;
    config.lr = 1e-3;
    config.sampling = Sampling::Balanced;
    config.class_weighted_loss = false;
    (train_s, valid_s, config)
}

/// Two epochs straight, one epoch then a resume for the second, and a stop after one step
/// then a resume: the same weights, because the resume checkpoint carries the optimizer's
/// moments, the schedule position and the sampler's place, and every random draw is keyed
/// by the step.
#[test]
fn resumed_runs_end_with_the_weights_of_an_uninterrupted_one() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let (train_s, valid_s, mut config) = tiny_classifier_run();
    let device = Device::flex();
    config.schedule = LrSchedule::WarmupCosine {
        warmup_epochs: 0.5,
        final_fraction: 0.01,
    };
    let tmp = tempfile::tempdir().unwrap();
    let run_with = |name: &str, steps: &[(usize, Option<usize>)]| {
        let run = RunDir(tmp.path().join(name));
        let mut summaries = Vec::new();
        for &(epochs, limit) in steps {
            let mut c = config.clone();
            c.epochs = epochs;
            c.session_step_limit = limit;
            summaries.push(train(&c, &train_s, &valid_s, &run, &device, false).unwrap());
        }
        (run, summaries)
    };
    let (straight, s) = run_with("straight", &[(2, None)]);
    assert!(s[0].complete);
    let (by_epoch, _) = run_with("by-epoch", &[(1, None), (2, None)]);
    let (mid, sessions) = run_with("mid-epoch", &[(2, Some(1)), (2, None)]);
    let stopped = tmp.path().join("mid-epoch/state.json");
    assert!(stopped.is_file());
    assert!(
        !sessions[0].complete && sessions[1].complete,
        "the step limit stops the first session; the resume finishes the run"
    );

    let d = max_difference(&straight.last(), &by_epoch.last());
    assert!(
        d < 1e-4,
        "1 + resume + 1 epochs differ from 2 straight by {d}"
    );
    let d = max_difference(&straight.last(), &mid.last());
    assert!(
        d < 1e-4,
        "a resume mid-epoch differs from 2 straight by {d}"
    );

    // The loss log and the epoch means come out the same too.
    let a: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(straight.state()).unwrap()).unwrap();
    let b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(mid.state()).unwrap()).unwrap();
    let loss = |v: &serde_json::Value| -> Vec<f64> {
        v["epochs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["loss"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(loss(&a).len(), 2);
    assert_eq!(s[0].epoch_loss, loss(&a));
    for (x, y) in loss(&a).iter().zip(loss(&b)) {
        assert!((x - y).abs() < 1e-4, "{:?} vs {:?}", loss(&a), loss(&b));
    }

    // Without the optimizer's moments (a fresh optimizer on resume) the weights would move
    // differently: the comparison above can fail.
    let moments = std::fs::read_dir(&mid.0)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("resume-"))
        .expect("a resume checkpoint");
    assert!(moments.path().join("optim.bpk").is_file());
}

/// With `--ema`, what a run validates and keeps is the weights' moving average: it differs from
/// the weights a run without it ends with, a resume mid-epoch ends with the same average as an
/// uninterrupted run (the resume point carries it), and a pack carries it to another machine.
#[test]
fn a_run_that_keeps_an_average_of_its_weights_saves_it_and_resumes_it() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let (train_s, valid_s, config) = tiny_classifier_run();
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    let run_with = |name: &str, ema: Option<f64>, steps: &[(usize, Option<usize>)]| {
        let run = RunDir(tmp.path().join(name));
        for &(epochs, limit) in steps {
            let mut c = config.clone();
            c.epochs = epochs;
            c.session_step_limit = limit;
            c.ema = ema;
            train(&c, &train_s, &valid_s, &run, &device, false).unwrap();
        }
        run
    };
    let plain = run_with("plain", None, &[(2, None)]);
    let straight = run_with("straight", Some(0.9), &[(2, None)]);
    let d = max_difference(&plain.last(), &straight.last());
    assert!(d > 1e-3, "the average is the weights themselves ({d})");

    let mid = run_with("mid-epoch", Some(0.9), &[(2, Some(1))]);
    let point = |run: &RunDir| {
        std::fs::read_dir(&run.0)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("resume-"))
            .expect("a resume point")
            .path()
    };
    assert!(point(&mid).join(fv_train::run::AVERAGE_FILE).is_file());

    // Packs `run` as if its command had trained into `name`, to be restored there.
    let pack_for = |run: &RunDir, name: &str| {
        let moved = tmp.path().join(name);
        let command = ["fv-train", "classify", "--out", moved.to_str().unwrap()];
        std::fs::write(
            run.0.join("command.json"),
            serde_json::to_string(&command).unwrap(),
        )
        .unwrap();
        let pack = tmp.path().join(format!("pack-{name}"));
        fv_train::carry::pack(&run.0, &pack).unwrap();
        (pack, RunDir(moved))
    };

    // Packed and restored elsewhere, the point keeps its average.
    let (pack, moved) = pack_for(&mid, "moved");
    let (_, restored) = fv_train::carry::unpack(&pack).unwrap();
    assert!(restored);
    assert!(point(&moved).join(fv_train::run::AVERAGE_FILE).is_file());

    // At the end of its best epoch a pack leaves the best checkpoint out; the resume writes
    // it again from the point's average.
    let ended = run_with("ended", Some(0.9), &[(1, None)]);
    let (pack, moved) = pack_for(&ended, "moved-ended");
    assert!(!pack.join("best.safetensors.gz").exists());
    fv_train::carry::unpack(&pack).unwrap();
    let mut c = config.clone();
    c.epochs = 1;
    c.ema = Some(0.9);
    train(&c, &train_s, &valid_s, &moved, &device, false).unwrap();
    let d = max_difference(&ended.best(), &moved.best());
    assert!(d < 1e-3, "the rebuilt best checkpoint differs by {d}");

    let mid = run_with("mid-epoch", Some(0.9), &[(2, None)]);
    let d = max_difference(&straight.last(), &mid.last());
    assert!(
        d < 1e-4,
        "a resume mid-epoch ends with another average, by {d}"
    );
}

/// The same for `fv-train detect`: two epochs straight (mosaic, then without), a stop after
/// the first epoch then a resume, and a stop after one step then a resume end with the same
/// weights and the same epoch records.
#[test]
fn resumed_detection_runs_end_with_the_weights_of_an_uninterrupted_one() {
    use fv_train::detect::{train, DetectConfig, DetectorKind};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let data = FracAtlas::open(&sample_dir()).unwrap();
    let device = Device::flex();
    let config = DetectConfig {
        image_size: 64,
        epochs: 2,
        batch_size: 2,
        close_mosaic: 1,
        ..DetectConfig::study(DetectorKind::Yolov8Effl0)
    };
    let tmp = tempfile::tempdir().unwrap();
    let run_with = |name: &str, steps: &[(usize, Option<usize>)]| {
        let run = tmp.path().join(name);
        let mut last = None;
        for &(epochs, limit) in steps {
            let c = DetectConfig {
                epochs,
                session_step_limit: limit,
                ..config.clone()
            };
            last = Some(train(&data, &c, &run, &device, false).unwrap());
        }
        (run, last.unwrap())
    };
    let (straight, a) = run_with("straight", &[(2, None)]);
    assert!(a.complete);
    assert_eq!(a.epochs.len(), 2);
    // The schedule depends on the epoch count, so "1 + resume + 1" stops the 2-epoch run at
    // its first epoch's last step.
    let per_epoch = fv_train::detect::split(&data, &config).unwrap()[0]
        .len()
        .div_ceil(config.batch_size);
    assert!(
        per_epoch >= 2,
        "the sample needs 2 steps an epoch for a mid-epoch stop"
    );
    let (by_epoch, b) = run_with("by-epoch", &[(2, Some(per_epoch)), (2, None)]);
    let (mid, c) = run_with("mid-epoch", &[(2, Some(1)), (2, None)]);
    for (name, run) in [("1 + resume + 1", &by_epoch), ("a mid-epoch resume", &mid)] {
        let d = max_difference(
            &straight.join("last.safetensors"),
            &run.join("last.safetensors"),
        );
        assert!(d < 1e-4, "{name} differs from 2 epochs straight by {d}");
    }
    for other in [&b, &c] {
        assert_eq!(other.epochs.len(), 2);
        for (x, y) in a.epochs.iter().zip(&other.epochs) {
            for (p, q) in x.loss.iter().zip(&y.loss) {
                assert!((p - q).abs() < 1e-4, "{:?} vs {:?}", x.loss, y.loss);
            }
            assert!((x.valid_map50_95 - y.valid_map50_95).abs() < 1e-6);
        }
    }
    // The step log has each step once, whether or not the run was resumed.
    let lines = |run: &Path| std::fs::read_to_string(run.join("train_log.csv")).unwrap();
    assert_eq!(
        lines(&straight).lines().count(),
        lines(&mid).lines().count()
    );
    // Another configuration is refused, not silently mixed in.
    let other = DetectConfig {
        lr: 0.01,
        ..config.clone()
    };
    let e = train(&data, &other, &straight, &device, false).unwrap_err();
    assert!(e.to_string().contains("another configuration"), "{e}");
}
