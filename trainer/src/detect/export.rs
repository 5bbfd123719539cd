//! A detector run to ONNX with its manifest: the graph burn-onnx captures (the raw head),
//! simplified, then YOLOv8's decoding appended as plain ONNX nodes so the edge reads
//! Ultralytics' output `[1, 4 + classes, anchors]` (centre, size in letterboxed pixels, then
//! sigmoid scores) and runs only NMS itself.
//!
//! The DFL is written without a Softmax op: max, subtract, exp, sum and divide over the bin
//! axis of `[1, 4, 16, anchors]`. tract 0.23.9 runs its Softmax on a slow generic path
//! unless the axis is the last of a contiguous tensor, and it moves a Transpose written to
//! make the bins last back past the Softmax (axis propagation), so neither "Softmax on the
//! bins" nor "Transpose, then Softmax on the last axis" is fast there (the three forms timed
//! side by side: BENCHMARKS.md, "the detector's DFL in tract").

use super::{build_detector, eval, split, DetectConfig, DetectMetrics};
use crate::data::{FracAtlas, SplitPart};
use crate::export::{
    training_record, write_manifest, write_model, AbsDiffs, ExportOptions, Exported,
};
use crate::models::yolov8::{anchors, YoloV8, STRIDES};
use crate::onnx::graph::{self, float_tensor, float_value, i64_tensor, int_attr, node};
use crate::onnx::quantize::quantize;
use crate::onnx::simplify::simplify;
use anyhow::Context as _;
use burn::tensor::{Device, Tensor};
use burn_onnx::export::OnnxExporter;
use fv_core::manifest::{
    Conversion, Manifest, OutputSpec, Precision, Task, TestMetrics, MANIFEST_VERSION,
};
use fv_runtime::TractEngine;
use rand::seq::SliceRandom as _;
use rand::SeedableRng as _;
use std::collections::BTreeMap;
use std::path::Path;

/// The name of the decoded output.
pub const OUTPUT: &str = "output0";

/// The detector as an fp32 ONNX graph for `size`×`size` inputs, batch 1, decoded output.
pub fn detector_onnx(
    model: &YoloV8,
    size: usize,
    device: &Device,
) -> anyhow::Result<graph::ModelProto> {
    let sample = Tensor::<4>::zeros([1, 3, size, size], device);
    let onnx = OnnxExporter::new()
        .export(model, sample, |m, x| {
            let r = m.forward(x);
            Tensor::cat(vec![r.boxes, r.scores], 1)
        })
        .map_err(|e| anyhow::anyhow!("cannot export the detector to ONNX: {e}"))?;
    let mut proto = graph::decode(&onnx.into_bytes())?;
    let g = graph::graph_mut(&mut proto)?;
    let simplified = simplify(g);
    tracing::info!("simplified the graph: {simplified:?}");
    let raw = g
        .output
        .first()
        .map(|o| o.name.clone())
        .context("the exported graph has no output")?;
    let grids: [(usize, usize); 3] = STRIDES.map(|s| (size / s, size / s));
    append_decode(g, &raw, model.num_classes(), model.reg_max(), &grids);
    Ok(proto)
}

/// Appends YOLOv8's decoding after the raw head output `raw` (`[1, 4·reg_max + classes, A]`)
/// and makes [`OUTPUT`] the graph's only output.
fn append_decode(
    g: &mut graph::GraphProto,
    raw: &str,
    classes: usize,
    reg_max: usize,
    grids: &[(usize, usize); 3],
) {
    let (points, strides) = anchors(grids);
    let a = points.len() as i64;
    let (r, c) = (reg_max as i64, classes as i64);
    let mut anchor_xy: Vec<f32> = points.iter().map(|p| p[0]).collect();
    anchor_xy.extend(points.iter().map(|p| p[1]));
    g.initializer.extend([
        i64_tensor("dec_axis1", &[1]),
        i64_tensor("dec_axis2", &[2]),
        i64_tensor("dec_0", &[0]),
        i64_tensor("dec_2", &[2]),
        i64_tensor("dec_4", &[4]),
        i64_tensor("dec_4r", &[4 * r]),
        i64_tensor("dec_4r_c", &[4 * r + c]),
        i64_tensor("dec_shape_bins", &[1, 4, r, a]),
        float_tensor(
            "dec_bins",
            &[1, 1, r, 1],
            &(0..reg_max).map(|i| i as f32).collect::<Vec<_>>(),
        ),
        float_tensor("dec_anchors", &[1, 2, a], &anchor_xy),
        float_tensor("dec_strides", &[1, 1, a], &strides),
        float_tensor("dec_half", &[1], &[0.5]),
    ]);
    let slice = |name: &str, input: &str, start: &str, end: &str, out: &str| {
        node("Slice", name, &[input, start, end, "dec_axis1"], &[out])
    };
    // Reductions over the bin axis (2), keeping it, so the division broadcasts.
    let reduce = |op: &str, name: &str, input: &str, out: &str, keep: i64| {
        let mut n = node(op, name, &[input, "dec_axis2"], &[out]);
        n.attribute.push(int_attr("keepdims", keep));
        n
    };
    let mut cat_box = node("Concat", "dec_cat_box", &["dec_c", "dec_wh"], &["dec_xywh"]);
    cat_box.attribute.push(int_attr("axis", 1));
    let mut cat_out = node("Concat", "dec_cat_out", &["dec_box", "dec_sig"], &[OUTPUT]);
    cat_out.attribute.push(int_attr("axis", 1));
    g.node.extend([
        slice("dec_slice_box", raw, "dec_0", "dec_4r", "dec_box_raw"),
        slice("dec_slice_cls", raw, "dec_4r", "dec_4r_c", "dec_cls_raw"),
        node(
            "Reshape",
            "dec_reshape_bins",
            &["dec_box_raw", "dec_shape_bins"],
            &["dec_bins4"],
        ),
        // Softmax over the bins, and its expectation: Σ softmax(x)ᵢ · i.
        reduce("ReduceMax", "dec_max", "dec_bins4", "dec_max", 1),
        node(
            "Sub",
            "dec_shift",
            &["dec_bins4", "dec_max"],
            &["dec_shifted"],
        ),
        node("Exp", "dec_exp", &["dec_shifted"], &["dec_e"]),
        reduce("ReduceSum", "dec_sum_e", "dec_e", "dec_den", 1),
        node("Div", "dec_prob", &["dec_e", "dec_den"], &["dec_prob"]),
        node(
            "Mul",
            "dec_weigh",
            &["dec_prob", "dec_bins"],
            &["dec_weighted"],
        ),
        reduce("ReduceSum", "dec_expect", "dec_weighted", "dec_dist", 0),
        slice("dec_slice_lt", "dec_dist", "dec_0", "dec_2", "dec_lt"),
        slice("dec_slice_rb", "dec_dist", "dec_2", "dec_4", "dec_rb"),
        node("Sub", "dec_x1y1", &["dec_anchors", "dec_lt"], &["dec_p1"]),
        node("Add", "dec_x2y2", &["dec_anchors", "dec_rb"], &["dec_p2"]),
        node("Add", "dec_sum", &["dec_p1", "dec_p2"], &["dec_sum"]),
        node("Mul", "dec_centre", &["dec_sum", "dec_half"], &["dec_c"]),
        node("Sub", "dec_size", &["dec_p2", "dec_p1"], &["dec_wh"]),
        cat_box,
        node(
            "Mul",
            "dec_pixels",
            &["dec_xywh", "dec_strides"],
            &["dec_box"],
        ),
        node("Sigmoid", "dec_sigmoid", &["dec_cls_raw"], &["dec_sig"]),
        cat_out,
    ]);
    g.output = vec![float_value(OUTPUT, &[1, 4 + c, a])];
}

/// Exports `RUN/best.safetensors` of a detection run with its manifest. fp32 takes its
/// thresholds and test metrics from `RUN/metrics.json`; int8 (QDQ, calibrated on training
/// images) is scored again with tract on validation (thresholds) and test, and records its
/// mAP change from fp32.
pub fn export_detector_run(run: &Path, opts: &ExportOptions) -> anyhow::Result<Exported> {
    anyhow::ensure!(
        opts.precision != Precision::Fp16,
        "{}: detectors export in fp32 or int8; fp16 runs far slower than fp32 in tract on CPUs",
        run.display()
    );
    let read = |file: &str| -> anyhow::Result<String> {
        let p = run.join(file);
        std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))
    };
    let best = run.join("best.safetensors");
    anyhow::ensure!(
        best.is_file(),
        "{}: no checkpoint; train the run with `fv-train detect` first",
        best.display()
    );
    let config: DetectConfig = serde_json::from_str(&read("config.json")?)?;
    let metrics: DetectMetrics = serde_json::from_str(&read("metrics.json")?)
        .context("the run has no metrics.json: `fv-train detect` writes it after training")?;
    let device = Device::flex();
    let model = build_detector(&config, Some(&best), &device)?;
    let size = config.image_size as usize;
    let shape = [1, 3, size, size];
    let classes = model.num_classes();
    let mut proto = detector_onnx(&model, size, &device)?;
    let fp32 = graph::encode(&proto);

    let (bytes, thresholds, test, conversion) = match opts.precision {
        Precision::Int8 => {
            let data_dir = opts.data.as_deref().with_context(|| {
                "--precision int8 needs --data DIR (FracAtlas): the detector is calibrated and \
                 measured on the run's own splits"
            })?;
            let data = FracAtlas::open(data_dir)
                .with_context(|| format!("loading FracAtlas from {}", data_dir.display()))?;
            let [mut train_s, valid_s, test_s] = split(&data, &config)?;
            train_s.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(config.seed));
            train_s.truncate(opts.calib_images.max(1));
            let (calib, _) = eval::prepare(&train_s, &config);
            let images: Vec<Vec<f32>> = calib.into_iter().map(|c| c.tensor).collect();
            let report = quantize(&mut proto, &images, &shape, opts.calibration)?;
            tracing::info!("quantized: {report:?}");
            let bytes = graph::encode(&proto);
            let reference = TractEngine::from_bytes(&fp32, Path::new("the fp32 export"), &shape)?;
            let converted =
                TractEngine::from_bytes(&bytes, Path::new("the converted export"), &shape)?;
            let (valid_in, _) = eval::prepare(&valid_s, &config);
            let (raw_ref, pred_ref) = eval::predict_onnx(&reference, &valid_in, classes)?;
            let (raw_conv, pred_conv) = eval::predict_onnx(&converted, &valid_in, classes)?;
            let diffs: Vec<f64> = raw_ref
                .iter()
                .zip(&raw_conv)
                .flat_map(|(a, b)| {
                    let anchors = a.len() / (4 + classes);
                    (4 * anchors..a.len()).map(move |k| (a[k] - b[k]).abs() as f64)
                })
                .collect();
            let diffs = AbsDiffs::of(diffs);
            let m_ref = eval::SplitMetrics::new(SplitPart::Valid, &valid_in, &pred_ref);
            let m_conv = eval::SplitMetrics::new(SplitPart::Valid, &valid_in, &pred_conv);
            let thresholds = eval::BoxThresholds::choose(&valid_in, &pred_conv);
            let (test_in, _) = eval::prepare(&test_s, &config);
            let (_, pred_test) = eval::predict_onnx(&converted, &test_in, classes)?;
            let test = eval::SplitMetrics::new(SplitPart::Test, &test_in, &pred_test)
                .with_intervals(&test_in, &pred_test);
            let conversion = Conversion {
                reference: Precision::Fp32,
                method: report.method(),
                calibration: Some(opts.calibration.to_string()),
                calibration_images: Some(images.len()),
                valid_images: valid_in.len(),
                valid_roc_auc_reference: None,
                valid_roc_auc: None,
                valid_roc_auc_change: None,
                valid_map50_reference: Some(m_ref.map50),
                valid_map50: Some(m_conv.map50),
                valid_map50_95_reference: Some(m_ref.map50_95),
                valid_map50_95: Some(m_conv.map50_95),
                valid_max_abs_probability_diff: diffs.max,
                valid_mean_abs_probability_diff: diffs.mean,
                valid_median_abs_probability_diff: diffs.median,
                metrics_from_reference: false,
            };
            (bytes, thresholds, Some(test), Some(conversion))
        }
        _ => (fp32, metrics.thresholds.clone(), metrics.test.clone(), None),
    };
    let name = &opts.name;
    let stem = match opts.precision {
        Precision::Int8 => format!("{name}-int8"),
        _ => name.clone(),
    };
    let (onnx_path, onnx_sha256) = write_model(&opts.out_dir, &stem, &bytes)?;
    let g = proto
        .graph
        .as_ref()
        .context("the ONNX model has no graph")?;
    let mut input = eval::input_spec(&config);
    if let Some(i) = g.input.first() {
        input.name = i.name.clone();
    }
    let anchors: usize = STRIDES.iter().map(|s| (size / s) * (size / s)).sum();
    let t = &thresholds;
    let test_metrics = test.as_ref().map(|t| {
        let mut values = BTreeMap::from([
            ("map50".to_owned(), t.map50),
            ("map50_95".to_owned(), t.map50_95),
            ("map75".to_owned(), t.map75),
        ]);
        let bounds = [
            ("map50", t.map50_interval),
            ("map50_95", t.map50_95_interval),
        ];
        for (name, [low, high]) in bounds.iter().filter_map(|(n, i)| Some((n, (*i)?))) {
            values.insert(format!("{name}_interval_low"), low);
            values.insert(format!("{name}_interval_high"), high);
        }
        if let Some(p) = t.precision {
            values.insert("precision@0.25".into(), p);
        }
        if let Some(r) = t.recall {
            values.insert("recall@0.25".into(), r);
        }
        TestMetrics {
            split: "test (official detection split)".into(),
            n_per_class: BTreeMap::from([
                ("images".to_owned(), t.images),
                ("fracture_boxes".to_owned(), t.boxes),
            ]),
            values,
        }
    });
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        name: name.clone(),
        version: opts.version.clone(),
        task: Task::Detect,
        input,
        outputs: vec![OutputSpec {
            name: OUTPUT.into(),
            shape: vec![1, 4 + classes as i64, anchors as i64],
            meaning: fv_core::manifest::OutputMeaning::Yolov8,
        }],
        labels: vec![fv_core::reading::FRACTURE_BOX.into()],
        thresholds: t.scores,
        probability_calibration: None,
        prevalence: None,
        fusion: None,
        test_time_hflip: false,
        nms: Some(fv_core::detection::NmsSettings::EDGE),
        applicability: None,
        expected: None,
        precision: opts.precision,
        metrics: test_metrics,
        training: Some(training_record(
            run,
            format!(
                "official detection split (train / valid / test), {} non-fractured negatives in training",
                config.negatives
            ),
            format!("fv-train detect --model {}", config.model.name()),
        )),
        conversion,
        onnx_sha256,
    };
    write_manifest(&opts.out_dir, &stem, onnx_path, manifest)
}
