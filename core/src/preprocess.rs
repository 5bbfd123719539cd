//! Preprocessing: the one implementation that the trainer and the edge both call.
//!
//! An image becomes a model input in three steps, all driven by the model's [`InputSpec`]
//! (which the manifest carries):
//! 1. resize: stretch to the input size, or letterbox (keep the aspect ratio, pad the rest);
//! 2. scale to `[0, 1]` by the image's significant bits (255 for 8-bit, 65535 for 16-bit;
//!    a deeper source is first brought to the model's depth, [`InputSpec::intensity_bits`]);
//! 3. normalize per channel with the model's mean and std, replicating gray to 3 channels
//!    where the model expects RGB.
//!
//! [`Geometry`] records the mapping so that boxes predicted in model pixels are mapped back
//! to the original image's pixels (after EXIF orientation).

use crate::imaging::{GrayPixels, MinSides, XrayImage};
use crate::BoxXyxy;
use fast_image_resize as fir;
use serde::{Deserialize, Serialize};

/// How an image is fitted to the model input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Resize both axes to the input size, ignoring the aspect ratio (classifiers).
    Stretch,
    /// Scale to fit, keeping the aspect ratio, centred, padded with `pad_value` (detectors).
    Letterbox,
}

/// Memory layout of the input tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Layout {
    /// Batch, channels, height, width.
    Nchw,
}

/// A model's input: size, layout and preprocessing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InputSpec {
    /// Tensor name in the ONNX graph.
    #[serde(default = "default_input_name")]
    pub name: String,
    /// Input width in pixels.
    pub width: u32,
    /// Input height in pixels.
    pub height: u32,
    /// 1 (gray) or 3 (gray replicated to RGB, for ImageNet-pretrained backbones).
    pub channels: u32,
    /// Memory layout.
    pub layout: Layout,
    /// How the image is fitted.
    pub resize: ResizeMode,
    /// Letterbox padding, as an intensity in `[0, 1]` before normalization.
    #[serde(default = "default_pad")]
    pub pad_value: f32,
    /// Per-channel mean, subtracted after scaling to `[0, 1]`.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation, divided by after the mean.
    pub std: Vec<f32>,
    /// The bit depth of the images the model was trained on, 8 or 16. At 8 (FracAtlas is
    /// 8-bit JPEG; the default) a deeper source (a 12- or 16-bit DICOM) is brought to 8 bits
    /// before the resize, so that it reads as its 8-bit export would: the resize of an 8-bit
    /// image rounds to whole levels, the models learned on those, and the fractions a 16-bit
    /// resize keeps moved the classifier's logit by up to 0.66 on FracAtlas test images.
    /// At 16 every source is resized as it is.
    #[serde(default = "default_intensity_bits")]
    #[schemars(range(min = 8, max = 16))]
    pub intensity_bits: u8,
}

fn default_input_name() -> String {
    "input".into()
}

fn default_intensity_bits() -> u8 {
    8
}

/// Ultralytics pads letterboxes with grey 114.
fn default_pad() -> f32 {
    f32::from(LETTERBOX_PAD) / 255.0
}

/// ImageNet's per-channel mean, what the pretrained backbones were normalised with.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// The grey Ultralytics pads letterboxes with, of 255.
pub const LETTERBOX_PAD: u8 = 114;

impl InputSpec {
    /// A 3-channel input normalized with ImageNet's mean and std.
    pub fn imagenet(width: u32, height: u32, resize: ResizeMode) -> Self {
        InputSpec {
            name: default_input_name(),
            width,
            height,
            channels: 3,
            layout: Layout::Nchw,
            resize,
            pad_value: default_pad(),
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
            intensity_bits: default_intensity_bits(),
        }
    }

    /// A 3-channel input scaled to `[0, 1]` only, letterboxed: what YOLOv8 expects.
    pub fn yolo(size: u32) -> Self {
        InputSpec {
            name: "images".into(),
            width: size,
            height: size,
            channels: 3,
            layout: Layout::Nchw,
            resize: ResizeMode::Letterbox,
            pad_value: default_pad(),
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
            intensity_bits: default_intensity_bits(),
        }
    }

    /// The smallest image this input can be given by a reduced-scale JPEG decode
    /// ([`DecodeOptions::reduce_to`]): twice the input side, on both sides when stretched
    /// and on the longer side when letterboxed, so that the resize after the DCT scale still
    /// averages. At once the input side (1/4 for a 2304×2880 radiograph and a 384-px
    /// classifier), the readings of 200 large FracAtlas images moved by 0.011 on average and
    /// 9 findings changed; at twice, by 0.010 and 7 (`results/decode-scale/`,
    /// BENCHMARKS.md).
    ///
    /// [`DecodeOptions::reduce_to`]: crate::imaging::DecodeOptions::reduce_to
    pub fn min_decoded_sides(&self) -> MinSides {
        let side = 2 * self.width.max(self.height);
        match self.resize {
            ResizeMode::Stretch => MinSides {
                shorter: side,
                longer: side,
            },
            ResizeMode::Letterbox => MinSides {
                shorter: 0,
                longer: side,
            },
        }
    }

    /// Checks that the fields can work together.
    pub fn validate(&self) -> Result<(), String> {
        if self.width == 0 || self.height == 0 {
            return Err(format!(
                "input size {}×{} is empty",
                self.width, self.height
            ));
        }
        if !matches!(self.channels, 1 | 3) {
            return Err(format!(
                "input has {} channels; 1 or 3 are supported",
                self.channels
            ));
        }
        if self.mean.len() != self.channels as usize || self.std.len() != self.channels as usize {
            return Err(format!(
                "mean ({}) and std ({}) must have one value per channel ({})",
                self.mean.len(),
                self.std.len(),
                self.channels
            ));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err("every std value must be positive".into());
        }
        if !matches!(self.intensity_bits, 8 | 16) {
            return Err(format!(
                "intensity_bits is {}; 8 or 16 are supported",
                self.intensity_bits
            ));
        }
        Ok(())
    }
}

/// A dense `f32` tensor in the layout of its [`InputSpec`].
#[derive(Clone, Debug, PartialEq)]
pub struct InputTensor {
    /// `[batch, channels, height, width]`.
    pub shape: [usize; 4],
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl InputTensor {
    /// The tensor mirrored left to right (every row reversed), for horizontal-flip
    /// test-time augmentation: the model sees the image as training's flips showed it.
    pub fn mirrored(&self) -> InputTensor {
        let w = self.shape[3].max(1);
        let mut data = self.data.clone();
        for row in data.chunks_exact_mut(w) {
            row.reverse();
        }
        InputTensor {
            shape: self.shape,
            data,
        }
    }
}

/// How original pixels map to model pixels: `model = original * scale + pad`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Geometry {
    /// Original width.
    pub src_width: u32,
    /// Original height.
    pub src_height: u32,
    /// Horizontal scale.
    pub scale_x: f32,
    /// Vertical scale.
    pub scale_y: f32,
    /// Left padding in model pixels.
    pub pad_x: f32,
    /// Top padding in model pixels.
    pub pad_y: f32,
}

impl Geometry {
    /// Where the image lands in a `width`×`height` input under `mode`, and the size it is
    /// resized to.
    pub fn fit(src_width: u32, src_height: u32, spec: &InputSpec) -> (Self, u32, u32) {
        let (sw, sh) = (src_width.max(1) as f64, src_height.max(1) as f64);
        let (w, h) = (spec.width, spec.height);
        let (nw, nh) = match spec.resize {
            ResizeMode::Stretch => (w, h),
            ResizeMode::Letterbox => {
                let r = (w as f64 / sw).min(h as f64 / sh);
                (
                    ((sw * r).round() as u32).clamp(1, w),
                    ((sh * r).round() as u32).clamp(1, h),
                )
            }
        };
        let g = Geometry {
            src_width,
            src_height,
            scale_x: (nw as f64 / sw) as f32,
            scale_y: (nh as f64 / sh) as f32,
            pad_x: ((w - nw) / 2) as f32,
            pad_y: ((h - nh) / 2) as f32,
        };
        (g, nw, nh)
    }

    /// A box in original pixels mapped into model pixels.
    pub fn to_model(&self, b: &BoxXyxy) -> BoxXyxy {
        BoxXyxy::new(
            b.x1 * self.scale_x + self.pad_x,
            b.y1 * self.scale_y + self.pad_y,
            b.x2 * self.scale_x + self.pad_x,
            b.y2 * self.scale_y + self.pad_y,
        )
    }

    /// A box in model pixels mapped back to original pixels, clipped to the image.
    pub fn to_original(&self, b: &BoxXyxy) -> BoxXyxy {
        BoxXyxy::new(
            (b.x1 - self.pad_x) / self.scale_x,
            (b.y1 - self.pad_y) / self.scale_y,
            (b.x2 - self.pad_x) / self.scale_x,
            (b.y2 - self.pad_y) / self.scale_y,
        )
        .clamp_to(self.src_width, self.src_height)
    }
}

/// A preprocessed image: the tensor and the mapping back.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocessed {
    /// The model input, batch of one.
    pub tensor: InputTensor,
    /// How original pixels map to it.
    pub geometry: Geometry,
}

/// Turns an image into a model input as `spec` says.
///
/// Resizing uses a triangle (bilinear) filter whose support widens with the
/// downscale factor, so a 2880-pixel radiograph is averaged, not sampled, into 224 pixels.
///
/// The spec is assumed valid ([`InputSpec::validate`]); manifests are validated on load.
pub fn preprocess(image: &XrayImage, spec: &InputSpec) -> Preprocessed {
    // Geometry is in the full image's pixels, also when these are a reduced-scale decode:
    // boxes map back to what the radiograph is, not to what was decoded.
    let (geometry, nw, nh) = Geometry::fit(image.full_width(), image.full_height(), spec);
    let (w, h) = (spec.width as usize, spec.height as usize);

    // One plane of [0, 1] intensities, padded.
    let mut plane = vec![spec.pad_value; w * h];
    let (px, py) = (geometry.pad_x as usize, geometry.pad_y as usize);
    let mut place = |values: &mut dyn Iterator<Item = f32>, inv_max: f32| {
        for (i, v) in values.enumerate() {
            let (x, y) = (i % nw as usize, i / nw as usize);
            plane[(py + y) * w + px + x] = v * inv_max;
        }
    };
    let mut eight = |p: &crate::imaging::Gray8| {
        let r = resized(p.width(), p.height(), p.as_raw(), nw, nh);
        place(&mut r.iter().map(|&v| v as f32), 1.0 / 255.0);
    };
    match image.pixels() {
        GrayPixels::U8(p) => eight(p),
        // Brought to 8 bits before the resize, as the model's training images were exported:
        // the 8-bit resize then rounds where it rounded for them.
        GrayPixels::U16(_) if spec.intensity_bits == 8 => eight(&image.to_gray8()),
        GrayPixels::U16(p) => {
            let r = resized(p.width(), p.height(), p.as_raw(), nw, nh);
            place(&mut r.iter().map(|&v| v as f32), 1.0 / image.max_value());
        }
    }

    let c = spec.channels as usize;
    let mut data = Vec::with_capacity(c * w * h);
    normalize_into(plane.iter().copied(), &spec.mean, &spec.std, &mut data);
    Preprocessed {
        tensor: InputTensor {
            shape: [1, c, h, w],
            data,
        },
        geometry,
    }
}

/// `src` resized to `width`×`height` with the filter [`preprocess`] uses, for what prepares
/// images outside it (the detector's training cache): one resize for training and serving.
pub fn resize_gray8(src: &crate::imaging::Gray8, width: u32, height: u32) -> crate::imaging::Gray8 {
    let pixels = resized(src.width(), src.height(), src.as_raw(), width, height);
    crate::imaging::Gray8::from_raw(width, height, pixels)
        .expect("the resize returns width × height samples")
}

/// Appends one grey plane of `[0, 1]` intensities as one channel per `mean` / `std` pair,
/// each `(v - mean[c]) / std[c]` (grey replicated to every channel). The one normalization
/// of model inputs: [`preprocess`] and the trainer's batch builders both call it. The plane
/// is an iterator, read once per channel, so that 8-bit sources need no `f32` copy.
pub fn normalize_into<I>(plane: I, mean: &[f32], std: &[f32], out: &mut Vec<f32>)
where
    I: Iterator<Item = f32> + Clone,
{
    for (m, s) in mean.iter().zip(std) {
        out.extend(plane.clone().map(|v| (v - m) / s));
    }
}

/// Antialiased (triangle-filter, support widened by the scale factor) resize of one grey
/// plane of `u8` or `u16` samples.
///
/// Typed (`resize_typed`) rather than through fast_image_resize's dynamic `resize`: that one
/// dispatches over every pixel type the crate knows, and instantiating all of them here made
/// fv-core alone take 200 s of every clean optimised build.
fn resized<T: bytemuck::Pod + ResizePixel>(w: u32, h: u32, src: &[T], nw: u32, nh: u32) -> Vec<T> {
    if (w, h) == (nw, nh) {
        return src.to_vec();
    }
    let src = fir::images::TypedImageRef::<T::Pixel>::from_buffer(w, h, bytemuck::cast_slice(src))
        .expect("an image buffer holds width × height samples, aligned for its type");
    let mut out = vec![T::zeroed(); nw as usize * nh as usize];
    let mut dst = fir::images::TypedImage::<T::Pixel>::from_buffer(
        nw,
        nh,
        bytemuck::cast_slice_mut(&mut out),
    )
    .expect("the output buffer holds width × height samples, aligned for its type");
    fir::Resizer::new()
        .resize_typed(
            &src,
            &mut dst,
            &fir::ResizeOptions::new()
                .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear)),
        )
        .expect("source and destination have the same pixel type");
    out
}

/// The resizer's pixel type for a sample type.
trait ResizePixel {
    type Pixel: fir::PixelTrait;
}

impl ResizePixel for u8 {
    type Pixel = fir::pixels::U8;
}

impl ResizePixel for u16 {
    type Pixel = fir::pixels::U16;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::{Gray16, Gray8};
    use image::Luma;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-5
    }

    #[test]
    fn a_reduced_decode_keeps_twice_the_side_the_input_needs() {
        let stretch = InputSpec::imagenet(384, 384, ResizeMode::Stretch).min_decoded_sides();
        assert_eq!((stretch.shorter, stretch.longer), (768, 768));
        let letterbox = InputSpec::yolo(320).min_decoded_sides();
        assert_eq!((letterbox.shorter, letterbox.longer), (0, 640));
    }

    #[test]
    fn a_mirrored_tensor_is_the_preprocessed_mirror_image() {
        // A left-to-right ramp, not symmetric: mirroring the tensor must equal
        // preprocessing the mirrored image, in every channel.
        let img = Gray8::from_fn(7, 5, |x, y| Luma([(x * 30 + y) as u8]));
        let flipped = image::imageops::flip_horizontal(&img);
        let spec = InputSpec::imagenet(7, 5, ResizeMode::Stretch);
        let a = preprocess(&XrayImage::from_gray8(img), &spec)
            .tensor
            .mirrored();
        let b = preprocess(&XrayImage::from_gray8(flipped), &spec).tensor;
        assert_eq!(a.shape, b.shape);
        assert!(a.data.iter().zip(&b.data).all(|(x, y)| close(*x, *y)));
        assert!(!close(a.data[0], a.data[6]));
    }

    #[test]
    fn resize_gray8_is_the_resize_preprocess_uses() {
        let img = Gray8::from_fn(40, 30, |x, y| Luma([(x * 5 + y * 3) as u8]));
        let small = resize_gray8(&img, 10, 8);
        assert_eq!(small.dimensions(), (10, 8));
        let spec = InputSpec {
            channels: 1,
            mean: vec![0.0],
            std: vec![1.0],
            ..InputSpec::imagenet(10, 8, ResizeMode::Stretch)
        };
        let p = preprocess(&XrayImage::from_gray8(img), &spec);
        for (a, b) in small.as_raw().iter().zip(&p.tensor.data) {
            assert!(close(*a as f32 / 255.0, *b), "{a} vs {b}");
        }
    }

    #[test]
    fn constant_image_normalizes_to_constant() {
        let img = XrayImage::from_gray8(Gray8::from_pixel(37, 53, Luma([51])));
        let spec = InputSpec::imagenet(16, 16, ResizeMode::Stretch);
        let p = preprocess(&img, &spec);
        assert_eq!(p.tensor.shape, [1, 3, 16, 16]);
        for ch in 0..3 {
            let want = (0.2 - spec.mean[ch]) / spec.std[ch];
            let plane = &p.tensor.data[ch * 256..(ch + 1) * 256];
            assert!(plane.iter().all(|&v| close(v, want)), "channel {ch}");
        }
    }

    #[test]
    fn sixteen_bit_scales_by_significant_bits() {
        let img = XrayImage::from_gray16(Gray16::from_pixel(4, 4, Luma([2047])), 12);
        let spec = InputSpec {
            channels: 1,
            mean: vec![0.0],
            std: vec![1.0],
            intensity_bits: 16,
            ..InputSpec::imagenet(4, 4, ResizeMode::Stretch)
        };
        let p = preprocess(&img, &spec);
        assert!(p.tensor.data.iter().all(|&v| close(v, 2047.0 / 4095.0)));
    }

    #[test]
    fn a_sixteen_bit_source_reads_as_its_eight_bit_export() {
        // The same pixels at 8 and at 16 bits (v · 257), resized 3.3× down: the model was
        // trained on the 8-bit resize, so the 16-bit source must give the same tensor.
        let img8 = Gray8::from_fn(97, 131, |x, y| Luma([((x * 7 + y * 3) % 251) as u8]));
        let img16 = Gray16::from_fn(97, 131, |x, y| Luma([u16::from(img8[(x, y)][0]) * 257]));
        let spec = InputSpec {
            channels: 1,
            mean: vec![0.0],
            std: vec![1.0],
            ..InputSpec::imagenet(29, 40, ResizeMode::Stretch)
        };
        let a = preprocess(&XrayImage::from_gray8(img8), &spec).tensor.data;
        let b = preprocess(&XrayImage::from_gray16(img16, 16), &spec)
            .tensor
            .data;
        let apart = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert_eq!(apart, 0, "{apart} of {} values differ", a.len());

        let keep = InputSpec {
            intensity_bits: 16,
            ..spec
        };
        let c = preprocess(
            &XrayImage::from_gray16(
                Gray16::from_fn(97, 131, |x, y| Luma([(x * 300 + y * 11) as u16])),
                16,
            ),
            &keep,
        )
        .tensor
        .data;
        let off_levels = |v: &f32| ((v * 255.0) - (v * 255.0).round()).abs() > 1e-3;
        assert!(c.iter().any(off_levels), "16 bits keep the fractions");
    }

    #[test]
    fn letterbox_pads_centre_and_maps_boxes_back() {
        // 200×100 into 64×64: scaled by 0.32 to 64×32, 16 rows of padding above and below.
        let img = XrayImage::from_gray8(Gray8::from_pixel(200, 100, Luma([255])));
        let spec = InputSpec::yolo(64);
        let p = preprocess(&img, &spec);
        let g = p.geometry;
        assert_eq!((g.pad_x, g.pad_y), (0.0, 16.0));
        assert!(close(g.scale_x, 0.32) && close(g.scale_y, 0.32));
        let at = |x: usize, y: usize| p.tensor.data[y * 64 + x];
        assert!(close(at(10, 5), 114.0 / 255.0), "padding above");
        assert!(close(at(10, 60), 114.0 / 255.0), "padding below");
        assert!(
            close(at(10, 16), 1.0) && close(at(63, 47), 1.0),
            "image rows"
        );

        let b = BoxXyxy::new(50.0, 10.0, 150.0, 90.0);
        let m = g.to_model(&b);
        assert!(close(m.x1, 16.0) && close(m.y1, 19.2) && close(m.x2, 48.0) && close(m.y2, 44.8));
        let back = g.to_original(&m);
        for (a, b) in [
            (back.x1, b.x1),
            (back.y1, b.y1),
            (back.x2, b.x2),
            (back.y2, b.y2),
        ] {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
        // A box running into the padding is clipped to the image.
        let clipped = g.to_original(&BoxXyxy::new(-5.0, 0.0, 70.0, 64.0));
        assert_eq!(clipped, BoxXyxy::new(0.0, 0.0, 200.0, 100.0));
    }

    #[test]
    fn tall_image_pads_left_and_right() {
        let (g, nw, nh) = Geometry::fit(373, 454, &InputSpec::yolo(640));
        assert_eq!((nw, nh), (526, 640));
        assert_eq!((g.pad_x, g.pad_y), (57.0, 0.0));
    }

    #[test]
    fn spec_validation_names_the_problem() {
        let mut s = InputSpec::imagenet(8, 8, ResizeMode::Stretch);
        assert!(s.validate().is_ok());
        s.mean.pop();
        assert!(s.validate().unwrap_err().contains("one value per channel"));
        let mut s = InputSpec::imagenet(8, 8, ResizeMode::Stretch);
        s.channels = 2;
        assert!(s.validate().unwrap_err().contains("2 channels"));
        let mut s = InputSpec::imagenet(8, 8, ResizeMode::Stretch);
        s.intensity_bits = 0;
        assert!(s.validate().unwrap_err().contains("intensity_bits is 0"));
    }
}
