//! Runs that outlive a session: a run stopped at an epoch's end or in the middle of one, then
//! resumed, ends with the weights of an uninterrupted run.
//!
//! Its own test binary, so its own process: burn's random generator is global, and tests
//! running beside it in one process would draw from it between this test's steps.

mod common;

use burn::tensor::Device;
use common::sample_dir;
use fv_train::data::FracAtlas;
use fv_train::models::ModelKind;
use fv_train::pipeline::split_samples;
use fv_train::training::{train, LrSchedule, RunDir, Sampling, TrainConfig};
use std::collections::BTreeMap;
use std::path::Path;

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

/// Two epochs straight, one epoch then a resume for the second, and a stop after one step
/// then a resume: the same weights, because the resume checkpoint carries the optimizer's
/// moments, the schedule position and the sampler's place, and every random draw is keyed
/// by the step.
#[test]
fn resumed_runs_end_with_the_weights_of_an_uninterrupted_one() {
    let data = FracAtlas::open(&sample_dir()).unwrap();
    let split = data
        .classification_split(&common::small_holdout(42))
        .unwrap();
    let [train_s, valid_s, _] = split_samples(&data, &split, None);
    let device = Device::flex();
    let mut config = TrainConfig::study(ModelKind::EfficientnetLite0);
    config.image_size = 32;
    config.batch_size = 2;
    config.lr = 1e-3;
    config.sampling = Sampling::Balanced;
    config.class_weighted_loss = false;
    config.schedule = LrSchedule::WarmupCosine {
        warmup_epochs: 0.5,
        final_fraction: 0.01,
    };
    let tmp = tempfile::tempdir().unwrap();
    let run_with = |name: &str, steps: &[(usize, Option<usize>)]| {
        let run = RunDir(tmp.path().join(name));
        let mut last = None;
        for &(epochs, limit) in steps {
            let mut c = config.clone();
            c.epochs = epochs;
            c.session_step_limit = limit;
            last = Some(train(&c, &train_s, &valid_s, &run, &device, false).unwrap());
        }
        (run, last.unwrap())
    };
    let (straight, s) = run_with("straight", &[(2, None)]);
    assert!(s.complete);
    let (by_epoch, _) = run_with("by-epoch", &[(1, None), (2, None)]);
    let (mid, first) = run_with("mid-epoch", &[(2, Some(1)), (2, None)]);
    let stopped = tmp.path().join("mid-epoch/state.json");
    assert!(stopped.is_file());
    let _ = first;

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
        v["epoch_loss"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
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
