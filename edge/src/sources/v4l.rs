//! V4L2 frame grabbers (a portable unit's video output captured by a USB grabber): frame
//! formats to grayscale, and the trigger that decides which frames to read.
//!
//! The conversions and the trigger are plain functions, always built and unit-tested; the
//! capture loop needs the `v4l` cargo feature (default; its build runs bindgen, so it needs
//! libclang) and a `/dev/video*` device.

use crate::sources::input_error::InputError;
use fv_core::imaging::{decode_bytes, DecodeOptions, Gray16, Gray8, XrayImage};
use serde::{Deserialize, Serialize};

/// Pixel formats read from a grabber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FrameFormat {
    /// 8-bit gray.
    Grey,
    /// 16-bit gray, little endian.
    Y16,
    /// YUV 4:2:2 packed (Y0 U Y1 V): the luma is the picture.
    Yuyv,
    /// Motion JPEG: each frame a JPEG.
    Mjpg,
}

impl FrameFormat {
    /// The V4L2 FourCC.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            FrameFormat::Grey => *b"GREY",
            FrameFormat::Y16 => *b"Y16 ",
            FrameFormat::Yuyv => *b"YUYV",
            FrameFormat::Mjpg => *b"MJPG",
        }
    }
}

fn short(name: &str, what: &str, got: usize, want: usize) -> InputError {
    InputError {
        code: "truncated",
        message: format!(
            "{name}: {what} frame of {got} bytes, expected {want}; the grabber dropped data"
        ),
    }
}

/// One captured frame to a grayscale image. `name` names the frame in errors.
pub fn frame_to_image(
    format: FrameFormat,
    width: u32,
    height: u32,
    bytes: &[u8],
    name: &str,
) -> Result<XrayImage, InputError> {
    let n = width as usize * height as usize;
    match format {
        FrameFormat::Grey => {
            let data = bytes
                .get(..n)
                .ok_or_else(|| short(name, "GREY", bytes.len(), n))?;
            Ok(XrayImage::from_gray8(
                Gray8::from_raw(width, height, data.to_vec()).expect("size checked"),
            ))
        }
        FrameFormat::Y16 => {
            let data = bytes
                .get(..2 * n)
                .ok_or_else(|| short(name, "Y16", bytes.len(), 2 * n))?;
            let px = data
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            Ok(XrayImage::from_gray16(
                Gray16::from_raw(width, height, px).expect("size checked"),
                16,
            ))
        }
        FrameFormat::Yuyv => {
            let data = bytes
                .get(..2 * n)
                .ok_or_else(|| short(name, "YUYV", bytes.len(), 2 * n))?;
            let luma = data.iter().step_by(2).copied().collect();
            Ok(XrayImage::from_gray8(
                Gray8::from_raw(width, height, luma).expect("size checked"),
            ))
        }
        FrameFormat::Mjpg => decode_bytes(bytes, name.as_ref(), &DecodeOptions::default())
            .map(|d| d.image)
            .map_err(|e| InputError {
                code: e.code(),
                message: e.to_string(),
            }),
    }
}

/// Which frames are read.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Trigger {
    /// When the picture changes: the mean absolute difference of a 32×32 thumbnail from the
    /// last read frame exceeds `threshold` (0–1), and has then held still for `stable`
    /// frames (a new exposure shown on the unit's screen, not the moment it fades in).
    OnChange {
        /// Mean absolute difference, 0–1.
        threshold: f32,
        /// Frames the new picture must hold still.
        stable: u32,
    },
    /// Every `n`-th frame.
    EveryNth {
        /// Period in frames.
        n: u32,
    },
}

/// The trigger's memory.
#[derive(Clone, Debug)]
pub struct TriggerState {
    trigger: Trigger,
    frame: u64,
    last_read: Option<Vec<f32>>,
    previous: Option<Vec<f32>>,
    still: u32,
}

/// A 32×32 thumbnail in [0, 1].
fn thumbnail(image: &XrayImage) -> Vec<f32> {
    let g = image.to_gray8();
    let t = image::imageops::thumbnail(&g, 32, 32);
    t.as_raw().iter().map(|&v| v as f32 / 255.0).collect()
}

fn mad(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len().max(1) as f32
}

impl TriggerState {
    /// A trigger that has seen nothing.
    pub fn new(trigger: Trigger) -> Self {
        TriggerState {
            trigger,
            frame: 0,
            last_read: None,
            previous: None,
            still: 0,
        }
    }

    /// Whether to read this frame.
    pub fn fire(&mut self, image: &XrayImage) -> bool {
        self.frame += 1;
        match self.trigger {
            Trigger::EveryNth { n } => (self.frame - 1).is_multiple_of(n.max(1) as u64),
            Trigger::OnChange { threshold, stable } => {
                let t = thumbnail(image);
                let moving = self
                    .previous
                    .as_ref()
                    .is_none_or(|p| mad(p, &t) > threshold / 4.0);
                self.still = if moving { 0 } else { self.still + 1 };
                self.previous = Some(t.clone());
                let changed = self
                    .last_read
                    .as_ref()
                    .is_none_or(|l| mad(l, &t) > threshold);
                if changed && self.still >= stable {
                    self.last_read = Some(t);
                    true
                } else {
                    false
                }
            }
        }
    }
}

/// Captures from a V4L2 device, calling `on_frame` with each triggered frame's image and
/// its name (`video0#123`), until `stop` is set.
#[cfg(feature = "v4l")]
pub fn capture(
    device: &std::path::Path,
    format: FrameFormat,
    size: Option<(u32, u32)>,
    trigger: Trigger,
    stop: &std::sync::atomic::AtomicBool,
    mut on_frame: impl FnMut(Result<XrayImage, InputError>, String),
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use v4l::io::traits::CaptureStream as _;
    use v4l::video::Capture as _;
    let dev = v4l::Device::with_path(device)
        .with_context(|| format!("{}: cannot open the V4L2 device", device.display()))?;
    let mut fmt = dev.format()?;
    fmt.fourcc = v4l::FourCC::new(&format.fourcc());
    if let Some((w, h)) = size {
        fmt.width = w;
        fmt.height = h;
    }
    let fmt = dev.set_format(&fmt)?;
    anyhow::ensure!(
        fmt.fourcc.repr == format.fourcc(),
        "{}: the device does not deliver {:?} (it offers {})",
        device.display(),
        format,
        fmt.fourcc
    );
    let mut stream = v4l::io::mmap::Stream::with_buffers(&dev, v4l::buffer::Type::VideoCapture, 4)?;
    let base = device
        .file_name()
        .map_or_else(|| "video".into(), |n| n.to_string_lossy().into_owned());
    // Frame numbers restart with each capture: the start time (and a random tag, for two
    // starts in one second) keeps names, and so local result files, unique across restarts.
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..4];
    let base = format!("{base}-{}-{tag}", started.trim_end_matches('Z'));
    let mut state = TriggerState::new(trigger);
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let (buf, meta) = stream.next()?;
        n += 1;
        let name = format!("{base}#{n}");
        let used = (meta.bytesused as usize).min(buf.len());
        let image = frame_to_image(format, fmt.width, fmt.height, &buf[..used], &name);
        match image {
            Ok(img) => {
                if state.fire(&img) {
                    on_frame(Ok(img), name);
                }
            }
            Err(e) => on_frame(Err(e), name),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fv_core::imaging::GrayPixels;

    #[test]
    fn formats_convert_to_gray() {
        let grey = frame_to_image(FrameFormat::Grey, 2, 1, &[10, 200], "f").unwrap();
        assert_eq!(grey.to_gray8().as_raw(), &vec![10, 200]);
        let y16 = frame_to_image(FrameFormat::Y16, 2, 1, &[0x34, 0x12, 0xff, 0xff], "f").unwrap();
        match y16.pixels() {
            GrayPixels::U16(p) => assert_eq!(p.as_raw(), &vec![0x1234, 0xffff]),
            _ => panic!("Y16 must stay 16-bit"),
        }
        // Y0 U Y1 V: the luma bytes are the picture.
        let yuyv = frame_to_image(FrameFormat::Yuyv, 2, 1, &[50, 128, 60, 128], "f").unwrap();
        assert_eq!(yuyv.to_gray8().as_raw(), &vec![50, 60]);

        let mut jpeg = Vec::new();
        image::GrayImage::from_pixel(16, 8, image::Luma([90]))
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        let m = frame_to_image(FrameFormat::Mjpg, 16, 8, &jpeg, "f").unwrap();
        assert_eq!((m.width(), m.height()), (16, 8));

        let e = frame_to_image(FrameFormat::Yuyv, 4, 4, &[0; 7], "video0#3").unwrap_err();
        assert_eq!(e.code, "truncated");
        assert!(e.message.starts_with("video0#3"), "{}", e.message);
        let e = frame_to_image(FrameFormat::Mjpg, 4, 4, &jpeg[..jpeg.len() / 2], "video0#4")
            .unwrap_err();
        assert_eq!(e.code, "truncated");
    }

    fn flat(v: u8) -> XrayImage {
        XrayImage::from_gray8(Gray8::from_pixel(64, 64, image::Luma([v])))
    }

    #[test]
    fn triggers() {
        let mut every = TriggerState::new(Trigger::EveryNth { n: 3 });
        let fired: Vec<bool> = (0..6).map(|_| every.fire(&flat(0))).collect();
        assert_eq!(fired, [true, false, false, true, false, false]);

        let mut change = TriggerState::new(Trigger::OnChange {
            threshold: 0.1,
            stable: 2,
        });
        // The first picture once it holds still, then nothing until it changes and settles.
        let frames = [0, 0, 0, 0, 200, 200, 200, 200, 205];
        let fired: Vec<bool> = frames.iter().map(|&v| change.fire(&flat(v))).collect();
        assert_eq!(
            fired,
            [false, false, true, false, false, false, true, false, false]
        );
    }
}
