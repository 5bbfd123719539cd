//! Small helpers over the ONNX protobuf: decoding, initializers as `f32`, new nodes.

use anyhow::Context as _;
use prost::Message as _;
use std::collections::HashMap;
pub use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, GraphProto, ModelProto,
    NodeProto, TensorProto, ValueInfoProto,
};

/// Parses an ONNX file's bytes.
pub fn decode(bytes: &[u8]) -> anyhow::Result<ModelProto> {
    ModelProto::decode(bytes).context("not an ONNX model (protobuf decoding failed)")
}

/// Serializes a model.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// The graph of a model, which every exported model has.
pub fn graph_mut(model: &mut ModelProto) -> anyhow::Result<&mut GraphProto> {
    model.graph.as_mut().context("the ONNX model has no graph")
}

/// The values of a float32 tensor, from `raw_data` or `float_data`.
pub fn floats(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != DataType::Float as i32 {
        return None;
    }
    if !t.raw_data.is_empty() {
        Some(
            t.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    } else {
        Some(t.float_data.clone())
    }
}

/// A tensor with little-endian `raw_data`.
pub fn raw_tensor(name: &str, dims: &[i64], data_type: DataType, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type as i32,
        raw_data: raw,
        ..Default::default()
    }
}

/// A float32 tensor.
pub fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    raw_tensor(name, dims, DataType::Float, raw)
}

/// An integer attribute.
pub fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

/// A node in the default domain.
pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Reads an integer attribute.
pub fn get_int(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// Reads a float attribute.
pub fn get_float(node: &NodeProto, name: &str) -> Option<f32> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.f)
}

/// Indexes of a graph: who produces and who consumes each tensor, and the initializers.
pub struct Index {
    /// Tensor name → index of the node that produces it.
    pub producer: HashMap<String, usize>,
    /// Tensor name → indexes of the nodes that read it.
    pub consumers: HashMap<String, Vec<usize>>,
    /// Initializer name → its index in `graph.initializer`.
    pub initializer: HashMap<String, usize>,
}

impl Index {
    /// Builds the index of `g`.
    pub fn new(g: &GraphProto) -> Self {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for o in &n.output {
                producer.insert(o.clone(), i);
            }
            for x in n.input.iter().filter(|x| !x.is_empty()) {
                consumers.entry(x.clone()).or_default().push(i);
            }
        }
        let initializer = g
            .initializer
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Index {
            producer,
            consumers,
            initializer,
        }
    }

    /// How many nodes read `tensor`, counting graph outputs as readers.
    pub fn uses(&self, g: &GraphProto, tensor: &str) -> usize {
        self.consumers.get(tensor).map_or(0, Vec::len)
            + g.output.iter().filter(|o| o.name == tensor).count()
    }

    /// The float values of initializer `name`.
    pub fn init_floats(&self, g: &GraphProto, name: &str) -> Option<Vec<f32>> {
        self.initializer
            .get(name)
            .and_then(|&i| floats(&g.initializer[i]))
    }
}

/// Drops initializers that no node reads any more.
pub fn prune_initializers(g: &mut GraphProto) {
    let used: std::collections::HashSet<&str> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain(g.output.iter().map(|o| o.name.as_str()))
        .collect();
    let used: std::collections::HashSet<String> = used.into_iter().map(str::to_owned).collect();
    g.initializer.retain(|t| used.contains(&t.name));
}

/// Op types of the graph, counted (for messages and tests).
pub fn op_counts(g: &GraphProto) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for n in &g.node {
        *m.entry(n.op_type.clone()).or_insert(0) += 1;
    }
    m
}

/// An int64 tensor (shapes, slice bounds).
pub fn i64_tensor(name: &str, values: &[i64]) -> TensorProto {
    let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    raw_tensor(name, &[values.len() as i64], DataType::Int64, raw)
}

/// A float32 graph input or output of fixed shape.
pub fn float_value(name: &str, dims: &[i64]) -> ValueInfoProto {
    use tract_onnx::pb::{tensor_shape_proto, type_proto, TensorShapeProto, TypeProto};
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
