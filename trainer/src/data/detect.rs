//! Detection data: FracAtlas images with their fracture boxes, cached once at the training
//! size, and YOLOv8's geometric augmentation (mosaic, random scale and translation,
//! horizontal flip). No colour augmentation: an X-ray's grey levels carry the finding.

use super::classify::LoadFailure;
use super::fracatlas::{FracAtlas, Region};
use fv_core::imaging::{decode_file, DecodeOptions};
use fv_core::preprocess::{preprocess, InputSpec, Preprocessed};
use fv_core::BoxXyxy;
use rand::{Rng, RngExt};
use rayon::prelude::*;
use std::path::PathBuf;

/// A box `[x1, y1, x2, y2]` in input pixels, as the training batches, the assigner and the
/// loss carry it: a plain array for the hot loops; reports and the edge use
/// [`fv_core::BoxXyxy`].
pub type Xyxy = [f32; 4];

/// The grey YOLOv8 pads with: the same value fv-core's letterbox uses at the edge.
pub const PAD: u8 = fv_core::preprocess::LETTERBOX_PAD;

/// One image and its ground truth, in displayed pixels (after EXIF orientation).
#[derive(Clone, Debug, PartialEq)]
pub struct DetSample {
    /// FracAtlas id.
    pub id: String,
    /// The file.
    pub path: PathBuf,
    /// Fracture boxes; empty for a non-fractured image.
    pub boxes: Vec<BoxXyxy>,
    /// The region it is reported under.
    pub region: Region,
}

impl DetSample {
    /// The samples at `idx` of `data`, unusable files left out (the data report lists them).
    pub fn from_indices(data: &FracAtlas, idx: &[usize]) -> Vec<DetSample> {
        idx.iter()
            .map(|&i| &data.images[i])
            .filter(|r| r.is_usable())
            .map(|r| DetSample {
                id: r.id.clone(),
                path: r.path.clone(),
                boxes: r.boxes.clone(),
                region: r.regions.primary(),
            })
            .collect()
    }
}

/// An image resized so that its longer side is the training size, as grey bytes, with its
/// boxes in the same pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct Cached {
    /// Width in pixels after resizing.
    pub width: usize,
    /// Height in pixels after resizing.
    pub height: usize,
    /// Row-major grey values.
    pub pixels: Vec<u8>,
    /// Boxes in this image's pixels.
    pub boxes: Vec<Xyxy>,
}

impl Cached {
    fn at(&self, x: usize, y: usize) -> u8 {
        self.pixels[y * self.width + x]
    }
}

/// Decodes and resizes `samples` in parallel. Files that fail are returned apart.
pub fn load_cached(
    samples: &[DetSample],
    size: u32,
) -> (Vec<(DetSample, Cached)>, Vec<LoadFailure>) {
    let results: Vec<Result<(DetSample, Cached), LoadFailure>> = samples
        .par_iter()
        .map(|s| {
            let d = decode_file(&s.path, &DecodeOptions::default()).map_err(|e| LoadFailure {
                id: s.id.clone(),
                message: e.to_string(),
            })?;
            let gray = d.image.to_gray8();
            let (w, h) = gray.dimensions();
            let r = size as f32 / w.max(h) as f32;
            let (nw, nh) = (
                ((w as f32 * r).round() as u32).max(1),
                ((h as f32 * r).round() as u32).max(1),
            );
            let small = fv_core::preprocess::resize_gray8(&gray, nw, nh);
            let (sx, sy) = (nw as f32 / w as f32, nh as f32 / h as f32);
            Ok((
                s.clone(),
                Cached {
                    width: nw as usize,
                    height: nh as usize,
                    pixels: small.into_raw(),
                    boxes: s
                        .boxes
                        .iter()
                        .map(|b| [b.x1 * sx, b.y1 * sy, b.x2 * sx, b.y2 * sy])
                        .collect(),
                },
            ))
        })
        .collect();
    crate::data::partition(results)
}

/// Geometric augmentation settings (Ultralytics' defaults for detection, without HSV).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DetAugment {
    /// Probability of a mosaic of four images.
    pub mosaic: f32,
    /// Random scale gain: a factor in `[1 − scale, 1 + scale]`.
    pub scale: f32,
    /// Random translation, as a fraction of the side.
    pub translate: f32,
    /// Probability of a horizontal flip.
    pub flip: f32,
}

impl Default for DetAugment {
    fn default() -> Self {
        DetAugment {
            mosaic: 1.0,
            scale: 0.5,
            translate: 0.1,
            flip: 0.5,
        }
    }
}

/// A square training view: grey bytes, `size`×`size`, and its boxes.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    /// Side.
    pub size: usize,
    /// Row-major grey values.
    pub pixels: Vec<u8>,
    /// Boxes in view pixels.
    pub boxes: Vec<Xyxy>,
}

/// A canvas the affine step samples from.
struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
    boxes: Vec<Xyxy>,
}

/// Four images around a random centre on a `2s`×`2s` canvas, as Ultralytics' mosaic.
fn mosaic_canvas<R: Rng + ?Sized>(items: [&Cached; 4], s: usize, rng: &mut R) -> Canvas {
    let side = 2 * s;
    let mut pixels = vec![PAD; side * side];
    let mut boxes = Vec::new();
    let xc = rng.random_range(s / 2..s * 3 / 2) as isize;
    let yc = rng.random_range(s / 2..s * 3 / 2) as isize;
    for (k, img) in items.iter().enumerate() {
        let (w, h) = (img.width as isize, img.height as isize);
        // Top-left of the image on the canvas: it touches the centre from its quadrant.
        let (x0, y0) = match k {
            0 => (xc - w, yc - h),
            1 => (xc, yc - h),
            2 => (xc - w, yc),
            _ => (xc, yc),
        };
        for y in 0..h {
            let cy = y0 + y;
            if cy < 0 || cy >= side as isize {
                continue;
            }
            for x in 0..w {
                let cx = x0 + x;
                if cx < 0 || cx >= side as isize {
                    continue;
                }
                pixels[cy as usize * side + cx as usize] = img.at(x as usize, y as usize);
            }
        }
        for b in &img.boxes {
            let (dx, dy) = (x0 as f32, y0 as f32);
            boxes.push([b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy]);
        }
    }
    Canvas {
        width: side,
        height: side,
        pixels,
        boxes,
    }
}

/// One image letterboxed (centred, padded) into an `s`×`s` canvas.
fn letterbox_canvas(img: &Cached, s: usize) -> Canvas {
    let mut pixels = vec![PAD; s * s];
    let (ox, oy) = ((s - img.width) / 2, (s - img.height) / 2);
    for y in 0..img.height {
        let row = &img.pixels[y * img.width..(y + 1) * img.width];
        pixels[(y + oy) * s + ox..(y + oy) * s + ox + img.width].copy_from_slice(row);
    }
    let (dx, dy) = (ox as f32, oy as f32);
    Canvas {
        width: s,
        height: s,
        pixels,
        boxes: img
            .boxes
            .iter()
            .map(|b| [b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy])
            .collect(),
    }
}

/// Samples the canvas into an `s`×`s` view: its centre moved to a random point near the
/// view's centre, scaled by a random factor; boxes follow, clipped, and those mostly cut away
/// or thinner than 2 pixels are dropped (Ultralytics' `box_candidates`).
fn affine<R: Rng + ?Sized>(c: &Canvas, s: usize, aug: &DetAugment, rng: &mut R) -> View {
    let scale = rng
        .random_range((1.0 - aug.scale)..=(1.0 + aug.scale))
        .max(0.05);
    let t = aug.translate;
    let tx = rng.random_range((0.5 - t)..=(0.5 + t)) * s as f32;
    let ty = rng.random_range((0.5 - t)..=(0.5 + t)) * s as f32;
    let (cx, cy) = (c.width as f32 / 2.0, c.height as f32 / 2.0);
    let mut pixels = vec![PAD; s * s];
    for y in 0..s {
        let sy = (y as f32 + 0.5 - ty) / scale + cy - 0.5;
        for x in 0..s {
            let sx = (x as f32 + 0.5 - tx) / scale + cx - 0.5;
            pixels[y * s + x] = bilinear(c, sx, sy);
        }
    }
    let map = |x: f32, y: f32| ((x - cx) * scale + tx, (y - cy) * scale + ty);
    let side = s as f32;
    let boxes = c
        .boxes
        .iter()
        .filter_map(|b| {
            let (x1, y1) = map(b[0], b[1]);
            let (x2, y2) = map(b[2], b[3]);
            let clipped = [
                x1.clamp(0.0, side),
                y1.clamp(0.0, side),
                x2.clamp(0.0, side),
                y2.clamp(0.0, side),
            ];
            let (w, h) = (clipped[2] - clipped[0], clipped[3] - clipped[1]);
            let area_before = (x2 - x1) * (y2 - y1);
            let keep = w > 2.0
                && h > 2.0
                && w * h / (area_before + 1e-16) > 0.1
                && (w / (h + 1e-16)).max(h / (w + 1e-16)) < 100.0;
            keep.then_some(clipped)
        })
        .collect();
    View {
        size: s,
        pixels,
        boxes,
    }
}

fn bilinear(c: &Canvas, x: f32, y: f32) -> u8 {
    if x < -0.5 || y < -0.5 || x > c.width as f32 - 0.5 || y > c.height as f32 - 0.5 {
        return PAD;
    }
    let x = x.clamp(0.0, (c.width - 1) as f32);
    let y = y.clamp(0.0, (c.height - 1) as f32);
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(c.width - 1), (y0 + 1).min(c.height - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let p = |x: usize, y: usize| c.pixels[y * c.width + x] as f32;
    let top = p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx;
    let bottom = p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx;
    (top * (1.0 - fy) + bottom * fy).round() as u8
}

/// A training view of item `first`: a mosaic with three random others (with probability
/// `aug.mosaic` when `mosaic` is on), else the image alone; then scale, translate and flip.
pub fn training_view<R: Rng + ?Sized>(
    pool: &[(DetSample, Cached)],
    first: usize,
    s: usize,
    aug: &DetAugment,
    mosaic: bool,
    rng: &mut R,
) -> View {
    let canvas = if mosaic && rng.random::<f32>() < aug.mosaic {
        let pick = |rng: &mut R| &pool[rng.random_range(0..pool.len())].1;
        let items = [&pool[first].1, pick(rng), pick(rng), pick(rng)];
        mosaic_canvas(items, s, rng)
    } else {
        letterbox_canvas(&pool[first].1, s)
    };
    let mut view = affine(&canvas, s, aug, rng);
    if rng.random::<f32>() < aug.flip {
        for row in view.pixels.chunks_mut(s) {
            row.reverse();
        }
        for b in &mut view.boxes {
            *b = [s as f32 - b[2], b[1], s as f32 - b[0], b[3]];
        }
    }
    view
}

/// Views as a `[batch, 3, s, s]` buffer: grey to three channels, scaled to `[0, 1]`, then
/// normalized with `mean` and `std` by `fv_core::preprocess`'s function.
pub fn views_to_batch(views: &[View], mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let mut out = Vec::with_capacity(views.iter().map(|v| 3 * v.pixels.len()).sum());
    for v in views {
        let plane = v.pixels.iter().map(|&p| p as f32 / 255.0);
        fv_core::preprocess::normalize_into(plane, &mean, &std, &mut out);
    }
    out
}

/// An evaluation input prepared exactly as fv-edge prepares it (letterbox through fv-core),
/// with the geometry that maps boxes back to the displayed image.
pub fn eval_input(sample: &DetSample, spec: &InputSpec) -> Result<Preprocessed, LoadFailure> {
    let d = decode_file(&sample.path, &DecodeOptions::default()).map_err(|e| LoadFailure {
        id: sample.id.clone(),
        message: e.to_string(),
    })?;
    Ok(preprocess(&d.image, spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn square(w: usize, h: usize, b: Xyxy) -> Cached {
        let mut pixels = vec![0u8; w * h];
        for y in b[1] as usize..b[3] as usize {
            for x in b[0] as usize..b[2] as usize {
                pixels[y * w + x] = 255;
            }
        }
        Cached {
            width: w,
            height: h,
            pixels,
            boxes: vec![b],
        }
    }

    /// The boxes must follow the pixels through every transform: the bright square and its
    /// box stay together.
    #[test]
    fn boxes_follow_the_pixels_through_mosaic_affine_and_flip() {
        let pool: Vec<(DetSample, Cached)> = (0..4)
            .map(|i| {
                (
                    DetSample {
                        id: format!("{i}"),
                        path: PathBuf::new(),
                        boxes: vec![],
                        region: Region::Unknown,
                    },
                    square(64, 48, [10.0 + i as f32, 12.0, 30.0 + i as f32, 30.0]),
                )
            })
            .collect();
        let aug = DetAugment::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut checked = 0;
        for _ in 0..50 {
            let v = training_view(&pool, 0, 64, &aug, true, &mut rng);
            for b in &v.boxes {
                let (cx, cy) = (
                    ((b[0] + b[2]) / 2.0) as usize,
                    ((b[1] + b[3]) / 2.0) as usize,
                );
                assert!(
                    v.pixels[cy * 64 + cx] > 200,
                    "box {b:?} centre is not on the square"
                );
                checked += 1;
            }
        }
        assert!(checked > 20, "only {checked} boxes survived");
    }

    #[test]
    fn letterbox_without_augmentation_keeps_boxes_exact() {
        let img = square(64, 32, [8.0, 4.0, 24.0, 20.0]);
        let c = letterbox_canvas(&img, 64);
        assert_eq!(c.boxes, vec![[8.0, 20.0, 24.0, 36.0]]);
        assert_eq!(c.pixels[0], PAD);
        assert_eq!(c.pixels[21 * 64 + 10], 255);
    }
}
