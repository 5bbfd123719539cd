//! ONNX graph passes on the file that `burn-onnx` writes: simplification, fp16 conversion and
//! int8 QDQ quantization, plus running a graph with tract for calibration and checks.
//!
//! The graph is edited as protobuf (tract-onnx's prost types), so every pass works on any
//! exported model, classifier or detector, without knowing the architecture.

pub mod fp16;
pub mod graph;
pub mod quantize;
pub mod run;
pub mod simplify;
