//! The overlay PNG for the person at the unit: the image with fracture boxes (dashed for
//! `suspicious`, solid for `definite`, thin dotted cyan and labelled for a lower-confidence
//! `candidate`) and the probability and finding written on it.

use ab_glyph::{Font as _, FontRef, PxScale, ScaleFont as _};
use fv_core::imaging::XrayImage;
use fv_core::result::{Finding, Level, Localization, ResultMessage};
use image::{Rgb, RgbImage};

/// DejaVu Sans (free licence: trainer/assets/DejaVuSans.LICENSE), shared with the trainer.
static FONT: &[u8] = include_bytes!("../../../trainer/assets/DejaVuSans.ttf");

const RED: Rgb<u8> = Rgb([230, 40, 40]);
const AMBER: Rgb<u8> = Rgb([255, 170, 0]);
const GREEN: Rgb<u8> = Rgb([60, 200, 90]);
/// Not a finding colour: a candidate is a place to look, not a fracture the detector found.
const CYAN: Rgb<u8> = Rgb([0, 200, 230]);
const LILAC: Rgb<u8> = Rgb([190, 160, 255]);

fn colour(f: Option<Finding>) -> Rgb<u8> {
    match f {
        Some(Finding::Fracture) => RED,
        Some(Finding::Suspicious) => AMBER,
        Some(Finding::NotApplicable) => LILAC,
        _ => GREEN,
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// A rectangle outline `thick` pixels wide; dashed draws 3-on, 2-off segments of `thick·4`.
fn rect(img: &mut RgbImage, b: [i64; 4], thick: i64, dashed: bool, c: Rgb<u8>) {
    let [x1, y1, x2, y2] = b;
    let dash = thick * 4;
    let on = |t: i64| !dashed || (t / dash) % 5 < 3;
    for t in 0..thick {
        for x in x1..=x2 {
            if on(x - x1) {
                put(img, x, y1 + t, c);
                put(img, x, y2 - t, c);
            }
        }
        for y in y1..=y2 {
            if on(y - y1) {
                put(img, x1 + t, y, c);
                put(img, x2 - t, y, c);
            }
        }
    }
}

/// Writes `text` with its top-left at `(x, y)`, `size` pixels high, on a dark band.
fn text(img: &mut RgbImage, x: f32, y: f32, size: f32, s: &str, c: Rgb<u8>) {
    let font = FontRef::try_from_slice(FONT).expect("the embedded font parses");
    let scaled = font.as_scaled(PxScale::from(size));
    let width: f32 = s
        .chars()
        .map(|ch| scaled.h_advance(font.glyph_id(ch)))
        .sum();
    let pad = size * 0.3;
    for yy in (y - pad) as i64..(y + size + pad) as i64 {
        for xx in (x - pad) as i64..(x + width + pad) as i64 {
            put(img, xx, yy, Rgb([0, 0, 0]));
        }
    }
    let mut cursor = x;
    for ch in s.chars() {
        let id = font.glyph_id(ch);
        let glyph = id.with_scale_and_position(size, ab_glyph::point(cursor, y + scaled.ascent()));
        cursor += scaled.h_advance(id);
        if let Some(outline) = font.outline_glyph(glyph) {
            let bounds = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                let (px, py) = (
                    bounds.min.x as i64 + gx as i64,
                    bounds.min.y as i64 + gy as i64,
                );
                if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                    let bg = *img.get_pixel(px as u32, py as u32);
                    let mix =
                        |a: u8, b: u8| (a as f32 * (1.0 - coverage) + b as f32 * coverage) as u8;
                    img.put_pixel(
                        px as u32,
                        py as u32,
                        Rgb([mix(bg[0], c[0]), mix(bg[1], c[1]), mix(bg[2], c[2])]),
                    );
                }
            });
        }
    }
}

/// The overlay of one reading, drawn when first asked for: the PACS's marks and the local
/// PNG of a DICOM image are the same picture, drawn once.
pub struct Lazy<'a> {
    image: &'a XrayImage,
    message: &'a ResultMessage,
    drawn: std::cell::OnceCell<RgbImage>,
}

impl<'a> Lazy<'a> {
    /// The overlay of `message` on `image`, not yet drawn.
    pub fn new(image: &'a XrayImage, message: &'a ResultMessage) -> Self {
        Lazy {
            image,
            message,
            drawn: std::cell::OnceCell::new(),
        }
    }

    /// The picture, drawn on the first call.
    pub fn get(&self) -> &RgbImage {
        self.drawn.get_or_init(|| render(self.image, self.message))
    }
}

/// The overlay of `m` on `image`.
pub fn render(image: &XrayImage, m: &ResultMessage) -> RgbImage {
    let g = image.to_gray8();
    let mut img = RgbImage::from_fn(g.width(), g.height(), |x, y| {
        let v = g.get_pixel(x, y)[0];
        Rgb([v, v, v])
    });
    let short = g.width().min(g.height()) as f32;
    let thick = (short / 300.0).round().max(2.0) as i64;
    let size = (short / 24.0).max(14.0);
    for b in &m.boxes {
        let (c, width) = match b.level {
            Level::Definite => (RED, thick),
            Level::Suspicious => (AMBER, thick),
            Level::Candidate => (CYAN, (thick / 2).max(1)),
        };
        rect(
            &mut img,
            [b.x1 as i64, b.y1 as i64, b.x2 as i64, b.y2 as i64],
            width,
            b.level != Level::Definite,
            c,
        );
        if b.level == Level::Candidate {
            text(
                &mut img,
                b.x1,
                (b.y2 + size * 0.2).min(g.height() as f32 - size * 0.6),
                size * 0.5,
                &format!("look here? (low confidence {:.2})", b.score.get()),
                CYAN,
            );
        }
    }
    let line = match (m.fracture_probability, m.finding) {
        (Some(p), Some(f)) => format!(
            "P(fracture) {:.2}: {}{}",
            p.get(),
            match f {
                Finding::Fracture => "FRACTURE",
                Finding::Suspicious => "suspicious, second look",
                Finding::NoFracture => "no fracture found",
                Finding::NotApplicable => "not read",
            },
            {
                let found = m
                    .boxes
                    .iter()
                    .filter(|b| b.level != Level::Candidate)
                    .count();
                match (found, m.localization) {
                    (0, Some(Localization::Candidate)) => {
                        " (no box passed: one candidate region)".to_owned()
                    }
                    (0, Some(Localization::NotFound)) => {
                        " (no region found: read the whole image)".to_owned()
                    }
                    (0, _) => String::new(),
                    (n, _) => format!(" ({n} box{})", if n == 1 { "" } else { "es" }),
                }
            }
        ),
        (None, Some(Finding::NotApplicable)) => {
            "not read: outside the models' scope (not a limb radiograph they know)".to_owned()
        }
        _ => "not read".to_owned(),
    };
    text(
        &mut img,
        size * 0.5,
        size * 0.5,
        size,
        &line,
        colour(m.finding),
    );
    text(
        &mut img,
        size * 0.5,
        size * 2.0,
        size * 0.6,
        "Decision support only, not a diagnosis",
        Rgb([220, 220, 220]),
    );
    img
}

#[cfg(test)]
mod tests {
    use super::*;
    use fv_core::imaging::Gray8;
    use fv_core::result::{ResultBox, Source, SourceKind, Timing, RESULT_SCHEMA};
    use fv_core::Probability;

    #[test]
    fn definite_boxes_are_solid_and_suspicious_ones_dashed() {
        let image = XrayImage::from_gray8(Gray8::from_pixel(600, 600, image::Luma([0])));
        let b = |x1: f32, level| ResultBox {
            x1,
            y1: 300.0,
            x2: x1 + 200.0,
            y2: 500.0,
            score: Probability::new(0.9).unwrap(),
            level,
        };
        let m = ResultMessage {
            schema: RESULT_SCHEMA.into(),
            id: "x".into(),
            site: "s".into(),
            device: "d".into(),
            source: Source {
                kind: SourceKind::File,
                name: "x.png".into(),
            },
            study: None,
            captured_at: None,
            processed_at: "t".into(),
            fracture_probability: Some(Probability::new(0.9).unwrap()),
            finding: Some(Finding::Fracture),
            boxes: vec![b(50.0, Level::Definite), b(350.0, Level::Suspicious)],
            localization: Some(Localization::Boxes),
            scope: None,
            models: vec![],
            timing_ms: Timing::default(),
            error: None,
        };
        let img = render(&image, &m);
        // Along each box's bottom edge: all red for the solid one, gaps for the dashed one.
        let coloured = |x0: u32, c: Rgb<u8>| {
            (x0..x0 + 200)
                .filter(|&x| *img.get_pixel(x, 500) == c)
                .count()
        };
        assert_eq!(coloured(50, RED), 200);
        let dashed = coloured(350, AMBER);
        assert!(
            (100..=140).contains(&dashed),
            "{dashed} of 200 pixels drawn"
        );
        // The probability is written in the top-left corner, in red for a fracture.
        let text_red = (0..300)
            .flat_map(|x| (0..60).map(move |y| (x, y)))
            .filter(|&(x, y)| {
                let p = img.get_pixel(x, y);
                p[0] > 150 && p[1] < 100
            })
            .count();
        assert!(text_red > 100, "{text_red}");
    }
}
