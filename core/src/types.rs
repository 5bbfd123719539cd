//! Small types that carry meaning where a bare `f32` would not.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A probability in `[0, 1]`.
///
/// Constructed only through [`Probability::new`] (which refuses NaN and values outside
/// the range) or [`Probability::saturating`] (which clamps, for model outputs that can drift
/// a hair past 1.0 in reduced precision).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Probability(f64);

/// A value that is not a probability.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0} is not a probability: it must lie in [0, 1]")]
pub struct NotAProbability(pub f64);

impl Probability {
    /// Zero.
    pub const ZERO: Probability = Probability(0.0);
    /// One.
    pub const ONE: Probability = Probability(1.0);

    /// A probability, if `p` lies in `[0, 1]`.
    pub fn new(p: f64) -> Result<Self, NotAProbability> {
        if (0.0..=1.0).contains(&p) {
            Ok(Probability(p))
        } else {
            Err(NotAProbability(p))
        }
    }

    /// Clamps `p` into `[0, 1]`; NaN becomes 0 so that a broken output never ranks first.
    pub fn saturating(p: f64) -> Self {
        if p.is_nan() {
            Probability(0.0)
        } else {
            Probability(p.clamp(0.0, 1.0))
        }
    }

    /// The value.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Probability {
    type Error = NotAProbability;
    fn try_from(p: f64) -> Result<Self, Self::Error> {
        Probability::new(p)
    }
}

impl From<Probability> for f64 {
    fn from(p: Probability) -> f64 {
        p.0
    }
}

impl schemars::JsonSchema for Probability {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Probability".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A probability in [0, 1].",
            "type": "number",
            "minimum": 0.0,
            "maximum": 1.0
        })
    }
}

impl fmt::Display for Probability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.4}", self.0)
    }
}

/// An axis-aligned box in pixels, as corners: `(x1, y1)` top-left, `(x2, y2)` bottom-right.
///
/// Which pixels (the original image's, after EXIF orientation, or the model input's) is said
/// by the function that hands one out.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BoxXyxy {
    /// Left edge.
    pub x1: f32,
    /// Top edge.
    pub y1: f32,
    /// Right edge.
    pub x2: f32,
    /// Bottom edge.
    pub y2: f32,
}

impl BoxXyxy {
    /// A box from its corners.
    pub fn new(x1: f32, y1: f32, x2: f32, y2: f32) -> Self {
        BoxXyxy { x1, y1, x2, y2 }
    }

    /// A box from COCO's `[x, y, width, height]`.
    pub fn from_xywh(x: f32, y: f32, w: f32, h: f32) -> Self {
        BoxXyxy::new(x, y, x + w, y + h)
    }

    /// A box from YOLO's normalized `[cx, cy, w, h]` in an image of `width`×`height`.
    pub fn from_cxcywh_normalized(
        cx: f32,
        cy: f32,
        w: f32,
        h: f32,
        width: u32,
        height: u32,
    ) -> Self {
        let (iw, ih) = (width as f32, height as f32);
        BoxXyxy::new(
            (cx - w / 2.0) * iw,
            (cy - h / 2.0) * ih,
            (cx + w / 2.0) * iw,
            (cy + h / 2.0) * ih,
        )
    }

    /// Width, zero for an inverted box.
    pub fn width(&self) -> f32 {
        (self.x2 - self.x1).max(0.0)
    }

    /// Height, zero for an inverted box.
    pub fn height(&self) -> f32 {
        (self.y2 - self.y1).max(0.0)
    }

    /// Area, zero for an inverted box.
    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }

    /// Intersection over union, as COCO computes it (continuous coordinates, no `+1`).
    /// Two empty boxes have IoU 0.
    pub fn iou(&self, other: &BoxXyxy) -> f32 {
        let iw = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let ih = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let inter = iw * ih;
        let union = self.area() + other.area() - inter;
        if union <= 0.0 {
            0.0
        } else {
            inter / union
        }
    }

    /// The box clipped to an image of `width`×`height`.
    pub fn clamp_to(&self, width: u32, height: u32) -> Self {
        let (w, h) = (width as f32, height as f32);
        BoxXyxy::new(
            self.x1.clamp(0.0, w),
            self.y1.clamp(0.0, h),
            self.x2.clamp(0.0, w),
            self.y2.clamp(0.0, h),
        )
    }
}

/// One detected object: where, how sure, and which class.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// The box.
    pub bbox: BoxXyxy,
    /// The model's confidence.
    pub score: Probability,
    /// Index into the model's labels.
    pub class: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probability_refuses_out_of_range_and_nan() {
        assert!(Probability::new(1.0).is_ok());
        assert!(Probability::new(0.0).is_ok());
        assert_eq!(Probability::new(1.01), Err(NotAProbability(1.01)));
        assert!(Probability::new(f64::NAN).is_err());
        assert_eq!(Probability::saturating(1.2).get(), 1.0);
        assert_eq!(Probability::saturating(f64::NAN).get(), 0.0);
        let parsed: Result<Probability, _> = serde_json::from_str("1.5");
        assert!(parsed.is_err());
        let parsed: Probability = serde_json::from_str("0.25").unwrap();
        assert_eq!(parsed.get(), 0.25);
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = BoxXyxy::new(0.0, 0.0, 10.0, 10.0);
        let b = BoxXyxy::new(5.0, 0.0, 15.0, 10.0);
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&BoxXyxy::new(20.0, 20.0, 30.0, 30.0)), 0.0);
        let empty = BoxXyxy::new(1.0, 1.0, 1.0, 1.0);
        assert_eq!(empty.iou(&empty), 0.0);
    }

    #[test]
    fn conversions_from_coco_and_yolo() {
        let b = BoxXyxy::from_xywh(10.0, 20.0, 30.0, 40.0);
        assert_eq!(b, BoxXyxy::new(10.0, 20.0, 40.0, 60.0));
        let y = BoxXyxy::from_cxcywh_normalized(0.5, 0.5, 0.5, 0.25, 200, 100);
        assert_eq!(y, BoxXyxy::new(50.0, 37.5, 150.0, 62.5));
    }
}
