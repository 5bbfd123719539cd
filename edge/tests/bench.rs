//! `fv-edge bench --json` as a smoke run on the committed models: every model on every
//! available engine, the whole path for the three inputs, and the ratios. Figures are not
//! judged here (a shared CI machine says little about speed); BENCHMARKS.md holds the real run.

mod common;

use fv_core::manifest::Task;
use std::process::Command;

#[test]
fn bench_json_smoke() {
    let out = Command::new(env!("CARGO_BIN_EXE_fv-edge"))
        .args(["bench", "--json", "--iterations", "1", "--warmup", "0"])
        .arg("--models")
        .arg(common::models_dir())
        .arg("--samples")
        .arg(common::workspace().join("tests/data/fracatlas-sample/images"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let engines = r["engines"].as_array().unwrap();
    let found = fv_runtime::models::scan(&common::models_dir()).unwrap();
    let tract: Vec<_> = engines.iter().filter(|e| e["engine"] == "tract").collect();
    assert_eq!(tract.len(), found.len(), "every model file on tract: {r}");
    for e in engines {
        let p50 = e["latency"]["p50_ms"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50.is_finite(), "{e}");
    }
    // tract says where each model's time goes: one profile per model, operators whose
    // times add up, with the shares summing to one.
    let profiles = r["profiles"].as_array().unwrap();
    assert_eq!(
        profiles.len(),
        found.len(),
        "a tract profile per model: {r}"
    );
    for p in profiles {
        let ops = p["ops"].as_array().unwrap();
        assert!(!ops.is_empty(), "{p}");
        let share: f64 = ops.iter().map(|o| o["share"].as_f64().unwrap()).sum();
        assert!((share - 1.0).abs() < 1e-6, "shares sum to {share}: {p}");
        assert!(ops.iter().all(|o| o["nodes"].as_u64().unwrap() >= 1), "{p}");
        assert!(
            ops.iter()
                .any(|o| o["op"].as_str().unwrap().contains("DepthWise")),
            "EfficientNet-Lite0 backbones run depthwise convolutions: {p}"
        );
    }
    let ort = engines.iter().any(|e| e["engine"] == "onnxruntime-cpu");
    if std::env::var_os("ORT_DYLIB_PATH").is_some() {
        assert!(
            ort,
            "ONNX Runtime is available, so it is measured: {stderr}"
        );
        assert!(r["ratios"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["what"].as_str().unwrap().contains("tract / ONNX Runtime")));
    } else {
        assert!(!r["skipped"].as_array().unwrap().is_empty());
    }
    let paths = r["paths"].as_array().unwrap();
    let is_classifier = |name: &serde_json::Value| {
        found
            .iter()
            .any(|f| f.manifest.name == *name && f.manifest.task == Task::Classify)
    };
    let classifiers = engines
        .iter()
        .filter(|e| is_classifier(&e["model"]))
        .count();
    assert_eq!(
        paths.len(),
        6 * classifiers,
        "three inputs, each decoded whole and at model scale, per classifier and engine: {r}"
    );
    // With a detector installed, every whole path runs it.
    if found.iter().any(|f| f.manifest.task == Task::Detect) {
        assert!(paths.iter().all(|p| p["detector"].is_string()), "{r}");
    }
    let sizes: Vec<&str> = paths.iter().map(|p| p["size"].as_str().unwrap()).collect();
    assert!(
        sizes.contains(&"2304×2880") && sizes.contains(&"1760×2140"),
        "{sizes:?}"
    );
    // At model scale the 2304×2880 JPEG is decoded at a DCT scale (1/2 for the shipped
    // 384-px classifier: twice each input side is kept); the DICOM is decoded whole.
    for p in paths
        .iter()
        .filter(|p| p["decode"] == "model scale" && p["input"].as_str().unwrap().contains("2304"))
    {
        assert!(
            ["1152×1440", "576×720", "288×360"].contains(&p["size"].as_str().unwrap()),
            "{p}"
        );
    }
    assert!(paths.iter().any(|p| p["decode"] == "model scale"), "{r}");
    assert!(r["peak_rss_mib"].as_f64().unwrap() > 0.0);
}
