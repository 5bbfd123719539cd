//! Micro-benchmarks of the edge's path outside the engine: decode, preprocess, NMS.
//! `cargo bench -p fv-core` (figures in BENCHMARKS.md).

use criterion::{criterion_group, criterion_main, Criterion};
use fv_core::detection::{nms, NmsOptions};
use fv_core::imaging::{decode_bytes, DecodeOptions};
use fv_core::manifest::Manifest;
use fv_core::preprocess::{preprocess, InputSpec};
use fv_core::{BoxXyxy, Detection, Probability};
use std::hint::black_box;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sample(name: &str) -> (PathBuf, Vec<u8>) {
    let p = workspace()
        .join("tests/data/fracatlas-sample/images")
        .join(name);
    let b = std::fs::read(&p).unwrap();
    (p, b)
}

fn benches(c: &mut Criterion) {
    let options = DecodeOptions::default();
    let spec = Manifest::from_path(&workspace().join("models/efficientnet-lite0-fracatlas.json"))
        .unwrap()
        .input;
    for (label, name) in [
        ("2304x2880", "Fractured/IMG0002322.jpg"),
        ("373x454", "Fractured/IMG0002628.jpg"),
    ] {
        let (path, bytes) = sample(name);
        c.bench_function(&format!("decode jpeg {label}"), |b| {
            b.iter(|| decode_bytes(black_box(&bytes), &path, &options).unwrap())
        });
        let image = decode_bytes(&bytes, &path, &options).unwrap().image;
        let side = spec.width;
        c.bench_function(&format!("preprocess {label} to {side}"), |b| {
            b.iter(|| preprocess(black_box(&image), &spec))
        });
        // The same pixels as a 12-bit DICOM delivers them: brought to the model's 8 bits
        // before the resize (what the unit does), and resized at 16 bits (what it did).
        let deep = image.widened(12);
        for bits in [8, 16] {
            let at = InputSpec {
                intensity_bits: bits,
                ..spec.clone()
            };
            c.bench_function(
                &format!("preprocess 12-bit {label} to {side}, intensity_bits {bits}"),
                |b| b.iter(|| preprocess(black_box(&deep), &at)),
            );
        }
    }
    // A YOLOv8 head's worth of candidates after the score filter: 1000 boxes in clusters.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32
    };
    let dets: Vec<Detection> = (0..1000)
        .map(|_| {
            let (cx, cy) = ((next() * 8.0).floor() * 80.0, (next() * 8.0).floor() * 80.0);
            let (x, y) = (cx + next() * 10.0, cy + next() * 10.0);
            Detection {
                bbox: BoxXyxy::new(x, y, x + 40.0 + next() * 10.0, y + 40.0 + next() * 10.0),
                score: Probability::new(f64::from(next())).unwrap(),
                class: 0,
            }
        })
        .collect();
    let nms_options = NmsOptions {
        score_threshold: 0.25,
        iou_threshold: 0.45,
        max_detections: 300,
        class_agnostic: false,
    };
    c.bench_function("nms 1000 boxes", |b| {
        b.iter(|| nms(black_box(dets.clone()), &nms_options))
    });
}

criterion_group!(core, benches);
criterion_main!(core);
