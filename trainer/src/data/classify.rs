//! Classification data: FracAtlas images decoded and preprocessed once by fv-core (the same
//! code the edge runs), cached in memory as gray planes, augmented on the fly for training.
//!
//! Evaluation images are preprocessed exactly as at the edge: `fv_core::preprocess` to the
//! model's input size. Training images are cached somewhat larger and randomly cropped,
//! flipped and rotated (the study's augmentations); a run may add the exposure and
//! processing changes of another unit ([`Photometric`]) and bring its high-resolution
//! images to the scale of the rest (`load_planes_cached`'s `long_side`).

use super::fracatlas::FracAtlas;
use super::shift::Shift;
use fv_core::imaging::{decode_file, DecodeOptions};
use fv_core::preprocess::{preprocess, InputSpec, ResizeMode};
use rand::{Rng, RngExt};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// One image with its label.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// FracAtlas id.
    pub id: String,
    /// File.
    pub path: PathBuf,
    /// Fractured.
    pub label: bool,
    /// Its fracture boxes as fractions of the displayed width and height (x1, y1, x2, y2),
    /// for box supervision; empty for a non-fractured image and where the size is unknown.
    pub boxes: Vec<[f32; 4]>,
}

impl Sample {
    /// The samples of one split part, by index into `data.images`.
    pub fn from_indices(data: &FracAtlas, idx: &[usize]) -> Vec<Sample> {
        idx.iter()
            .map(|&i| {
                let r = &data.images[i];
                let boxes = match &r.header {
                    Ok(h) => {
                        let (w, h) = h.display_size();
                        let (w, h) = (w.max(1) as f32, h.max(1) as f32);
                        r.boxes
                            .iter()
                            .map(|b| [b.x1 / w, b.y1 / h, b.x2 / w, b.y2 / h])
                            .collect()
                    }
                    Err(_) => Vec::new(),
                };
                Sample {
                    id: r.id.clone(),
                    path: r.path.clone(),
                    label: r.fractured,
                    boxes,
                }
            })
            .collect()
    }
}

/// A gray plane in `[0, 1]`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Plane {
    /// Side length (planes are square).
    pub size: usize,
    /// Values.
    pub data: Vec<f32>,
}

/// An image that failed to load, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadFailure {
    /// The image id.
    pub id: String,
    /// The decoder's message (names the file).
    pub message: String,
}

/// Decodes and resizes every sample to a `size`×`size` plane in `[0, 1]`, in parallel.
/// Images that fail are returned apart, never silently replaced.
pub fn load_planes(samples: &[Sample], size: u32) -> (Vec<(Sample, Plane)>, Vec<LoadFailure>) {
    load_planes_from(samples, size, None)
}

/// [`load_planes`], an image whose long side exceeds `long_side` first resampled to it
/// (the shift suite's [`Shift::LongSide`]).
fn load_planes_from(
    samples: &[Sample],
    size: u32,
    long_side: Option<u32>,
) -> (Vec<(Sample, Plane)>, Vec<LoadFailure>) {
    let spec = InputSpec {
        channels: 1,
        mean: vec![0.0],
        std: vec![1.0],
        ..InputSpec::imagenet(size, size, ResizeMode::Stretch)
    };
    let results: Vec<Result<(Sample, Plane), LoadFailure>> = samples
        .par_iter()
        .map(|s| {
            let d = decode_file(&s.path, &DecodeOptions::default()).map_err(|e| LoadFailure {
                id: s.id.clone(),
                message: e.to_string(),
            })?;
            let image = match long_side {
                Some(n) if d.image.width().max(d.image.height()) > n => {
                    Shift::LongSide(n).apply(&d.image, 0)
                }
                _ => d.image,
            };
            let p = preprocess(&image, &spec);
            Ok((
                s.clone(),
                Plane {
                    size: size as usize,
                    data: p.tensor.data,
                },
            ))
        })
        .collect();
    super::partition(results)
}

/// [`load_planes`] through an on-disk cache under `dir`: a plane is decoded from its
/// 2304×2880 JPEG once per run and read back (16 bits a pixel) on every later start.
/// Planes are always quantized to 16 bits, fresh or cached, so that a resumed run sees
/// exactly the pixels an uninterrupted one saw. With `long_side`, an image whose long side
/// exceeds it is resampled to it first: FracAtlas' high-resolution images are all in
/// training and skew positive, so at their own scale their texture alone predicts the label.
pub fn load_planes_cached(
    samples: &[Sample],
    size: u32,
    long_side: Option<u32>,
    dir: &Path,
) -> (Vec<(Sample, Plane)>, Vec<LoadFailure>) {
    let dir = match long_side {
        None => dir.join(size.to_string()),
        Some(n) => dir.join(format!("{size}-long{n}")),
    };
    let n = size as usize * size as usize;
    let file_of = |s: &Sample| {
        let len = std::fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0);
        dir.join(format!("{}-{len}.u16", s.id))
    };
    let read = |s: &Sample| -> Option<Plane> {
        let bytes = std::fs::read(file_of(s)).ok()?;
        (bytes.len() == 2 * n).then(|| Plane {
            size: size as usize,
            data: bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as f32 / 65535.0)
                .collect(),
        })
    };
    let cached: Vec<Option<Plane>> = samples.par_iter().map(read).collect();
    let missing: Vec<Sample> = samples
        .iter()
        .zip(&cached)
        .filter(|(_, c)| c.is_none())
        .map(|(s, _)| s.clone())
        .collect();
    let (fresh, failures) = load_planes_from(&missing, size, long_side);
    if !fresh.is_empty() {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!("{}: cannot cache planes: {e}", dir.display());
        }
    }
    let mut fresh: std::collections::HashMap<String, Plane> = fresh
        .into_par_iter()
        .map(|(s, p)| {
            let q: Vec<u16> = p
                .data
                .iter()
                .map(|v| (v.clamp(0.0, 1.0) * 65535.0).round() as u16)
                .collect();
            let bytes: Vec<u8> = q.iter().flat_map(|v| v.to_le_bytes()).collect();
            let path = file_of(&s);
            let tmp = path.with_extension("tmp");
            if let Err(e) = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path))
            {
                tracing::warn!("{}: cannot cache plane: {e}", path.display());
            }
            let data = q.iter().map(|&v| v as f32 / 65535.0).collect();
            (s.id, Plane { size: p.size, data })
        })
        .collect();
    let loaded = samples
        .iter()
        .zip(cached)
        .filter_map(|(s, c)| c.or_else(|| fresh.remove(&s.id)).map(|p| (s.clone(), p)))
        .collect();
    (loaded, failures)
}

/// Training augmentation: random resized crop, horizontal flip, small rotation.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Smallest crop side as a fraction of the image side.
    pub min_crop: f32,
    /// Largest rotation either way, in degrees.
    pub max_rotation_deg: f32,
    /// Probability of a horizontal flip.
    pub flip: f32,
    /// Exposure and processing changes (none in runs that do not say).
    #[serde(default)]
    pub photometric: Option<Photometric>,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            min_crop: 0.8,
            max_rotation_deg: 10.0,
            flip: 0.5,
            photometric: None,
        }
    }
}

/// What another unit's detector and processing do to the same anatomy: the photometric
/// kinds of the shift suite (`data::shift`), each drawn per view with probability `p` at a
/// random strength up to (or within) the suite's.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Photometric {
    /// Probability that each change is applied to a view.
    pub p: f32,
    /// Gamma range, drawn log-uniformly.
    pub gamma: (f32, f32),
    /// Contrast factor range about the view's mean.
    pub contrast: (f32, f32),
    /// Largest unsharp-masking amount (`v + a·(v − blur(v))`, blur σ 1–3 px).
    pub unsharp: f32,
    /// Largest Gaussian noise standard deviation, on the 0–255 scale.
    pub noise: f32,
    /// Fewest grey-level bits kept.
    pub min_bits: u8,
}

impl Default for Photometric {
    /// Each change a third of the time, up to a little beyond the suite's strengths.
    fn default() -> Self {
        Photometric {
            p: 0.3,
            gamma: (0.55, 1.8),
            contrast: (0.55, 1.5),
            unsharp: 2.0,
            noise: 12.0,
            min_bits: 5,
        }
    }
}

impl Photometric {
    /// Applies the drawn changes to `view` in place (values in `[0, 1]`).
    pub fn apply<R: Rng + ?Sized>(&self, view: &mut Plane, rng: &mut R) {
        let n = view.size;
        if rng.random::<f32>() < self.p {
            let (lo, hi) = (self.gamma.0.ln(), self.gamma.1.ln());
            let g = rng.random_range(lo..=hi).exp();
            view.data.iter_mut().for_each(|v| *v = v.max(0.0).powf(g));
        }
        if rng.random::<f32>() < self.p {
            let c = rng.random_range(self.contrast.0..=self.contrast.1);
            let mean = view.data.iter().sum::<f32>() / view.data.len().max(1) as f32;
            view.data
                .iter_mut()
                .for_each(|v| *v = mean + c * (*v - mean));
        }
        if rng.random::<f32>() < self.p {
            let a = rng.random_range(0.0..=self.unsharp);
            let sigma = rng.random_range(1.0..=3.0);
            let blurred = gaussian_blur(&view.data, n, sigma);
            for (v, b) in view.data.iter_mut().zip(blurred) {
                *v += a * (*v - b);
            }
        }
        if rng.random::<f32>() < self.p {
            let sigma = rng.random_range(0.0..=self.noise) / 255.0;
            for v in view.data.iter_mut() {
                let (u1, u2): (f32, f32) = (rng.random::<f32>().max(1e-7), rng.random());
                *v += sigma * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
            }
        }
        view.data.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
        if rng.random::<f32>() < self.p {
            let bits = rng.random_range(self.min_bits.clamp(1, 8)..=7);
            let levels = f32::from(1u16 << bits);
            view.data
                .iter_mut()
                .for_each(|v| *v = (*v * levels).floor().min(levels - 1.0) / levels);
        }
    }
}

/// A separable Gaussian blur of an `n`×`n` plane, edges clamped.
fn gaussian_blur(data: &[f32], n: usize, sigma: f32) -> Vec<f32> {
    let r = (3.0 * sigma).ceil() as isize;
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|w| w / total).collect();
    let last = n as isize - 1;
    let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
        let mut out = vec![0.0; src.len()];
        for y in 0..n {
            for x in 0..n {
                let mut acc = 0.0;
                for (j, w) in k.iter().enumerate() {
                    let d = j as isize - r;
                    let (sx, sy) = if horizontal {
                        ((x as isize + d).clamp(0, last) as usize, y)
                    } else {
                        (x, (y as isize + d).clamp(0, last) as usize)
                    };
                    acc += w * src[sy * n + sx];
                }
                out[y * n + x] = acc;
            }
        }
        out
    };
    pass(&pass(data, true), false)
}

impl Augment {
    /// The side to cache images at so that a random crop of `out` pixels keeps detail.
    pub fn cache_size(&self, out: u32) -> u32 {
        (out as f32 / self.min_crop.clamp(0.5, 1.0)).round() as u32
    }

    /// Samples a random view of `src` at `out`×`out`, bilinear, black outside the image
    /// (radiographs are dark around the anatomy).
    pub fn apply<R: Rng + ?Sized>(&self, src: &Plane, out: usize, rng: &mut R) -> Plane {
        self.view(src, out, rng).0
    }

    /// [`Augment::apply`] and where the view came from, to carry boxes along.
    pub fn view<R: Rng + ?Sized>(&self, src: &Plane, out: usize, rng: &mut R) -> (Plane, View) {
        let crop = rng.random_range(self.min_crop.min(1.0)..=1.0);
        let angle = rng
            .random_range(-self.max_rotation_deg..=self.max_rotation_deg)
            .to_radians();
        let flip = rng.random::<f32>() < self.flip;
        let n = src.size as f32;
        let side = crop * n;
        // The crop's centre may sit anywhere that keeps the crop inside the image.
        let slack = (n - side) / 2.0;
        let cx = n / 2.0 + rng.random_range(-slack..=slack);
        let cy = n / 2.0 + rng.random_range(-slack..=slack);
        let (sin, cos) = angle.sin_cos();
        let geometry = View {
            out: out as f32,
            src: n,
            cx,
            cy,
            scale: side / out as f32,
            sin,
            cos,
            flip,
        };
        let mut data = vec![0.0; out * out];
        for y in 0..out {
            for x in 0..out {
                let (sx, sy) = geometry.source(x as f32 + 0.5, y as f32 + 0.5);
                data[y * out + x] = bilinear(src, sx - 0.5, sy - 0.5);
            }
        }
        let mut view = Plane { size: out, data };
        if let Some(p) = &self.photometric {
            p.apply(&mut view, rng);
        }
        (view, geometry)
    }
}

/// Where a training view came from: the crop, rotation and flip [`Augment::view`] drew.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct View {
    out: f32,
    src: f32,
    cx: f32,
    cy: f32,
    scale: f32,
    sin: f32,
    cos: f32,
    flip: bool,
}

impl View {
    /// The source plane's point (in its pixels) that the view's point `(x, y)` shows.
    fn source(&self, x: f32, y: f32) -> (f32, f32) {
        let mut u = (x - self.out / 2.0) * self.scale;
        let v = (y - self.out / 2.0) * self.scale;
        if self.flip {
            u = -u;
        }
        (
            self.cx + u * self.cos - v * self.sin,
            self.cy + u * self.sin + v * self.cos,
        )
    }

    /// The box-supervision target of a `grid`×`grid` division of the view: 1 for a cell
    /// that shows any part of a box (`boxes` as fractions of the image, which the source
    /// plane stretches to a square), 0 elsewhere. Each cell is probed at 4×4 points.
    pub fn cells(&self, boxes: &[[f32; 4]], grid: usize) -> Vec<f32> {
        const PROBES: usize = 4;
        let cell = self.out / grid as f32;
        let inside = |(sx, sy): (f32, f32)| {
            let (fx, fy) = (sx / self.src, sy / self.src);
            boxes
                .iter()
                .any(|b| fx >= b[0] && fx <= b[2] && fy >= b[1] && fy <= b[3])
        };
        let mut out = vec![0.0; grid * grid];
        for gy in 0..grid {
            for gx in 0..grid {
                let hit = (0..PROBES * PROBES).any(|k| {
                    let px = (gx as f32 + ((k % PROBES) as f32 + 0.5) / PROBES as f32) * cell;
                    let py = (gy as f32 + ((k / PROBES) as f32 + 0.5) / PROBES as f32) * cell;
                    inside(self.source(px, py))
                });
                out[gy * grid + gx] = f32::from(u8::from(hit));
            }
        }
        out
    }
}

fn bilinear(p: &Plane, x: f32, y: f32) -> f32 {
    let n = p.size as isize;
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let at = |xi: isize, yi: isize| -> f32 {
        if xi < 0 || yi < 0 || xi >= n || yi >= n {
            0.0
        } else {
            p.data[(yi * n + xi) as usize]
        }
    };
    let (xi, yi) = (x0 as isize, y0 as isize);
    let top = at(xi, yi) * (1.0 - fx) + at(xi + 1, yi) * fx;
    let bottom = at(xi, yi + 1) * (1.0 - fx) + at(xi + 1, yi + 1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// Writes `planes` as a normalized `[batch, 3, size, size]` buffer: gray replicated to the
/// three channels, each normalized with its mean and std by `fv_core::preprocess`'s function.
pub fn to_batch(planes: &[&Plane], mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let mut out = Vec::with_capacity(planes.iter().map(|p| 3 * p.data.len()).sum());
    for p in planes {
        fv_core::preprocess::normalize_into(p.data.iter().copied(), &mean, &std, &mut out);
    }
    out
}

/// [`to_batch`] as a `[batch, 3, size, size]` tensor on `device`.
pub fn batch_tensor(
    planes: &[&Plane],
    mean: [f32; 3],
    std: [f32; 3],
    device: &burn::tensor::Device,
) -> burn::tensor::Tensor<4> {
    let s = planes.first().map_or(1, |p| p.size);
    burn::tensor::Tensor::from_data(
        burn::tensor::TensorData::new(to_batch(planes, mean, std), [planes.len(), 3, s, s]),
        device,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// No crop, rotation, flip or photometric change.
    const IDENTITY: Augment = Augment {
        min_crop: 1.0,
        max_rotation_deg: 0.0,
        flip: 0.0,
        photometric: None,
    };

    #[test]
    fn identity_view_reproduces_the_image() {
        let src = Plane {
            size: 8,
            data: (0..64).map(|i| i as f32 / 64.0).collect(),
        };
        let none = IDENTITY;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let out = none.apply(&src, 8, &mut rng);
        for (a, b) in out.data.iter().zip(&src.data) {
            assert!((a - b).abs() < 1e-5);
        }
        let flipped = Augment { flip: 1.0, ..none }.apply(&src, 8, &mut rng);
        assert!((flipped.data[0] - src.data[7]).abs() < 1e-5);
    }

    #[test]
    fn box_cells_follow_the_view() {
        let src = Plane {
            size: 64,
            data: vec![0.5; 64 * 64],
        };
        let none = IDENTITY;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        // A box inside the top-left quarter's top-left quarter.
        let boxes = [[0.05, 0.1, 0.2, 0.2]];
        let (_, view) = none.view(&src, 32, &mut rng);
        let cells = view.cells(&boxes, 4);
        assert_eq!(cells.iter().sum::<f32>(), 1.0, "{cells:?}");
        assert_eq!(cells[0], 1.0);
        let (_, view) = Augment { flip: 1.0, ..none }.view(&src, 32, &mut rng);
        let cells = view.cells(&boxes, 4);
        assert_eq!(
            (cells[3], cells.iter().sum::<f32>()),
            (1.0, 1.0),
            "mirrored: {cells:?}"
        );
        assert!(view.cells(&[], 4).iter().all(|&c| c == 0.0));
        // A crop of the middle half: the box's corner region is out of view.
        let (_, view) = Augment {
            min_crop: 0.5,
            ..none
        }
        .view(&src, 32, &mut rand_chacha::ChaCha8Rng::seed_from_u64(7));
        let half = view.cells(&[[0.4, 0.4, 0.6, 0.6]], 4);
        assert!(
            half.iter().sum::<f32>() >= 1.0,
            "a central box stays in view: {half:?}"
        );
    }

    #[test]
    fn photometric_changes_stay_in_range_and_replay_from_the_seed() {
        let src = Plane {
            size: 32,
            data: (0..1024)
                .map(|i| ((i * 37) % 1024) as f32 / 1024.0)
                .collect(),
        };
        let all = Photometric {
            p: 1.0,
            ..Photometric::default()
        };
        let view = |seed| {
            let mut v = src.clone();
            all.apply(&mut v, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            v
        };
        let a = view(3);
        assert_ne!(a, src);
        assert_eq!(a, view(3));
        assert!(a.data.iter().all(|v| (0.0..=1.0).contains(v)));
        // Every change applied, bit depth last: at most 128 grey levels remain.
        let mut levels: Vec<u32> = a.data.iter().map(|v| (v * 65536.0) as u32).collect();
        levels.sort_unstable();
        levels.dedup();
        assert!(levels.len() <= 128, "{} levels", levels.len());
        let none = Photometric { p: 0.0, ..all };
        let mut b = src.clone();
        none.apply(&mut b, &mut rand_chacha::ChaCha8Rng::seed_from_u64(3));
        assert_eq!(b, src);
    }

    #[test]
    fn long_side_brings_large_images_to_the_scale_of_the_rest() {
        use fv_core::imaging::Gray8;
        let dir = tempfile::tempdir().unwrap();
        // Fine stripes survive a direct resize to 16 px differently from a resize through
        // 40 px: the plane shows which path the image took.
        let sample = |name: &str, w: u32, h: u32| {
            let path = dir.path().join(name);
            Gray8::from_fn(w, h, |x, _| image::Luma([if x % 2 == 0 { 250 } else { 5 }]))
                .save(&path)
                .unwrap();
            Sample {
                id: name.into(),
                path,
                label: false,
                boxes: Vec::new(),
            }
        };
        let big = sample("big.png", 400, 300);
        let small = sample("small.png", 30, 20);
        let cache = dir.path().join("cache");
        let (direct, f) = load_planes_cached(&[big.clone(), small.clone()], 16, None, &cache);
        assert!(f.is_empty());
        let (scaled, f) = load_planes_cached(&[big, small], 16, Some(40), &cache);
        assert!(f.is_empty());
        assert_ne!(
            direct[0].1, scaled[0].1,
            "the large image was not resampled"
        );
        let resampled = Shift::LongSide(40).apply(
            &fv_core::imaging::decode_file(&dir.path().join("big.png"), &Default::default())
                .unwrap()
                .image,
            0,
        );
        assert_eq!(resampled.width(), 40);
        // An image already within the limit is read as it is.
        assert_eq!(direct[1].1, scaled[1].1);
        // The two settings cache apart.
        assert!(cache.join("16").is_dir() && cache.join("16-long40").is_dir());
    }

    #[test]
    fn batch_matches_core_normalization() {
        // The edge's path: an 8-bit grey pixel through fv-core's preprocess.
        use fv_core::imaging::{Gray8, XrayImage};
        use fv_core::preprocess::{preprocess, InputSpec, ResizeMode};
        let spec = InputSpec::imagenet(2, 2, ResizeMode::Stretch);
        let img = XrayImage::from_gray8(Gray8::from_pixel(2, 2, image::Luma([77])));
        let edge = preprocess(&img, &spec).tensor.data;
        let p = Plane {
            size: 2,
            data: vec![77.0 / 255.0; 4],
        };
        let mean: [f32; 3] = spec.mean.clone().try_into().unwrap();
        let std: [f32; 3] = spec.std.clone().try_into().unwrap();
        let b = to_batch(&[&p], mean, std);
        assert_eq!(b.len(), edge.len());
        for (x, y) in b.iter().zip(&edge) {
            assert!((x - y).abs() < 1e-6, "{b:?} vs {edge:?}");
        }
    }
}
