//! The changes a fleet brings to a radiograph: another unit's exposure and processing, another
//! framing, another resolution. Each is a fixed, seeded transform of a decoded image, so that a
//! figure measured under it can be measured again.

use super::classify::Photometric;
use fv_core::imaging::{Gray8, XrayImage};
use image::imageops::{self, FilterType};
use image::Luma;
use rand::{Rng, RngExt as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

/// One change, with its strength.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shift {
    /// `v ↦ v^γ` on the 0–1 scale.
    Gamma(f32),
    /// Contrast scaled about the image's mean.
    Contrast(f32),
    /// Unsharp masking (edge enhancement): `v + a·(v − blur₃(v))`.
    Unsharp(f32),
    /// Gaussian noise of this standard deviation, 0–255 scale.
    Noise(f32),
    /// Grey levels kept at this many bits.
    Bits(u8),
    /// The same picture delivered at this many bits stored, as a DICOM unit sends it: level
    /// `v` as `round(v · (2^b − 1) / 255)`.
    Depth(u8),
    /// Rotated about the centre by these degrees, corners black.
    Rotate(f32),
    /// The central part, this share of each side.
    Crop(f32),
    /// A black border of this share of the long side on every side.
    Border(f32),
    /// A side marker and a text strip burned in, white.
    Burned,
    /// Resampled so that the long side has this many pixels.
    LongSide(u32),
}

impl Shift {
    /// The suite, one of each kind at a strength another unit plausibly shows.
    pub const SUITE: [Shift; 14] = [
        Shift::Gamma(0.6),
        Shift::Gamma(1.6),
        Shift::Contrast(0.6),
        Shift::Contrast(1.4),
        Shift::Unsharp(1.5),
        Shift::Noise(8.0),
        Shift::Bits(6),
        Shift::Depth(12),
        Shift::Rotate(12.0),
        Shift::Crop(0.75),
        Shift::Border(0.08),
        Shift::Burned,
        Shift::LongSide(1500),
        Shift::LongSide(3000),
    ];

    /// One photometric change drawn as training's augmentation draws them: a kind chosen
    /// uniformly among gamma, contrast, unsharp masking, noise and bit depth, its strength
    /// within `p`'s ranges.
    pub fn random_photometric<R: Rng + ?Sized>(p: &Photometric, rng: &mut R) -> Shift {
        match rng.random_range(0..5) {
            0 => Shift::Gamma(rng.random_range(p.gamma.0.ln()..=p.gamma.1.ln()).exp()),
            1 => Shift::Contrast(rng.random_range(p.contrast.0..=p.contrast.1)),
            2 => Shift::Unsharp(rng.random_range(0.0..=p.unsharp)),
            3 => Shift::Noise(rng.random_range(0.0..=p.noise)),
            _ => Shift::Bits(rng.random_range(p.min_bits.clamp(1, 8)..=7)),
        }
    }

    /// Its name in reports, e.g. `gamma-0.6`.
    pub fn name(&self) -> String {
        match self {
            Shift::Gamma(g) => format!("gamma-{g}"),
            Shift::Contrast(c) => format!("contrast-{c}"),
            Shift::Unsharp(a) => format!("unsharp-{a}"),
            Shift::Noise(s) => format!("noise-{s}"),
            Shift::Bits(b) => format!("bits-{b}"),
            Shift::Depth(b) => format!("depth-{b}"),
            Shift::Rotate(d) => format!("rotate-{d}"),
            Shift::Crop(c) => format!("crop-{c}"),
            Shift::Border(b) => format!("border-{b}"),
            Shift::Burned => "burned-text".into(),
            Shift::LongSide(n) => format!("long-side-{n}"),
        }
    }

    /// `image` under this change; `seed` fixes the noise.
    pub fn apply(&self, image: &XrayImage, seed: u64) -> XrayImage {
        let g = image.to_gray8();
        let (w, h) = g.dimensions();
        let out: Gray8 = match *self {
            Shift::Gamma(gamma) => map(&g, |v| 255.0 * (v / 255.0).powf(gamma)),
            Shift::Contrast(c) => {
                let mean = g.pixels().map(|p| f32::from(p.0[0])).sum::<f32>() / (w * h) as f32;
                map(&g, |v| mean + c * (v - mean))
            }
            Shift::Unsharp(a) => {
                let blurred = imageops::blur(&g, 3.0);
                Gray8::from_fn(w, h, |x, y| {
                    let v = f32::from(g.get_pixel(x, y).0[0]);
                    let b = f32::from(blurred.get_pixel(x, y).0[0]);
                    Luma([clamp(v + a * (v - b))])
                })
            }
            Shift::Noise(sigma) => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                map(&g, |v| {
                    // Box–Muller.
                    let (u1, u2): (f32, f32) = (rng.random::<f32>().max(1e-7), rng.random());
                    let n = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
                    v + sigma * n
                })
            }
            Shift::Bits(bits) => {
                let step = f32::from(1u16 << (8 - bits.min(8)));
                map(&g, |v| (v / step).floor() * step)
            }
            Shift::Depth(bits) => return image.widened(bits),
            Shift::Rotate(deg) => rotate(&g, deg.to_radians()),
            Shift::Crop(share) => {
                let (cw, ch) = ((w as f32 * share) as u32, (h as f32 * share) as u32);
                imageops::crop_imm(&g, (w - cw) / 2, (h - ch) / 2, cw.max(1), ch.max(1)).to_image()
            }
            Shift::Border(share) => {
                let b = (w.max(h) as f32 * share) as u32;
                let mut out = Gray8::new(w + 2 * b, h + 2 * b);
                imageops::replace(&mut out, &g, i64::from(b), i64::from(b));
                out
            }
            Shift::Burned => {
                let mut out = g.clone();
                let s = (w.min(h) / 12).max(4);
                // An "R" side marker: a solid block with a notch, top left.
                fill(&mut out, s / 2, s / 2, s, s * 3 / 2, 255);
                fill(&mut out, s / 2 + s / 3, s / 2 + s / 3, s / 3, s / 3, 0);
                // A strip of text-like marks along the bottom.
                let y = h.saturating_sub(s);
                for i in 0..(w / (s / 2).max(1)).saturating_sub(2) {
                    if i % 5 != 4 {
                        fill(&mut out, s / 2 + i * s / 2, y, s / 3, s / 2, 230);
                    }
                }
                out
            }
            Shift::LongSide(n) => {
                let scale = n as f32 / w.max(h) as f32;
                let (nw, nh) = (
                    ((w as f32 * scale).round() as u32).max(1),
                    ((h as f32 * scale).round() as u32).max(1),
                );
                imageops::resize(&g, nw, nh, FilterType::Triangle)
            }
        };
        XrayImage::from_gray8(out)
    }
}

fn clamp(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

fn map(g: &Gray8, mut f: impl FnMut(f32) -> f32) -> Gray8 {
    let mut out = g.clone();
    for p in out.pixels_mut() {
        p.0[0] = clamp(f(f32::from(p.0[0])));
    }
    out
}

fn fill(g: &mut Gray8, x: u32, y: u32, w: u32, h: u32, v: u8) {
    for yy in y..(y + h).min(g.height()) {
        for xx in x..(x + w).min(g.width()) {
            g.put_pixel(xx, yy, Luma([v]));
        }
    }
}

/// Bilinear rotation about the centre, same size, black outside.
fn rotate(g: &Gray8, theta: f32) -> Gray8 {
    let (w, h) = g.dimensions();
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let (s, c) = theta.sin_cos();
    Gray8::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
        let (sx, sy) = (c * dx + s * dy + cx - 0.5, -s * dx + c * dy + cy - 0.5);
        if sx < 0.0 || sy < 0.0 || sx > (w - 1) as f32 || sy > (h - 1) as f32 {
            return Luma([0]);
        }
        let (x0, y0) = (sx.floor() as u32, sy.floor() as u32);
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
        let p = |x, y| f32::from(g.get_pixel(x, y).0[0]);
        let top = p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx;
        let bottom = p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx;
        Luma([clamp(top * (1.0 - fy) + bottom * fy)])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fv_core::imaging::GrayPixels;

    #[test]
    fn each_shift_changes_the_image_and_keeps_it_decodable() {
        let g = Gray8::from_fn(60, 40, |x, y| Luma([((x * 3 + y * 2) % 200 + 20) as u8]));
        let image = XrayImage::from_gray8(g.clone());
        for s in Shift::SUITE {
            if let Shift::Depth(bits) = s {
                // The picture is the same; only how deep it arrives changes.
                let deep = s.apply(&image, 7);
                assert_eq!(deep.significant_bits(), bits);
                assert!(matches!(deep.pixels(), GrayPixels::U16(_)));
                assert_eq!(deep.to_gray8(), g);
                continue;
            }
            let out = s.apply(&image, 7).to_gray8();
            assert!(out.width() > 0 && out.height() > 0, "{}", s.name());
            assert_ne!(out, g, "{} left the image as it was", s.name());
            // Seeded: the same change twice is the same image.
            assert_eq!(out, s.apply(&image, 7).to_gray8(), "{}", s.name());
        }
        assert_eq!(Shift::LongSide(3000).apply(&image, 0).width(), 3000);
        assert_eq!(Shift::Border(0.1).apply(&image, 0).width(), 72);
    }

    #[test]
    fn random_photometric_changes_stay_within_training_ranges() {
        let p = Photometric::default();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut kinds = std::collections::HashSet::new();
        for _ in 0..200 {
            let s = Shift::random_photometric(&p, &mut rng);
            let ok = match s {
                Shift::Gamma(g) => (p.gamma.0..=p.gamma.1).contains(&g),
                Shift::Contrast(c) => (p.contrast.0..=p.contrast.1).contains(&c),
                Shift::Unsharp(a) => (0.0..=p.unsharp).contains(&a),
                Shift::Noise(n) => (0.0..=p.noise).contains(&n),
                Shift::Bits(b) => (p.min_bits..=7).contains(&b),
                _ => false,
            };
            assert!(ok, "{s:?}");
            kinds.insert(std::mem::discriminant(&s));
        }
        assert_eq!(kinds.len(), 5);
    }
}
