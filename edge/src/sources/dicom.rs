//! DICOM Part 10 radiographs (CR, DX, DR) to display-ready grayscale: modality rescale
//! (slope/intercept), the first VOI window (or the pixel range when there is none), and
//! MONOCHROME1 inverted so that bone is always bright, as the models were trained.
//!
//! Refused with a clear error: objects without pixel data, other modalities (CT, MR, US, …),
//! colour images, and pixel data dicom-rs 0.10.1 cannot decode (JPEG Extended 12-bit among
//! them).

use crate::sources::input_error::{bounded, InputError};
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::{Lut, PixelDecoder as _, PixelRepresentation, Rescale};
use fv_core::imaging::{DecodeOptions, Gray16, XrayImage};
use std::path::Path;

/// Modalities read: computed and digital radiography.
pub const MODALITIES: [&str; 3] = ["CR", "DX", "DR"];

/// JPEG Extended (Process 2 & 4): 12-bit JPEG that dicom-rs 0.10.1 does not decode.
const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";

/// A decoded DICOM radiograph.
pub struct DicomImage {
    /// 16-bit pixels after rescale, window and MONOCHROME1 inversion.
    pub image: XrayImage,
    /// StudyInstanceUID: stays on the device (hashed before anything is sent).
    pub study_uid: Option<String>,
}

fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| {
            s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_owned()
        })
        .filter(|s| !s.is_empty())
}

fn err(code: &'static str, path: &Path, what: impl std::fmt::Display) -> InputError {
    // Messages quote what the object holds; a value may be thousands of characters long.
    let what = what.to_string();
    InputError {
        code,
        message: format!("{}: {}", path.display(), bounded(&what, 400)),
    }
}

/// Reads a DICOM file and decodes its first frame.
pub fn load(path: &Path, options: &DecodeOptions) -> Result<DicomImage, InputError> {
    let bytes =
        fv_core::imaging::read_bounded(path, options.max_file_bytes, false).map_err(|e| {
            InputError {
                code: e.code(),
                message: e.to_string(),
            }
        })?;
    from_bytes(&bytes, path, options)
}

/// Explicit-VR representations whose length field has 4 bytes (after 2 reserved ones).
const LONG_VRS: [&[u8; 2]; 13] = [
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV",
];

/// The value representations of PS3.5 6.2.
const VRS: &str = "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV";

/// Refuses a Part 10 file in which an element, item or fragment declares more bytes than the
/// file holds. dicom-rs reserves and zero-fills a declared length before reading it, so a
/// 772-byte file claiming a 1.4 GB value cost 1.4 GB of memory and 14 s (found by the `dicom`
/// fuzz target): on a Jetson that is an out-of-memory kill, a restart, and the same file
/// again. A linear walk over element headers, descending into sequences, skipping values and
/// pixel fragments, in either byte order; a deflated data set is left to dicom-rs.
fn check_declared_lengths(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Ok(()); // not Part 10: dicom-rs says so
    }
    let mut little = true;
    let u16_at = |p: usize, little: bool| {
        let b = [bytes[p], bytes[p + 1]];
        if little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    };
    let u32_at = |p: usize, little: bool| {
        let b = [bytes[p], bytes[p + 1], bytes[p + 2], bytes[p + 3]];
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let mut pos = 132;
    let mut in_meta = true;
    let mut meta_end: Option<usize> = None;
    let mut explicit = true;
    let mut transfer_syntax = String::new();
    // Open undefined-length elements: true for encapsulated pixel data (items are fragments,
    // skipped), false for sequences (items hold data sets, walked).
    let mut fragments: Vec<bool> = Vec::new();
    while pos + 8 <= bytes.len() {
        // The meta group is always little-endian; the data set's byte order is its syntax's.
        // dicom-rs reads meta elements until it has consumed the group length, whatever
        // their tags; the data set starts there (else at the first tag of another group).
        let meta_over = match meta_end {
            Some(end) => pos >= end,
            None => u16_at(pos, true) != 0x0002,
        };
        if in_meta && meta_over {
            in_meta = false;
            match transfer_syntax.as_str() {
                "1.2.840.10008.1.2" => explicit = false,
                "1.2.840.10008.1.2.2" => little = false,
                // Deflated: the lengths are inside the zlib stream; dicom-rs inflates it.
                "1.2.840.10008.1.2.1.99" => return Ok(()),
                _ => {}
            }
            continue;
        }
        let (group, element) = (u16_at(pos, little), u16_at(pos + 2, little));
        // Formatted only for an error: this loop runs over every element of every input.
        let tag = || format!("({group:04X},{element:04X})");
        if group == 0xFFFE {
            // Item and delimiters: tag and a 4-byte length, no VR.
            let len = u32_at(pos + 4, little);
            pos += 8;
            match element {
                0xE000 if len != u32::MAX => {
                    if len as usize > bytes.len() - pos {
                        return Err(format!(
                            "item at byte {} declares {len} bytes but only {} remain",
                            pos - 8,
                            bytes.len() - pos
                        ));
                    }
                    if fragments.last() == Some(&true) {
                        pos += len as usize;
                    }
                }
                0xE0DD => {
                    fragments.pop();
                }
                _ => {}
            }
            continue;
        }
        let (vr, len, header) = if explicit {
            let vr = [bytes[pos + 4], bytes[pos + 5]];
            // dicom-rs reads an unknown VR as UN, taking the next 4 bytes as a length.
            if !VRS.split(' ').any(|v| v.as_bytes() == vr) {
                return Err(format!(
                    "element {} has no valid value representation (`{}`)",
                    tag(),
                    String::from_utf8_lossy(&vr).escape_default()
                ));
            }
            if LONG_VRS.contains(&&vr) {
                if pos + 12 > bytes.len() {
                    break;
                }
                (Some(vr), u32_at(pos + 8, little), 12)
            } else {
                (Some(vr), u32::from(u16_at(pos + 6, little)), 8)
            }
        } else {
            (None, u32_at(pos + 4, little), 8)
        };
        pos += header;
        if len == u32::MAX {
            fragments.push(matches!(vr, Some([b'O', b'B']) | Some([b'O', b'W'])));
            continue;
        }
        let len = len as usize;
        if len > bytes.len() - pos {
            return Err(format!(
                "element {} declares {len} bytes but only {} remain",
                tag(),
                bytes.len() - pos
            ));
        }
        if in_meta && group == 0x0002 && element == 0x0000 && len == 4 && meta_end.is_none() {
            meta_end = Some(pos + 4 + u32_at(pos, true) as usize);
        }
        if in_meta && group == 0x0002 && element == 0x0010 {
            transfer_syntax = String::from_utf8_lossy(&bytes[pos..pos + len])
                .trim_end_matches(['\0', ' '])
                .to_owned();
        }
        // A defined-length sequence is walked in place; any other value is skipped.
        if vr != Some(*b"SQ") {
            pos += len;
        }
    }
    Ok(())
}

/// The same from the bytes of a Part 10 file (with its preamble); `path` only names it in
/// errors. The fuzz target `dicom` drives this.
pub fn from_bytes(
    bytes: &[u8],
    path: &Path,
    options: &DecodeOptions,
) -> Result<DicomImage, InputError> {
    check_declared_lengths(bytes).map_err(|why| {
        err(
            "corrupt",
            path,
            format!("damaged DICOM file: {why}; send it again"),
        )
    })?;
    let obj = dicom_object::OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Always)
        .from_reader(bytes)
        .map_err(|e| unreadable(path, e))?;
    from_object(obj, path, options)
}

fn unreadable(path: &Path, e: impl std::fmt::Display) -> InputError {
    err(
        "corrupt",
        path,
        format!("not a readable DICOM Part 10 file ({e}); send it again"),
    )
}

fn from_object(
    obj: dicom_object::DefaultDicomObject,
    path: &Path,
    options: &DecodeOptions,
) -> Result<DicomImage, InputError> {
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_owned();
    let modality = text(&obj, tags::MODALITY).unwrap_or_default();
    let quoted_modality = bounded(&modality, 32);
    if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        return Err(err(
            "not_an_image",
            path,
            format!(
                "DICOM object without pixel data (SOP class {}, modality `{quoted_modality}`); fv-edge reads radiographs only",
                obj.meta().media_storage_sop_class_uid().trim_end_matches('\0')
            ),
        ));
    }
    if !MODALITIES.contains(&modality.as_str()) {
        return Err(err(
            "unsupported_modality",
            path,
            format!(
                "modality `{quoted_modality}` is not a radiograph; fv-edge reads {} only",
                MODALITIES.join(", ")
            ),
        ));
    }
    let photometric = text(&obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    let inverted = match photometric.as_str() {
        "MONOCHROME2" => false,
        "MONOCHROME1" => true,
        other => {
            return Err(err(
                "unsupported_photometric",
                path,
                format!(
                "photometric interpretation `{other}`; radiographs are MONOCHROME1 or MONOCHROME2"
            ),
            ))
        }
    };
    let dim = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u32>().ok())
            .unwrap_or(0)
    };
    let (rows, cols) = (dim(tags::ROWS), dim(tags::COLUMNS));
    if rows == 0 || cols == 0 {
        return Err(err("corrupt", path, "Rows or Columns is missing or zero"));
    }
    // dicom-pixeldata asserts on these (a panic, not an error: found by the `dicom` fuzz
    // target), so they are checked here first.
    let (allocated, stored) = (dim(tags::BITS_ALLOCATED), dim(tags::BITS_STORED));
    if !(allocated == 8 || allocated == 16) || stored == 0 || stored > allocated {
        return Err(err(
            "corrupt",
            path,
            format!(
                "BitsAllocated {allocated} with BitsStored {stored} is not an 8- or 16-bit radiograph"
            ),
        ));
    }
    if rows as u64 * cols as u64 > options.max_pixels {
        return Err(err(
            "too_large",
            path,
            format!(
                "image of {cols}×{rows} pixels exceeds the limit of {} pixels; raise `max_pixels` if this size is genuine",
                options.max_pixels
            ),
        ));
    }
    let decoded = obj.decode_pixel_data_frame(0).map_err(|e| {
        if ts == JPEG_EXTENDED {
            err(
                "unsupported_transfer_syntax",
                path,
                format!(
                    "JPEG Extended 12-bit ({ts}) cannot be decoded by this build (dicom-rs 0.10.1): {e}; \
                     send it uncompressed, JPEG Lossless or JPEG 2000"
                ),
            )
        } else {
            err(
                "pixel_decode",
                path,
                format!("cannot decode the pixel data (transfer syntax {ts}): {e}"),
            )
        }
    })?;
    if decoded.samples_per_pixel() != 1 {
        return Err(err(
            "pixel_decode",
            path,
            format!(
                "{} samples per pixel; only single-sample (grayscale) images are read",
                decoded.samples_per_pixel()
            ),
        ));
    }
    let frame = decoded.frame_data(0).map_err(|e| {
        err(
            "pixel_decode",
            path,
            format!("cannot read the first frame: {e}"),
        )
    })?;
    let rescale = decoded
        .rescale()
        .ok()
        .and_then(|r| r.first().copied())
        .unwrap_or(Rescale::new(1.0, 0.0));
    let signed = decoded.pixel_representation() == PixelRepresentation::Signed;
    let lut_err = |e: dicom_pixeldata::CreateLutError| {
        err(
            "pixel_decode",
            path,
            format!("cannot build the display lookup table: {e}"),
        )
    };
    let window = decoded
        .window()
        .ok()
        .flatten()
        .and_then(|w| w.first().copied())
        .filter(|w| w.width > 1.0);
    let (lo, hi) = match window {
        // PS3.3 C.11.2.1.2.1 (LINEAR), continuous form.
        Some(w) => (
            w.center - 0.5 - (w.width - 1.0) / 2.0,
            w.center - 0.5 + (w.width - 1.0) / 2.0,
        ),
        // No window: the range of the modality values present, found through a table of
        // them (one lookup per pixel rather than a float conversion of every pixel).
        None => {
            let values =
                Lut::<f64>::new_rescale(stored as u16, signed, rescale).map_err(lut_err)?;
            let (mut a, mut b) = (f64::MAX, f64::MIN);
            for_each_sample(frame, allocated, |v| {
                let v = values.get(v);
                (a, b) = (a.min(v), b.max(v));
            });
            (a, b)
        }
    };
    let span = (hi - lo).max(f64::EPSILON);
    // Rescale, window and MONOCHROME1 inversion folded into one table over the stored values
    // (at most 2^16 entries), so the pixels go from their stored samples to the 16-bit image
    // in one pass, without a full-size float copy (issue 19).
    let display = Lut::<u16>::new_with_fn(stored as u16, signed, |x| {
        let t = ((rescale.apply(x) - lo) / span).clamp(0.0, 1.0);
        let t = if inverted { 1.0 - t } else { t };
        (t * 65535.0).round()
    })
    .map_err(lut_err)?;
    let mut pixels = Vec::with_capacity(rows as usize * cols as usize);
    for_each_sample(frame, allocated, |v| pixels.push(display.get(v)));
    let image = Gray16::from_raw(cols, rows, pixels)
        .map(|p| XrayImage::from_gray16(p, 16))
        .ok_or_else(|| {
            err(
                "corrupt",
                path,
                "pixel buffer does not match Rows × Columns",
            )
        })?;
    Ok(DicomImage {
        image,
        study_uid: text(&obj, tags::STUDY_INSTANCE_UID),
    })
}

/// Calls `f` with every stored sample of a frame of 8- or 16-bit samples, as the lookup tables
/// index them (dicom-pixeldata keeps its decoded samples in native byte order).
fn for_each_sample(frame: &[u8], bits_allocated: u32, mut f: impl FnMut(u16)) {
    if bits_allocated == 8 {
        frame.iter().for_each(|&b| f(u16::from(b)));
    } else {
        frame
            .chunks_exact(2)
            .for_each(|c| f(u16::from_ne_bytes([c[0], c[1]])));
    }
}
