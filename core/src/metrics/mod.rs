//! Metrics a radiologist and an ML engineer read: classification at an operating point,
//! ranking (ROC-AUC, PR-AUC), calibration, and COCO-style detection AP.
//!
//! Each is checked against scikit-learn and pycocotools on committed fixture data
//! (`core/tests/fixtures/metrics/`, made by `make_reference.py` beside it).

pub mod classification;
pub mod detection;
