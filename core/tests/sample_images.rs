//! Decoding and preprocessing real FracAtlas images from the committed sample
//! (`tests/data/fracatlas-sample`, CC BY 4.0, see ATTRIBUTION.md there).

use fv_core::imaging::{decode_file, inspect_file, DecodeOptions, GrayPixels, MinSides};
use fv_core::preprocess::{preprocess, InputSpec, ResizeMode};
use fv_core::BoxXyxy;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn sample(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/fracatlas-sample")
        .join(rel)
}

fn coco() -> Value {
    let p = sample("Annotations/COCO JSON/COCO_fracture_masks.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn exif_rotated_image_matches_its_coco_frame() {
    let path = sample("images/Fractured/IMG0002628.jpg");
    let d = decode_file(&path, &DecodeOptions::default()).unwrap();
    assert_eq!(d.header.exif_orientation, 8);
    assert_eq!((d.header.stored_width, d.header.stored_height), (373, 454));

    let coco = coco();
    let entry = coco["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["file_name"] == "IMG0002628.jpg")
        .unwrap();
    // The boxes were drawn on the displayed image: its size is the rotated one.
    assert_eq!(
        (d.image.width(), d.image.height()),
        (
            entry["width"].as_u64().unwrap() as u32,
            entry["height"].as_u64().unwrap() as u32
        )
    );

    // Orientation 8 means the stored pixels are shown rotated 90° counter-clockwise.
    let raw = image::open(&path).unwrap().to_luma8();
    let GrayPixels::U8(shown) = d.image.pixels() else {
        panic!("8-bit JPEG decoded as 16-bit")
    };
    assert_eq!(shown, &image::imageops::rotate270(&raw));

    // Every COCO box of this image lies inside the displayed frame.
    let id = entry["id"].as_u64().unwrap();
    for a in coco["annotations"].as_array().unwrap() {
        if a["image_id"].as_u64() == Some(id) {
            let b: Vec<f32> = serde_json::from_value(a["bbox"].clone()).unwrap();
            let b = BoxXyxy::from_xywh(b[0], b[1], b[2], b[3]);
            assert!(b.x2 <= d.image.width() as f32 && b.y2 <= d.image.height() as f32);
        }
    }
}

#[test]
fn truncated_fracatlas_jpeg_is_refused_with_its_name() {
    let path = sample("images/Non_fractured/IMG0004092.jpg");
    let err = decode_file(&path, &DecodeOptions::default()).unwrap_err();
    assert_eq!(err.code(), "truncated");
    let msg = err.to_string();
    assert!(
        msg.contains("IMG0004092.jpg") && msg.contains("19344"),
        "{msg}"
    );
    assert_eq!(inspect_file(&path).unwrap_err().code(), "truncated");
}

#[test]
fn bytes_after_the_end_marker_are_accepted() {
    let path = sample("images/Non_fractured/IMG0004062.jpg");
    let d = decode_file(&path, &DecodeOptions::default()).unwrap();
    assert_eq!((d.image.width(), d.image.height()), (373, 454));
}

#[test]
fn full_size_radiograph_respects_the_pixel_limit() {
    let path = sample("images/Fractured/IMG0002322.jpg");
    let d = decode_file(&path, &DecodeOptions::default()).unwrap();
    assert_eq!((d.image.width(), d.image.height()), (2304, 2880));
    let tight = DecodeOptions::with_max_pixels(2304 * 2880 - 1);
    assert_eq!(decode_file(&path, &tight).unwrap_err().code(), "too_large");
}

/// Golden values: an 8×8 grid of channel 0, the mean, and the geometry, for two specs.
/// `FV_BLESS=1 cargo test -p fv-core --test sample_images` rewrites them after an
/// intended change; review the diff.
#[test]
fn preprocessing_matches_golden_values() {
    let golden_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/preprocess.json");
    let mut got = serde_json::Map::new();
    for (file, spec_name, spec) in [
        (
            "images/Fractured/IMG0002628.jpg",
            "imagenet224_stretch",
            InputSpec::imagenet(224, 224, ResizeMode::Stretch),
        ),
        (
            "images/Fractured/IMG0002322.jpg",
            "yolo640_letterbox",
            InputSpec::yolo(640),
        ),
    ] {
        let d = decode_file(&sample(file), &DecodeOptions::default()).unwrap();
        let p = preprocess(&d.image, &spec);
        let [_, c, h, w] = p.tensor.shape;
        let plane = &p.tensor.data[..h * w];
        let grid: Vec<f64> = (0..8)
            .flat_map(|gy| (0..8).map(move |gx| (gy, gx)))
            .map(|(gy, gx)| plane[(gy * h / 8 + h / 16) * w + gx * w / 8 + w / 16] as f64)
            .collect();
        let mean =
            p.tensor.data.iter().map(|&v| v as f64).sum::<f64>() / p.tensor.data.len() as f64;
        let g = p.geometry;
        got.insert(
            format!("{file} {spec_name}"),
            serde_json::json!({
                "shape": [1, c, h, w],
                "mean": mean,
                "grid8x8_channel0": grid,
                "geometry": [g.scale_x, g.scale_y, g.pad_x, g.pad_y],
            }),
        );
    }
    let got = Value::Object(got);
    if std::env::var_os("FV_BLESS").is_some() {
        std::fs::create_dir_all(golden_path.parent().unwrap()).unwrap();
        std::fs::write(
            &golden_path,
            serde_json::to_string_pretty(&got).unwrap() + "\n",
        )
        .unwrap();
        return;
    }
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(&golden_path).unwrap_or_else(|e| {
            panic!("{}: {e}; create it with FV_BLESS=1", golden_path.display())
        }))
        .unwrap();
    for (key, w) in want.as_object().unwrap() {
        let g = &got[key];
        assert_eq!(g["shape"], w["shape"], "{key}");
        let close = |a: &Value, b: &Value, tol: f64| {
            (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= tol
        };
        assert!(
            close(&g["mean"], &w["mean"], 1e-4),
            "{key}: mean {} vs {}",
            g["mean"],
            w["mean"]
        );
        for (i, (a, b)) in g["grid8x8_channel0"]
            .as_array()
            .unwrap()
            .iter()
            .zip(w["grid8x8_channel0"].as_array().unwrap())
            .enumerate()
        {
            // One 8-bit grey level after ImageNet scaling is 1/255/0.229 ≈ 0.017.
            assert!(
                close(a, b, 0.02),
                "{key}: grid value {i}: {a} vs golden {b}"
            );
        }
        for (a, b) in g["geometry"]
            .as_array()
            .unwrap()
            .iter()
            .zip(w["geometry"].as_array().unwrap())
        {
            assert!(close(a, b, 1e-6), "{key}: geometry {a} vs {b}");
        }
    }
    assert_eq!(
        want.as_object().unwrap().len(),
        got.as_object().unwrap().len()
    );
}

/// A radiograph many times the model input is decoded at a DCT scale (`reduced_decode`):
/// what the models are given stays within a few grey levels of the full decode, and the
/// geometry is the full image's, so boxes land where they are on the radiograph.
#[test]
fn a_large_jpeg_is_decoded_at_the_scale_the_models_need() {
    let path = sample("images/Fractured/IMG0002322.jpg");
    let full = decode_file(&path, &DecodeOptions::default()).unwrap();
    let at = |shorter, longer| {
        decode_file(
            &path,
            &DecodeOptions {
                reduce_to: Some(MinSides { shorter, longer }),
                ..Default::default()
            },
        )
        .unwrap()
        .image
    };
    // A 224-px classifier (stretched) and a 320-px detector (letterboxed), kept at 1×.
    let eighth = at(224, 320);
    assert_eq!((eighth.width(), eighth.height()), (288, 360));
    assert_eq!((eighth.full_width(), eighth.full_height()), (2304, 2880));
    assert!(eighth.is_reduced() && !full.image.is_reduced());
    // 1/8 would leave the longer side under 400: 1/4.
    let quarter = at(0, 400);
    assert_eq!((quarter.width(), quarter.height()), (576, 720));
    // More than half the image: decoded whole.
    assert!(!at(1200, 0).is_reduced());

    for spec in [
        InputSpec::imagenet(224, 224, ResizeMode::Stretch),
        InputSpec::yolo(320),
    ] {
        let a = preprocess(&full.image, &spec);
        let b = preprocess(&eighth, &spec);
        assert_eq!(a.geometry, b.geometry);
        // In [0, 1] intensities (the normalized values divided back by std).
        let std = spec.std[0] as f64;
        let n = a.tensor.data.len() as f64;
        let mean_abs = a
            .tensor
            .data
            .iter()
            .zip(&b.tensor.data)
            .map(|(x, y)| (x - y).abs() as f64 * std)
            .sum::<f64>()
            / n;
        assert!(
            mean_abs < 2.0 / 255.0,
            "{}: mean |Δ| {mean_abs}",
            spec.width
        );
    }

    // A small image is decoded whole whatever is asked.
    let small = sample("images/Fractured/IMG0002628.jpg");
    let d = decode_file(
        &small,
        &DecodeOptions {
            reduce_to: Some(MinSides {
                shorter: 224,
                longer: 320,
            }),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!d.image.is_reduced());
    assert_eq!(
        d.image,
        decode_file(&small, &DecodeOptions::default())
            .unwrap()
            .image
    );
}
