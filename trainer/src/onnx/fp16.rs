//! fp16: half-precision weights and compute, with fp32 input and output, so that callers
//! feed and read the same tensors as for fp32.

use super::graph::{self, int_attr, DataType, GraphProto, ModelProto, TensorProto};
use tract_onnx::prelude::f16;

/// Inputs that ONNX requires in fp32 whatever the compute type (Resize's `roi` and `scales`).
fn keeps_fp32(op: &str, input: usize) -> bool {
    op == "Resize" && (input == 1 || input == 2)
}

fn to_half(t: &mut TensorProto) {
    if let Some(v) = graph::floats(t) {
        t.data_type = DataType::Float16 as i32;
        t.float_data.clear();
        t.raw_data = v
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_bits().to_le_bytes())
            .collect();
    }
}

/// Converts `model` to fp16 compute, keeping fp32 graph inputs and outputs through Casts.
pub fn to_fp16(model: &mut ModelProto) -> anyhow::Result<()> {
    let g: &mut GraphProto = graph::graph_mut(model)?;
    let keep: std::collections::HashSet<String> = g
        .node
        .iter()
        .flat_map(|n| {
            n.input
                .iter()
                .enumerate()
                .filter(|(i, _)| keeps_fp32(&n.op_type, *i))
                .map(|(_, x)| x.clone())
                .collect::<Vec<_>>()
        })
        .collect();
    for t in g.initializer.iter_mut().filter(|t| !keep.contains(&t.name)) {
        to_half(t);
    }
    for n in g.node.iter_mut() {
        match n.op_type.as_str() {
            "Constant" => n
                .attribute
                .iter_mut()
                .filter_map(|a| a.t.as_mut())
                .for_each(to_half),
            "Cast" => n
                .attribute
                .iter_mut()
                .filter(|a| a.name == "to" && a.i == DataType::Float as i64)
                .for_each(|a| a.i = DataType::Float16 as i64),
            _ => {}
        }
    }
    for vi in g.value_info.iter_mut() {
        if let Some(tract_onnx::pb::type_proto::Value::TensorType(t)) =
            vi.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            if t.elem_type == DataType::Float as i32 {
                t.elem_type = DataType::Float16 as i32;
            }
        }
    }
    // fp32 inputs: Cast to fp16 and rewire every reader to the cast.
    let mut head = Vec::new();
    for input in g.input.iter().map(|i| i.name.clone()).collect::<Vec<_>>() {
        let half = format!("{input}.fp16");
        for n in g.node.iter_mut() {
            n.input
                .iter_mut()
                .filter(|x| **x == input)
                .for_each(|x| *x = half.clone());
        }
        let mut cast = graph::node("Cast", &format!("{half}.cast"), &[&input], &[&half]);
        cast.attribute
            .push(int_attr("to", DataType::Float16 as i64));
        head.push(cast);
    }
    // fp32 outputs: the producer writes `<name>.fp16`, and a Cast restores the name.
    let mut tail = Vec::new();
    for output in g.output.iter().map(|o| o.name.clone()).collect::<Vec<_>>() {
        let half = format!("{output}.fp16");
        for n in g.node.iter_mut() {
            n.output
                .iter_mut()
                .filter(|x| **x == output)
                .for_each(|x| *x = half.clone());
            n.input
                .iter_mut()
                .filter(|x| **x == output)
                .for_each(|x| *x = half.clone());
        }
        let mut cast = graph::node("Cast", &format!("{output}.cast"), &[&half], &[&output]);
        cast.attribute.push(int_attr("to", DataType::Float as i64));
        tail.push(cast);
    }
    let body = std::mem::take(&mut g.node);
    g.node = head.into_iter().chain(body).chain(tail).collect();
    Ok(())
}
