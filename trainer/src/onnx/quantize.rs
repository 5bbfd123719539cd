//! int8 QDQ quantization: per-output-channel symmetric int8 weights and per-tensor asymmetric
//! uint8 activations, written as QuantizeLinear / DequantizeLinear pairs that tract and ONNX
//! Runtime both read.
//!
//! Activation ranges are calibrated by running the fp32 graph in tract on real images:
//! `minmax` keeps the extremes seen; `percentile` clips each tensor to the p-th percentile of
//! its values in each image (averaged across images), which ignores rare outliers.
//!
//! Softmax, the node that produces its input and the node that reads its output stay in
//! float: tract 0.23.9 returns all 1.0 for `DQ → Softmax → Q(uint8) → DQ`, where ONNX Runtime
//! is right (covered by `trainer/tests/quantize.rs`).

use super::graph::{
    self, int_attr, raw_tensor, DataType, GraphProto, Index, ModelProto, ValueInfoProto,
};
use fv_runtime::TractEngine;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// How activation ranges are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "method")]
pub enum Calibration {
    /// The smallest and largest value seen.
    MinMax,
    /// The `p`-th and `(100 − p)`-th percentiles in each image, averaged over images.
    Percentile {
        /// Percentile, e.g. 99.99.
        p: f64,
    },
}

impl std::fmt::Display for Calibration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Calibration::MinMax => write!(f, "minmax"),
            Calibration::Percentile { p } => write!(f, "percentile-{p}"),
        }
    }
}

impl std::str::FromStr for Calibration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "minmax" => Ok(Calibration::MinMax),
            _ => s
                .strip_prefix("percentile")
                .map(|r| r.trim_start_matches(['-', ':', '=']))
                .map(|p| if p.is_empty() { "99.99" } else { p })
                .and_then(|p| p.parse::<f64>().ok())
                .filter(|p| (50.0..=100.0).contains(p))
                .map(|p| Calibration::Percentile { p })
                .ok_or_else(|| {
                    format!("calibration `{s}`: use `minmax` or `percentile[-P]` with 50 ≤ P ≤ 100")
                }),
        }
    }
}

/// What [`quantize`] did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizeReport {
    /// Calibration method.
    pub calibration: Calibration,
    /// Images used to calibrate.
    pub calibration_images: usize,
    /// Nodes whose weights and input are quantized, by op type.
    pub quantized: BTreeMap<String, usize>,
    /// Nodes left in float on purpose, with why.
    pub kept_float: Vec<String>,
}

impl QuantizeReport {
    /// The manifest's `conversion.method` line for a graph quantized so.
    pub fn method(&self) -> String {
        format!(
            "QDQ: int8 per-channel symmetric weights, uint8 per-tensor activations; \
             quantized {:?}; kept in float: {}",
            self.quantized,
            if self.kept_float.is_empty() {
                "none".to_owned()
            } else {
                self.kept_float.join("; ")
            }
        )
    }
}

/// A node whose input 0 (activation) and input 1 (weight initializer) get quantized.
struct Target {
    node: usize,
    /// Axis of the weight along the output channels.
    axis: usize,
}

fn targets(g: &GraphProto, kept: &mut Vec<String>) -> Vec<Target> {
    let idx = Index::new(g);
    let softmax_io: HashSet<usize> = g
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op_type == "Softmax")
        .flat_map(|(_, n)| {
            let producers = n.input.iter().filter_map(|x| idx.producer.get(x).copied());
            let readers = n
                .output
                .iter()
                .flat_map(|o| idx.consumers.get(o).cloned().unwrap_or_default());
            producers.chain(readers).collect::<Vec<_>>()
        })
        .collect();
    let mut out = Vec::new();
    for (i, n) in g.node.iter().enumerate() {
        let axis = match n.op_type.as_str() {
            "Conv" => 0,
            // MatMul(x, W[K, N]): outputs run along the last axis.
            "MatMul" => 1,
            "Gemm" if graph::get_int(n, "transB") == Some(1) => 0,
            "Gemm" => 1,
            _ => continue,
        };
        let Some(w) = n.input.get(1) else { continue };
        let is_weight = idx
            .initializer
            .get(w)
            .is_some_and(|&k| g.initializer[k].data_type == DataType::Float as i32);
        if !is_weight {
            continue;
        }
        if softmax_io.contains(&i) {
            kept.push(format!(
                "{} ({}): next to a Softmax (tract 0.23.9 mis-runs quantized Softmax)",
                n.name, n.op_type
            ));
            continue;
        }
        out.push(Target { node: i, axis });
    }
    out
}

/// Per-tensor activation ranges `(low, high)` from running `fp32` on `images`.
fn calibrate(
    fp32: &ModelProto,
    tensors: &[String],
    images: &[Vec<f32>],
    shape: &[usize],
    method: Calibration,
) -> anyhow::Result<Vec<(f32, f32)>> {
    let mut probe = fp32.clone();
    let g = graph::graph_mut(&mut probe)?;
    // Expose every tensor to calibrate as a graph output; tract infers their shapes.
    g.output = tensors
        .iter()
        .map(|t| ValueInfoProto {
            name: t.clone(),
            ..Default::default()
        })
        .collect();
    let runner = TractEngine::from_bytes(
        &graph::encode(&probe),
        std::path::Path::new("the fp32 graph with every calibrated tensor as an output"),
        shape,
    )?;
    let mut lows = vec![Vec::new(); tensors.len()];
    let mut highs = vec![Vec::new(); tensors.len()];
    for x in images {
        for (k, mut v) in runner.run_values(x)?.into_iter().enumerate() {
            let (lo, hi) = match method {
                Calibration::MinMax => v
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x))),
                Calibration::Percentile { p } => {
                    let n = v.len();
                    let at = |q: f64| ((q / 100.0) * (n - 1) as f64).round() as usize;
                    let (lo_i, hi_i) = (at(100.0 - p), at(p));
                    let lo = *v.select_nth_unstable_by(lo_i, f32::total_cmp).1;
                    let hi = *v.select_nth_unstable_by(hi_i, f32::total_cmp).1;
                    (lo, hi)
                }
            };
            lows[k].push(lo);
            highs[k].push(hi);
        }
    }
    let reduce = |v: &[f32], min: bool| match method {
        Calibration::MinMax if min => v.iter().copied().fold(f32::MAX, f32::min),
        Calibration::MinMax => v.iter().copied().fold(f32::MIN, f32::max),
        Calibration::Percentile { .. } => v.iter().sum::<f32>() / v.len().max(1) as f32,
    };
    Ok(lows
        .iter()
        .zip(&highs)
        .map(|(l, h)| (reduce(l, true), reduce(h, false)))
        .collect())
}

/// Scale and zero point of an asymmetric uint8 range that contains 0 (so that zero padding
/// stays exact).
pub fn uint8_params(low: f32, high: f32) -> (f32, u8) {
    let (low, high) = (low.min(0.0), high.max(0.0));
    let scale = if high > low {
        (high - low) / 255.0
    } else {
        1.0
    };
    let zp = (-low / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zp)
}

/// Symmetric int8 per-channel quantization of `w` along `axis` of `dims`:
/// `(int8 values, one scale per channel)`.
pub fn int8_per_channel(w: &[f32], dims: &[i64], axis: usize) -> (Vec<i8>, Vec<f32>) {
    let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    let channels = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let channel_of = |i: usize| (i / inner) % channels;
    let mut max = vec![0.0f32; channels];
    for (i, v) in w.iter().enumerate() {
        let c = channel_of(i);
        max[c] = max[c].max(v.abs());
    }
    let scales: Vec<f32> = max
        .iter()
        .map(|&m| if m > 0.0 { m / 127.0 } else { 1.0 })
        .collect();
    let q = w
        .iter()
        .enumerate()
        .map(|(i, v)| (v / scales[channel_of(i)]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, scales)
}

/// Quantizes `model` (fp32, simplified) in place, calibrating on `images` (each a flattened
/// input of `shape`).
pub fn quantize(
    model: &mut ModelProto,
    images: &[Vec<f32>],
    shape: &[usize],
    method: Calibration,
) -> anyhow::Result<QuantizeReport> {
    anyhow::ensure!(
        !images.is_empty(),
        "int8 calibration needs at least one image"
    );
    let mut kept_float = Vec::new();
    let g = graph::graph_mut(model)?;
    let targets = targets(g, &mut kept_float);
    anyhow::ensure!(
        !targets.is_empty(),
        "the graph has no Conv, MatMul or Gemm with weights to quantize"
    );
    let mut act: Vec<String> = Vec::new();
    for t in &targets {
        let x = &g.node[t.node].input[0];
        if !act.contains(x) {
            act.push(x.clone());
        }
    }
    let ranges = calibrate(model, &act, images, shape, method)?;
    let range_of: HashMap<&str, (f32, f32)> = act.iter().map(String::as_str).zip(ranges).collect();

    let g = graph::graph_mut(model)?;
    let idx = Index::new(g);
    let mut new_inits = Vec::new();
    // Nodes to insert before node i.
    let mut before: HashMap<usize, Vec<graph::NodeProto>> = HashMap::new();
    let mut rename: HashMap<usize, (String, String)> = HashMap::new();
    let mut done_act: HashMap<String, String> = HashMap::new();
    let mut quantized = BTreeMap::new();
    for t in &targets {
        let n = &g.node[t.node];
        let (x, w) = (n.input[0].clone(), n.input[1].clone());
        let pre = before.entry(t.node).or_default();
        let x_dq = match done_act.get(&x) {
            Some(dq) => dq.clone(),
            None => {
                let (lo, hi) = range_of[x.as_str()];
                let (scale, zp) = uint8_params(lo, hi);
                let (s, z) = (format!("{x}.q_scale"), format!("{x}.q_zero"));
                new_inits.push(graph::float_tensor(&s, &[], &[scale]));
                new_inits.push(raw_tensor(&z, &[], DataType::Uint8, vec![zp]));
                let (q, dq) = (format!("{x}.q"), format!("{x}.dq"));
                pre.push(graph::node("QuantizeLinear", &q, &[&x, &s, &z], &[&q]));
                pre.push(graph::node("DequantizeLinear", &dq, &[&q, &s, &z], &[&dq]));
                done_act.insert(x.clone(), dq.clone());
                dq
            }
        };
        let wt = &g.initializer[idx.initializer[&w]];
        let values = graph::floats(wt).expect("checked float above");
        let (q, scales) = int8_per_channel(&values, &wt.dims, t.axis);
        let (wq, s, z, wdq) = (
            format!("{w}.int8"),
            format!("{w}.w_scale"),
            format!("{w}.w_zero"),
            format!("{w}.dq"),
        );
        // The same weight can feed two nodes; quantize it once.
        if !new_inits.iter().any(|i: &graph::TensorProto| i.name == wq) {
            let c = scales.len() as i64;
            new_inits.push(raw_tensor(
                &wq,
                &wt.dims,
                DataType::Int8,
                q.iter().map(|&v| v as u8).collect(),
            ));
            new_inits.push(graph::float_tensor(&s, &[c], &scales));
            new_inits.push(raw_tensor(&z, &[c], DataType::Int8, vec![0; c as usize]));
            let mut dq = graph::node("DequantizeLinear", &wdq, &[&wq, &s, &z], &[&wdq]);
            dq.attribute.push(int_attr("axis", t.axis as i64));
            pre.push(dq);
        }
        rename.insert(t.node, (x_dq, wdq));
        *quantized.entry(n.op_type.clone()).or_insert(0) += 1;
    }
    let body = std::mem::take(&mut g.node);
    for (i, mut n) in body.into_iter().enumerate() {
        g.node.extend(before.remove(&i).unwrap_or_default());
        if let Some((x, w)) = rename.remove(&i) {
            n.input[0] = x;
            n.input[1] = w;
        }
        g.node.push(n);
    }
    g.initializer.extend(new_inits);
    graph::prune_initializers(g);
    Ok(QuantizeReport {
        calibration: method,
        calibration_images: images.len(),
        quantized,
        kept_float,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_parses() {
        assert_eq!("minmax".parse(), Ok(Calibration::MinMax));
        assert_eq!(
            "percentile".parse(),
            Ok(Calibration::Percentile { p: 99.99 })
        );
        assert_eq!(
            "percentile-99.9".parse(),
            Ok(Calibration::Percentile { p: 99.9 })
        );
        assert!("percentile-20".parse::<Calibration>().is_err());
        assert!("kl".parse::<Calibration>().is_err());
    }

    #[test]
    fn uint8_range_keeps_zero_exact() {
        let (s, z) = uint8_params(-1.0, 3.0);
        assert!((s - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(z, 64);
        // After a ReLU: all positive, zero point 0.
        assert_eq!(uint8_params(0.5, 6.0).1, 0);
        assert_eq!(uint8_params(0.0, 0.0), (1.0, 0));
    }

    #[test]
    fn per_channel_scales_follow_the_axis() {
        // dims [2, 3]: axis 0 has channels of 3 values, axis 1 channels of 2.
        let w = [1.0, -2.0, 0.5, 4.0, 0.0, -1.0];
        let (q, s) = int8_per_channel(&w, &[2, 3], 0);
        assert_eq!(s, vec![2.0 / 127.0, 4.0 / 127.0]);
        assert_eq!(q, vec![64, -127, 32, 127, 0, -32]);
        let (_, s) = int8_per_channel(&w, &[2, 3], 1);
        assert_eq!(s, vec![4.0 / 127.0, 2.0 / 127.0, 1.0 / 127.0]);
    }
}
