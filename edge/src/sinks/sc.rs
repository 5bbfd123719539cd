//! The marks in the radiologist's own viewer: the overlay the radiographer sees (boxes, finding,
//! probability, "not a diagnosis"), as a DICOM Secondary Capture in the source's study.
//!
//! A Secondary Capture rather than a Grayscale Softcopy Presentation State: every PACS viewer
//! displays a Secondary Capture as an image, while presentation states are applied only by some
//! (many web viewers and older workstations list them, or ignore them), and a radiologist who
//! never sees the marks gains nothing from them. The capture is labelled as what it is: image
//! type `DERIVED\SECONDARY`, burned-in annotation, a series named "not for diagnosis", and a
//! reference to the source image it was derived from. Its UIDs derive from the result's id,
//! like the report's, so sending it again is the same instance to the PACS.

use crate::dimse::derived_uid;
use crate::sinks::sr::{code, dicom_date_time, el, read_source, seq, Item, Report, ReportError};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use fv_core::result::ResultMessage;
use image::RgbImage;
use std::path::Path;

/// The longest side a capture is sent at. The radiologist reads the source image; the capture
/// shows where to look. A full-size RGB copy of a 3000-pixel radiograph would be 27 MB, and the
/// PACS outbox (512 MiB by default) must hold weeks of a unit's readings while the PACS is
/// unreachable; at 1024 a capture is at most 3 MB.
pub const MAX_SIDE: u32 = 1024;

/// What the series is called in the viewer's list.
pub const SERIES_DESCRIPTION: &str = "FractuVision marks - derived, not for diagnosis";

/// The overlay `overlay` of the reading `m` of the DICOM file at `path`, as a Secondary
/// Capture (explicit VR little endian, 8-bit RGB), scaled to at most [`MAX_SIDE`].
pub fn capture(path: &Path, m: &ResultMessage, overlay: &RgbImage) -> Result<Report, ReportError> {
    let src = read_source(path)?;
    let sop_instance_uid = derived_uid(&["fv-edge sc", &m.id]);
    let series_uid = derived_uid(&["fv-edge sc series", &m.id]);
    let (date, time) = dicom_date_time(&m.processed_at);
    let (w, h) = overlay.dimensions();
    let scaled;
    let pixels = if w.max(h) > MAX_SIDE {
        let k = f64::from(MAX_SIDE) / f64::from(w.max(h));
        let (sw, sh) = (
            ((f64::from(w) * k).round() as u32).max(1),
            ((f64::from(h) * k).round() as u32).max(1),
        );
        scaled = image::imageops::resize(overlay, sw, sh, image::imageops::FilterType::Triangle);
        &scaled
    } else {
        overlay
    };
    let (cols, rows) = pixels.dimensions();
    let mut data = pixels.as_raw().clone();
    if data.len() % 2 == 1 {
        data.push(0);
    }
    let source_image = {
        let mut r = src.sop_ref();
        r.put(seq(
            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
            vec![code(
                "121322",
                "DCM",
                "Source image for image processing operation",
            )],
        ));
        r
    };
    let mut obj = Item::from_element_iter(src.copied.clone());
    let elements: Vec<DataElement<Item>> = vec![
        el(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
        ),
        el(tags::SOP_INSTANCE_UID, VR::UI, sop_instance_uid.as_str()),
        el(tags::STUDY_INSTANCE_UID, VR::UI, src.study.as_str()),
        el(tags::SERIES_INSTANCE_UID, VR::UI, series_uid.as_str()),
        el(tags::MODALITY, VR::CS, "OT"),
        el(tags::SERIES_NUMBER, VR::IS, "9002"),
        el(tags::SERIES_DESCRIPTION, VR::LO, SERIES_DESCRIPTION),
        // Type 2C: the side the source shows, so that the PACS files the marks with it;
        // present and empty when the source names no single side.
        el(
            tags::LATERALITY,
            VR::CS,
            src.laterality
                .map_or(PrimitiveValue::Empty, PrimitiveValue::from),
        ),
        el(tags::MANUFACTURER, VR::LO, "FractuVision"),
        el(tags::MANUFACTURER_MODEL_NAME, VR::LO, "fv-edge"),
        el(tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION")),
        el(tags::CONVERSION_TYPE, VR::CS, "WSD"),
        el(tags::INSTANCE_NUMBER, VR::IS, "1"),
        el(tags::PATIENT_ORIENTATION, VR::CS, PrimitiveValue::Empty),
        el(tags::CONTENT_DATE, VR::DA, date.as_str()),
        el(tags::CONTENT_TIME, VR::TM, time.as_str()),
        el(tags::INSTANCE_CREATION_DATE, VR::DA, date.as_str()),
        el(tags::INSTANCE_CREATION_TIME, VR::TM, time.as_str()),
        el(tags::DATE_OF_SECONDARY_CAPTURE, VR::DA, date.as_str()),
        el(tags::TIME_OF_SECONDARY_CAPTURE, VR::TM, time.as_str()),
        el(
            tags::IMAGE_TYPE,
            VR::CS,
            PrimitiveValue::Strs(["DERIVED", "SECONDARY"].map(String::from).into()),
        ),
        el(
            tags::DERIVATION_DESCRIPTION,
            VR::ST,
            "FractuVision fv-edge computer-aided detection marks burned into a copy of the \
             source image; not for diagnosis",
        ),
        seq(tags::SOURCE_IMAGE_SEQUENCE, vec![source_image]),
        el(tags::BURNED_IN_ANNOTATION, VR::CS, "YES"),
        el(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        el(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(3u16)),
        el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB"),
        el(
            tags::PLANAR_CONFIGURATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        el(tags::ROWS, VR::US, PrimitiveValue::from(rows as u16)),
        el(tags::COLUMNS, VR::US, PrimitiveValue::from(cols as u16)),
        el(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(8u16)),
        el(tags::BITS_STORED, VR::US, PrimitiveValue::from(8u16)),
        el(tags::HIGH_BIT, VR::US, PrimitiveValue::from(7u16)),
        el(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        el(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(data.into())),
    ];
    for e in elements {
        obj.put(e);
    }
    let file = obj
        .with_meta(
            dicom_object::FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .media_storage_sop_class_uid(uids::SECONDARY_CAPTURE_IMAGE_STORAGE)
                .media_storage_sop_instance_uid(sop_instance_uid.as_str()),
        )
        .expect("a complete file meta");
    let mut bytes = Vec::new();
    file.write_all(&mut bytes)
        .expect("an in-memory capture of well-formed elements encodes");
    Ok(Report {
        sop_instance_uid,
        bytes,
    })
}
