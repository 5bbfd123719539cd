//! ONNX graph passes on the file that `burn-onnx` writes: simplification, fp16 conversion and
//! int8 QDQ quantization. Graphs are run for calibration and checks by fv-runtime's tract
//! engine, the one that serves them at the edge.
//!
//! The graph is edited as protobuf (tract-onnx's prost types), so every pass works on any
//! exported model, classifier or detector, without knowing the architecture.

pub mod fp16;
pub mod graph;
pub mod quantize;
pub mod simplify;
