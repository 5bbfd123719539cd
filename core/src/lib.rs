//! FractuVision's shared core.
//!
//! Everything that the trainer (`fv-train`) and the edge daemon (`fv-edge`) must agree on
//! lives here, once: decoding X-ray images, preprocessing them for a model, decoding and
//! suppressing boxes, the metrics a clinician reads, and the model manifest that is the
//! contract between the two halves. A model trained with one resize and served with another
//! is the classic silent bug of this field; keeping one implementation prevents it.
//!
//! This crate knows no ML framework and no network client.
//!
//! ```
//! use fv_core::imaging::{decode_bytes, DecodeOptions};
//! use fv_core::preprocess::{preprocess, InputSpec, ResizeMode};
//!
//! // A 4×2 8-bit grayscale PNG, made in memory.
//! let img = image::GrayImage::from_fn(4, 2, |x, _| image::Luma([(x * 60) as u8]));
//! let mut png = Vec::new();
//! img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
//!
//! let decoded = decode_bytes(&png, "example.png".as_ref(), &DecodeOptions::default()).unwrap();
//! let spec = InputSpec::imagenet(8, 8, ResizeMode::Letterbox);
//! let input = preprocess(&decoded.image, &spec);
//! assert_eq!(input.tensor.shape, [1, 3, 8, 8]);
//! ```
#![deny(missing_docs)]

pub mod broker;
pub mod calibration;
pub mod detection;
pub mod drift;
pub mod durable;
pub mod imaging;
pub mod manifest;
pub mod metrics;
pub mod preprocess;
pub mod reading;
pub mod result;
pub mod scope;
pub mod types;
pub mod wire;

pub use types::{BoxXyxy, Detection, Probability};
