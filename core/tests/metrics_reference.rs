//! fv-core's metrics against scikit-learn and pycocotools on committed fixtures
//! (`tests/fixtures/metrics/make_reference.py` made them).

use fv_core::detection::{nms, NmsOptions};
use fv_core::metrics::classification::{
    expected_calibration_error, threshold_for_sensitivity, threshold_for_specificity, BinaryReport,
    Scored,
};
use fv_core::metrics::detection::{coco_ap, DetectionConfusion, ImageBoxes};
use fv_core::{BoxXyxy, Detection, Probability};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/metrics/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[track_caller]
fn assert_close(got: Option<f64>, want: &Value, tol: f64, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: got None, want {want}"));
    assert!(
        (got - f(want)).abs() <= tol,
        "{what}: got {got}, reference {want}"
    );
}

#[test]
fn classification_matches_scikit_learn() {
    let fx = fixture("classification.json");
    let samples: Vec<Scored> = serde_json::from_value(fx["samples"].clone()).unwrap();
    let r = &fx["reference"];
    let report = BinaryReport::new(&samples, Probability::new(f(&r["threshold"])).unwrap());
    let c = &r["confusion"];
    assert_eq!(report.confusion.tp, c["tp"].as_u64().unwrap());
    assert_eq!(report.confusion.fp, c["fp"].as_u64().unwrap());
    assert_eq!(report.confusion.tn, c["tn"].as_u64().unwrap());
    assert_eq!(report.confusion.fn_, c["fn"].as_u64().unwrap());
    let tol = 1e-12;
    assert_close(report.accuracy, &r["accuracy"], tol, "accuracy");
    assert_close(
        report.balanced_accuracy,
        &r["balanced_accuracy"],
        tol,
        "balanced accuracy",
    );
    assert_close(report.precision, &r["precision"], tol, "precision");
    assert_close(report.sensitivity, &r["sensitivity"], tol, "sensitivity");
    assert_close(report.specificity, &r["specificity"], tol, "specificity");
    assert_close(report.f1, &r["f1"], tol, "f1");
    assert_close(report.roc_auc, &r["roc_auc"], tol, "roc_auc");
    assert_close(
        report.pr_auc,
        &r["pr_auc"],
        tol,
        "pr_auc (average precision)",
    );
    for bins in [10usize, 15] {
        assert_close(
            expected_calibration_error(&samples, bins),
            &r["ece"][bins.to_string()],
            1e-12,
            &format!("ECE, {bins} bins"),
        );
    }
}

#[test]
fn operating_points_match_scikit_learn_roc_curve() {
    let fx = fixture("classification.json");
    let samples: Vec<Scored> = serde_json::from_value(fx["samples"].clone()).unwrap();
    let ops = &fx["reference"]["operating_points"];
    for target in ["0.8", "0.9", "0.95"] {
        let t: f64 = target.parse().unwrap();
        for (kind, op) in [
            ("sensitivity", threshold_for_sensitivity(&samples, t)),
            ("specificity", threshold_for_specificity(&samples, t)),
        ] {
            let op = op.unwrap();
            let want = &ops[kind][target];
            let what = format!("target {kind} {target}");
            assert_close(Some(op.threshold.get()), &want["threshold"], 1e-12, &what);
            assert_close(Some(op.sensitivity), &want["sensitivity"], 1e-12, &what);
            assert_close(Some(op.specificity), &want["specificity"], 1e-12, &what);
        }
    }
}

fn boxes(v: &Value) -> Vec<BoxXyxy> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let c: Vec<f32> = serde_json::from_value(b.clone()).unwrap();
            BoxXyxy::new(c[0], c[1], c[2], c[3])
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct RawImage {
    ground_truth: Vec<RawGt>,
    detections: Vec<RawDet>,
}
#[derive(serde::Deserialize)]
struct RawGt {
    bbox: [f32; 4],
    class: usize,
}
#[derive(serde::Deserialize)]
struct RawDet {
    bbox: [f32; 4],
    score: f64,
    class: usize,
}

fn detection_images(fx: &Value) -> Vec<ImageBoxes> {
    let raw: Vec<RawImage> = serde_json::from_value(fx["images"].clone()).unwrap();
    raw.into_iter()
        .map(|im| ImageBoxes {
            ground_truth: im
                .ground_truth
                .into_iter()
                .map(|g| fv_core::metrics::detection::GroundTruth {
                    bbox: BoxXyxy::new(g.bbox[0], g.bbox[1], g.bbox[2], g.bbox[3]),
                    class: g.class,
                })
                .collect(),
            detections: im
                .detections
                .into_iter()
                .map(|d| Detection {
                    bbox: BoxXyxy::new(d.bbox[0], d.bbox[1], d.bbox[2], d.bbox[3]),
                    score: Probability::new(d.score).unwrap(),
                    class: d.class,
                })
                .collect(),
        })
        .collect()
}

#[test]
fn coco_ap_matches_pycocotools() {
    let fx = fixture("detection.json");
    let nc = fx["num_classes"].as_u64().unwrap() as usize;
    let images = detection_images(&fx);
    let r = &fx["reference"];
    let ap = coco_ap(&images, nc).unwrap();
    assert_close(Some(ap.map50), &r["map50"], 1e-9, "mAP50");
    assert_close(Some(ap.map75), &r["map75"], 1e-9, "mAP75");
    assert_close(Some(ap.map50_95), &r["map50_95"], 1e-9, "mAP50-95");
    for (k, class) in ap.per_class.iter().enumerate() {
        for t in 0..10 {
            let what = format!("class {k}, IoU threshold #{t}");
            assert_close(
                Some(class.ap[t]),
                &r["ap_per_class_per_iou"][k][t],
                1e-9,
                &what,
            );
        }
    }
}

#[test]
fn confusion_matrix_matches_the_ultralytics_procedure() {
    let fx = fixture("detection.json");
    let nc = fx["num_classes"].as_u64().unwrap() as usize;
    let images = detection_images(&fx);
    let cm = DetectionConfusion::new(&images, nc, 0.25, 0.45);
    let want: Vec<Vec<u64>> =
        serde_json::from_value(fx["reference"]["confusion_conf0.25_iou0.45"].clone()).unwrap();
    assert_eq!(cm.matrix, want);
    let pr = cm.class_pr(0);
    assert_eq!(pr.tp, want[0][0]);
    assert_eq!(pr.fp, want[0][1] + want[0][2]);
    assert_eq!(pr.fn_, want[1][0] + want[2][0]);
}

#[test]
fn iou_matches_pycocotools() {
    let r = &fixture("detection.json")["reference"]["iou"];
    let (a, b) = (boxes(&r["a"]), boxes(&r["b"]));
    for (i, ba) in a.iter().enumerate() {
        for (j, bb) in b.iter().enumerate() {
            let want = f(&r["matrix"][i][j]);
            assert!((ba.iou(bb) as f64 - want).abs() < 1e-5, "IoU[{i}][{j}]");
        }
    }
}

#[test]
fn nms_matches_the_greedy_reference() {
    let r = &fixture("detection.json")["reference"]["nms"];
    let bs = boxes(&r["boxes"]);
    let scores: Vec<f64> = serde_json::from_value(r["scores"].clone()).unwrap();
    let dets: Vec<Detection> = bs
        .iter()
        .zip(&scores)
        .map(|(b, &s)| Detection {
            bbox: *b,
            score: Probability::new(s).unwrap(),
            class: 0,
        })
        .collect();
    let kept = nms(
        dets.clone(),
        &NmsOptions {
            score_threshold: 0.0,
            iou_threshold: f(&r["iou_threshold"]) as f32,
            max_detections: 1000,
            class_agnostic: false,
        },
    );
    let want: Vec<usize> = serde_json::from_value(r["keep"].clone()).unwrap();
    let want: Vec<Detection> = want.iter().map(|&i| dets[i]).collect();
    assert_eq!(kept, want);
}
