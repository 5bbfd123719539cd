//! Classification data: FracAtlas images decoded and preprocessed once by fv-core (the same
//! code the edge runs), cached in memory as gray planes, augmented on the fly for training.
//!
//! Evaluation images are preprocessed exactly as at the edge: `fv_core::preprocess` to the
//! model's input size. Training images are cached somewhat larger and randomly cropped,
//! flipped and rotated; there is no colour jitter or blur (the study's augmentations).

use super::fracatlas::FracAtlas;
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
}

impl Sample {
    /// The samples of one split part, by index into `data.images`.
    pub fn from_indices(data: &FracAtlas, idx: &[usize]) -> Vec<Sample> {
        idx.iter()
            .map(|&i| {
                let r = &data.images[i];
                Sample {
                    id: r.id.clone(),
                    path: r.path.clone(),
                    label: r.fractured,
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
            let p = preprocess(&d.image, &spec);
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
/// exactly the pixels an uninterrupted one saw.
pub fn load_planes_cached(
    samples: &[Sample],
    size: u32,
    dir: &Path,
) -> (Vec<(Sample, Plane)>, Vec<LoadFailure>) {
    let dir = dir.join(size.to_string());
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
    let (fresh, failures) = load_planes(&missing, size);
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
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            min_crop: 0.8,
            max_rotation_deg: 10.0,
            flip: 0.5,
        }
    }
}

impl Augment {
    /// The side to cache images at so that a random crop of `out` pixels keeps detail.
    pub fn cache_size(&self, out: u32) -> u32 {
        (out as f32 / self.min_crop.clamp(0.5, 1.0)).round() as u32
    }

    /// Samples a random view of `src` at `out`×`out`, bilinear, black outside the image
    /// (radiographs are dark around the anatomy).
    pub fn apply<R: Rng + ?Sized>(&self, src: &Plane, out: usize, rng: &mut R) -> Plane {
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
        let scale = side / out as f32;
        let mut data = vec![0.0; out * out];
        for y in 0..out {
            for x in 0..out {
                // Output pixel centre, relative to the output centre, in source pixels.
                let mut u = (x as f32 + 0.5 - out as f32 / 2.0) * scale;
                let v = (y as f32 + 0.5 - out as f32 / 2.0) * scale;
                if flip {
                    u = -u;
                }
                let sx = cx + u * cos - v * sin - 0.5;
                let sy = cy + u * sin + v * cos - 0.5;
                data[y * out + x] = bilinear(src, sx, sy);
            }
        }
        Plane { size: out, data }
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

    #[test]
    fn identity_view_reproduces_the_image() {
        let src = Plane {
            size: 8,
            data: (0..64).map(|i| i as f32 / 64.0).collect(),
        };
        let none = Augment {
            min_crop: 1.0,
            max_rotation_deg: 0.0,
            flip: 0.0,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let out = none.apply(&src, 8, &mut rng);
        for (a, b) in out.data.iter().zip(&src.data) {
            assert!((a - b).abs() < 1e-5);
        }
        let flipped = Augment { flip: 1.0, ..none }.apply(&src, 8, &mut rng);
        assert!((flipped.data[0] - src.data[7]).abs() < 1e-5);
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
