//! The detector path with a small ONNX detector built here (the YOLOv8 export lands with the
//! detector issue): its raw output `[1, 4 + classes, anchors]` in letterboxed model pixels
//! comes back as boxes in the displayed image's pixels, with levels from its thresholds.

mod common;

use common::*;
use fv_core::manifest::{Manifest, OutputSpec, Precision, Task, Thresholds, MANIFEST_VERSION};
use fv_core::preprocess::InputSpec;
use fv_core::Probability;
use prost::Message as _;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;
use tract_onnx::pb::{
    tensor_proto::DataType, type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

fn value(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tract_onnx::pb::tensor_shape_proto::Dimension {
            value: Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(d)),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A "detector" whose output does not depend on the image: three anchors, scores 0.9, 0.5
/// and 0.1, as cx, cy, w, h rows then the score row.
fn write_detector(dir: &Path) {
    let raw: Vec<f32> = vec![
        32.0, 10.0, 50.0, // cx
        32.0, 20.0, 50.0, // cy
        16.0, 4.0, 4.0, // w
        8.0, 4.0, 4.0, // h
        0.9, 0.5, 0.1, // fracture score
    ];
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 18,
        }],
        graph: Some(GraphProto {
            name: "fixed_boxes".into(),
            node: vec![NodeProto {
                op_type: "Identity".into(),
                name: "boxes".into(),
                input: vec!["raw".into()],
                output: vec!["output0".into()],
                ..Default::default()
            }],
            initializer: vec![TensorProto {
                name: "raw".into(),
                dims: vec![1, 5, 3],
                data_type: DataType::Float as i32,
                raw_data: raw.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ..Default::default()
            }],
            input: vec![value("images", &[1, 3, 64, 64])],
            output: vec![value("output0", &[1, 5, 3])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = model.encode_to_vec();
    std::fs::write(dir.join("tiny-detector.onnx"), &bytes).unwrap();
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        name: "tiny-detector".into(),
        version: "0.0.1".into(),
        task: Task::Detect,
        input: InputSpec::yolo(64),
        outputs: vec![OutputSpec {
            name: "output0".into(),
            shape: vec![1, 5, 3],
            meaning: fv_core::manifest::OutputMeaning::Yolov8,
        }],
        labels: vec!["fracture".into()],
        thresholds: Thresholds {
            suspicious: Probability::new(0.3).unwrap(),
            definite: Probability::new(0.8).unwrap(),
        },
        probability_calibration: None,
        prevalence: None,
        fusion: None,
        test_time_hflip: false,
        nms: None,
        applicability: None,
        expected: None,
        precision: Precision::Fp32,
        metrics: None,
        training: None,
        conversion: None,
        onnx_sha256: Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    };
    std::fs::write(
        dir.join("tiny-detector.json"),
        serde_json::to_string_pretty(&manifest).unwrap(),
    )
    .unwrap();
}

#[test]
fn boxes_come_back_in_image_pixels_with_levels() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    for f in [
        "efficientnet-lite0-fracatlas.json",
        "efficientnet-lite0-fracatlas.onnx",
    ] {
        std::fs::copy(models_dir().join(f), models.join(f)).unwrap();
    }
    // A synthetic gradient is no radiograph: without its scope check the classifier reads it,
    // so that the detector runs on it (the geometry is what this test is about).
    let manifest = models.join("efficientnet-lite0-fracatlas.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    m.as_object_mut().unwrap().remove("applicability");
    std::fs::write(&manifest, m.to_string()).unwrap();
    write_detector(&models);
    // 128×64: letterboxed into 64×64 at scale 0.5 with 16 rows of padding above.
    let img = tmp.path().join("wide.png");
    image::GrayImage::from_fn(128, 64, |x, y| image::Luma([((x + y) % 256) as u8]))
        .save(&img)
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fv-edge"))
        .arg("infer")
        .arg("--models")
        .arg(&models)
        .args(["--detect", "always", "--min-score", "0.25"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_valid(&r);
    assert_eq!(r["models"][1]["name"], "tiny-detector");
    assert!(r["timing_ms"]["detect"].is_number());
    let boxes = r["boxes"].as_array().unwrap();
    assert_eq!(
        boxes.len(),
        2,
        "the 0.1 box is below the detector's `suspicious`: {r}"
    );
    let b = |i: usize, k: &str| boxes[i][k].as_f64().unwrap();
    // Model [24, 28, 40, 36] → image [48, 24, 80, 40].
    assert_eq!(boxes[0]["level"], "definite");
    let first = [b(0, "x1"), b(0, "y1"), b(0, "x2"), b(0, "y2")];
    assert_eq!(first, [48.0, 24.0, 80.0, 40.0]);
    assert_eq!(boxes[1]["level"], "suspicious");
    let second = [b(1, "x1"), b(1, "y1"), b(1, "x2"), b(1, "y2")];
    assert_eq!(second, [16.0, 4.0, 24.0, 12.0]);

    // --detect never: no boxes, no detector time.
    let out = Command::new(env!("CARGO_BIN_EXE_fv-edge"))
        .arg("infer")
        .arg("--models")
        .arg(&models)
        .args(["--detect", "never"])
        .arg(&img)
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["boxes"].as_array().unwrap().is_empty());
    assert!(r["timing_ms"]["detect"].is_null());
}
