//! DICOM stored samples to display pixels, value by value: modality rescale, the first VOI
//! window (or the range of the values present), MONOCHROME1 inversion, signed samples, 8- and
//! 16-bit containers. `fv_edge::sources::dicom` folds these into one lookup table over the stored
//! values; these are the values the earlier float conversion gave.

mod common;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use fv_core::imaging::{DecodeOptions, GrayPixels};

struct Stored {
    allocated: u16,
    stored: u16,
    signed: bool,
    photometric: &'static str,
    rescale: Option<(&'static str, &'static str)>,
    window: Option<(&'static str, &'static str)>,
    pixels: PrimitiveValue,
}

/// The 16-bit display pixels fv-edge reads from a 1-row DX image of `s`.
fn display(s: Stored, columns: u16) -> Vec<u16> {
    let us = |t, v: u16| DataElement::new(t, VR::US, PrimitiveValue::from(v));
    let text = |t, vr, v: &str| DataElement::new(t, vr, PrimitiveValue::from(v));
    let mut elements = vec![
        text(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
        ),
        text(tags::SOP_INSTANCE_UID, VR::UI, common::SOP_UID),
        text(tags::MODALITY, VR::CS, "DX"),
        us(tags::SAMPLES_PER_PIXEL, 1),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, s.photometric),
        us(tags::ROWS, 1),
        us(tags::COLUMNS, columns),
        us(tags::BITS_ALLOCATED, s.allocated),
        us(tags::BITS_STORED, s.stored),
        us(tags::HIGH_BIT, s.stored - 1),
        us(tags::PIXEL_REPRESENTATION, u16::from(s.signed)),
    ];
    if let Some((slope, intercept)) = s.rescale {
        elements.push(text(tags::RESCALE_SLOPE, VR::DS, slope));
        elements.push(text(tags::RESCALE_INTERCEPT, VR::DS, intercept));
    }
    if let Some((center, width)) = s.window {
        elements.push(text(tags::WINDOW_CENTER, VR::DS, center));
        elements.push(text(tags::WINDOW_WIDTH, VR::DS, width));
    }
    let vr = if s.allocated == 8 { VR::OB } else { VR::OW };
    elements.push(DataElement::new(tags::PIXEL_DATA, vr, s.pixels));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("row.dcm");
    common::write_dicom(elements, uids::EXPLICIT_VR_LITTLE_ENDIAN, &path);
    let image = fv_edge::sources::dicom::load(&path, &DecodeOptions::default())
        .unwrap_or_else(|e| panic!("{}", e.message))
        .image;
    match image.pixels() {
        GrayPixels::U16(p) => p.as_raw().clone(),
        GrayPixels::U8(_) => panic!("DICOM pixels are read to 16 bits"),
    }
}

/// `t` in [0, 1] on the 16-bit display scale.
fn level(t: f64) -> u16 {
    (t.clamp(0.0, 1.0) * 65535.0).round() as u16
}

#[test]
fn signed_samples_are_rescaled_and_stretched_over_their_range() {
    // 12 bits stored, signed, sign-extended in their 16-bit containers as modalities write
    // them; slope 2, intercept 10: modality values -4086, 8, 10, 4104.
    let raw: Vec<i16> = vec![-2048, -1, 0, 2047];
    let got = display(
        Stored {
            allocated: 16,
            stored: 12,
            signed: true,
            photometric: "MONOCHROME2",
            rescale: Some(("2", "10")),
            window: None,
            pixels: PrimitiveValue::U16(raw.iter().map(|&v| v as u16).collect()),
        },
        4,
    );
    let (lo, hi) = (-4086.0, 4104.0);
    let want: Vec<u16> = [-4086.0, 8.0, 10.0, 4104.0]
        .iter()
        .map(|v| level((v - lo) / (hi - lo)))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn the_window_clips_and_monochrome1_inverts() {
    // 8-bit MONOCHROME1, window centre 100.5, width 101: the linear window runs from 50 to 150
    // (PS3.3 C.11.2.1.2.1); below it is white after inversion, above it black.
    let raw = vec![0u8, 50, 100, 150, 255];
    let got = display(
        Stored {
            allocated: 8,
            stored: 8,
            signed: false,
            photometric: "MONOCHROME1",
            rescale: None,
            window: Some(("100.5", "101")),
            pixels: PrimitiveValue::U8(raw.clone().into()),
        },
        5,
    );
    let want: Vec<u16> = raw
        .iter()
        .map(|&v| level(1.0 - (f64::from(v) - 50.0) / 100.0))
        .collect();
    assert_eq!(got, want);
    assert_eq!((got[0], got[4]), (65535, 0));
}

#[test]
fn bits_above_bits_stored_are_ignored() {
    // 10 bits stored, unsigned, with junk in the 6 bits above (overlay bits in old files):
    // only the stored bits count.
    let raw: Vec<u16> = vec![0xFC00, 0x03FF | 0x8000, 512];
    let got = display(
        Stored {
            allocated: 16,
            stored: 10,
            signed: false,
            photometric: "MONOCHROME2",
            rescale: None,
            window: None,
            pixels: PrimitiveValue::U16(raw.into()),
        },
        3,
    );
    assert_eq!(got, vec![0, 65535, level(512.0 / 1023.0)]);
}
