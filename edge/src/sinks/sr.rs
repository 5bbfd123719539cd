//! The reading of a DICOM image as a DICOM Comprehensive Structured Report for the PACS,
//! modelled on TID 1500 (Measurement Report): the image-level fracture probability and the
//! finding at the two operating points, each box as an image region (SCOORD on the source
//! image), the models by name, version and SHA-256, and a statement that it is not a
//! diagnosis.
//!
//! It goes into the source's study as a new series and references the source instance, with
//! the source's patient and study identifiers copied: the PACS files it beside the image.
//! That is inside the hospital; MQTT and the logs carry none of it. Its UIDs derive from the
//! result's id, so a report sent again is the same instance to the PACS.

use crate::dimse::derived_uid;
use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, Length, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use fv_core::result::{Finding, Level, ResultMessage};
use std::path::Path;

/// Comprehensive SR Storage.
pub const COMPREHENSIVE_SR: &str = uids::COMPREHENSIVE_SR_STORAGE;

/// Our coding scheme for concepts no standard code names (declared in the report).
const LOCAL: &str = "99FV";

/// What the report says besides the reading.
pub const DISCLAIMER: &str = "FractuVision fv-edge: computer-aided detection output for review \
by a clinician. It is not a diagnosis and must not be acted on without a qualified reading of \
the image.";

/// A report ready to send.
pub struct Report {
    /// SOP Instance UID of the report.
    pub sop_instance_uid: String,
    /// The Part 10 file (explicit VR little endian).
    pub bytes: Vec<u8>,
}

/// Why a DICOM input gets no report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The source cannot be read again.
    #[error("{path}: cannot read the DICOM header for the report: {why}")]
    Unreadable { path: String, why: String },
    /// A UID the report must reference is missing.
    #[error("{path}: no {what} in the source, so the report could not reference it")]
    Missing { path: String, what: &'static str },
}

pub(crate) type Item = InMemDicomObject;

pub(crate) fn el(tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) -> DataElement<Item> {
    DataElement::new(tag, vr, v.into())
}

pub(crate) fn seq(tag: Tag, items: Vec<Item>) -> DataElement<Item> {
    DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
}

pub(crate) fn code(value: &str, scheme: &str, meaning: &str) -> Item {
    Item::from_element_iter([
        el(tags::CODE_VALUE, VR::SH, value),
        el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        el(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

/// A content item: relationship, value type, concept name, then its value elements.
fn item(rel: &str, vt: &str, concept: Option<Item>, value: Vec<DataElement<Item>>) -> Item {
    let mut e = vec![
        el(tags::RELATIONSHIP_TYPE, VR::CS, rel),
        el(tags::VALUE_TYPE, VR::CS, vt),
    ];
    if let Some(c) = concept {
        e.push(seq(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![c]));
    }
    e.extend(value);
    Item::from_element_iter(e)
}

fn container(rel: &str, concept: Item, children: Vec<Item>) -> Item {
    item(
        rel,
        "CONTAINER",
        Some(concept),
        vec![
            el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"),
            seq(tags::CONTENT_SEQUENCE, children),
        ],
    )
}

fn text(rel: &str, concept: Item, v: &str) -> Item {
    item(
        rel,
        "TEXT",
        Some(concept),
        vec![el(tags::TEXT_VALUE, VR::UT, v)],
    )
}

fn code_item(rel: &str, concept: Item, v: Item) -> Item {
    item(
        rel,
        "CODE",
        Some(concept),
        vec![seq(tags::CONCEPT_CODE_SEQUENCE, vec![v])],
    )
}

fn uidref(rel: &str, concept: Item, v: &str) -> Item {
    item(rel, "UIDREF", Some(concept), vec![el(tags::UID, VR::UI, v)])
}

/// A unitless number (UCUM `1`), as DS: at most 16 characters.
fn num(concept: Item, v: f64) -> Item {
    let measured = Item::from_element_iter([
        el(tags::NUMERIC_VALUE, VR::DS, format!("{v:.6}")),
        seq(
            tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
            vec![code("1", "UCUM", "no units")],
        ),
    ]);
    item(
        "CONTAINS",
        "NUM",
        Some(concept),
        vec![seq(tags::MEASURED_VALUE_SEQUENCE, vec![measured])],
    )
}

fn image_ref(rel: &str, src: &Source) -> Item {
    item(
        rel,
        "IMAGE",
        None,
        vec![seq(tags::REFERENCED_SOP_SEQUENCE, vec![src.sop_ref()])],
    )
}

/// What the report takes from the source image.
pub(crate) struct Source {
    pub(crate) sop_class: String,
    pub(crate) sop_instance: String,
    pub(crate) study: String,
    pub(crate) series: String,
    /// Patient and study identification, copied as they are (values, VRs, character set).
    pub(crate) copied: Vec<DataElement<Item>>,
    /// The side imaged, `R` or `L`, from the source's Laterality or else its Image
    /// Laterality; none when it names neither (unpaired, both, absent).
    pub(crate) laterality: Option<&'static str>,
}

impl Source {
    /// The source image as a Referenced SOP Sequence item (the content tree's IMAGE item and the
    /// evidence sequence name it the same way).
    pub(crate) fn sop_ref(&self) -> Item {
        Item::from_element_iter([
            el(
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                self.sop_class.as_str(),
            ),
            el(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                self.sop_instance.as_str(),
            ),
        ])
    }
}

/// Patient and study attributes the SR's Patient and General Study modules need (type 2:
/// present, empty when the source has none).
const COPIED: [(Tag, VR); 10] = [
    (tags::SPECIFIC_CHARACTER_SET, VR::CS),
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::PATIENT_SEX, VR::CS),
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_TIME, VR::TM),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::STUDY_ID, VR::SH),
    (tags::ACCESSION_NUMBER, VR::SH),
];

pub(crate) fn read_source(path: &Path) -> Result<Source, ReportError> {
    let p = path.display().to_string();
    let obj: DefaultDicomObject = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| ReportError::Unreadable {
            path: p.clone(),
            why: e.to_string(),
        })?;
    let uid = |t: Tag, what: &'static str| -> Result<String, ReportError> {
        obj.element_opt(t)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
            .filter(|s| !s.is_empty())
            .ok_or(ReportError::Missing {
                path: p.clone(),
                what,
            })
    };
    let mut copied = Vec::new();
    for (tag, vr) in COPIED {
        match obj.element_opt(tag).ok().flatten() {
            Some(e) => copied.push(DataElement::new(tag, e.vr(), e.value().clone())),
            // The character set is type 1C: absent means the default repertoire.
            None if tag == tags::SPECIFIC_CHARACTER_SET => {}
            None => copied.push(DataElement::new(tag, vr, PrimitiveValue::Empty)),
        }
    }
    let side = |t: Tag| {
        let v = obj.element_opt(t).ok().flatten()?.to_str().ok()?;
        match v.trim_end_matches(['\0', ' ']) {
            "R" => Some("R"),
            "L" => Some("L"),
            _ => None,
        }
    };
    Ok(Source {
        laterality: side(tags::LATERALITY).or_else(|| side(tags::IMAGE_LATERALITY)),
        sop_class: uid(tags::SOP_CLASS_UID, "SOP Class UID")?,
        sop_instance: uid(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
        study: uid(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
        series: uid(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
        copied,
    })
}

/// `2026-12-02T09:41:17.123Z` → (`20261202`, `094117.123`); the clock now if unparseable.
pub(crate) fn dicom_date_time(rfc3339: &str) -> (String, String) {
    let t = humantime::parse_rfc3339_weak(rfc3339.trim_end_matches('Z'))
        .unwrap_or_else(|_| std::time::SystemTime::now());
    let s = humantime::format_rfc3339_millis(t).to_string(); // 2026-12-02T09:41:17.123Z
    let date = s[..10].replace('-', "");
    let time = s[11..23].replace(':', "");
    (date, time)
}

/// The report for the reading `m` of the DICOM file at `path` (read again for its header).
pub fn report(path: &Path, m: &ResultMessage) -> Result<Report, ReportError> {
    let src = read_source(path)?;
    let sop_instance_uid = derived_uid(&["fv-edge sr", &m.id]);
    let series_uid = derived_uid(&["fv-edge sr series", &m.id]);
    let (date, time) = dicom_date_time(&m.processed_at);

    let fracture = || code("72704001", "SCT", "Fracture");
    let finding = || code("121071", "DCM", "Finding");
    let tracking = |label: String, n: &str| {
        [
            text(
                "HAS OBS CONTEXT",
                code("112039", "DCM", "Tracking Identifier"),
                &label,
            ),
            uidref(
                "HAS OBS CONTEXT",
                code("112040", "DCM", "Tracking Unique Identifier"),
                &derived_uid(&["fv-edge sr tracking", &m.id, n]),
            ),
        ]
    };

    // The image-level reading.
    let mut image_group: Vec<Item> =
        tracking("Image-level fracture assessment".into(), "image").into();
    image_group.push(code_item("CONTAINS", finding(), fracture()));
    if let Some(p) = m.fracture_probability {
        image_group.push(num(
            code("P-FRACTURE", LOCAL, "Fracture probability (calibrated)"),
            p.get(),
        ));
    }
    if let Some(f) = m.finding {
        let (v, meaning) = match f {
            Finding::Fracture => (
                "DEFINITE",
                "Fracture: at or above the definite operating point",
            ),
            Finding::Suspicious => (
                "SUSPICIOUS",
                "Suspicious: at or above the suspicious operating point",
            ),
            Finding::NoFracture => (
                "NEGATIVE",
                "No fracture found: below the suspicious operating point",
            ),
            Finding::NotApplicable => (
                "NOT-APPLICABLE",
                "Not read: the image is outside the algorithm's scope",
            ),
        };
        image_group.push(code_item(
            "CONTAINS",
            code("READING", LOCAL, "Reading at the operating points"),
            code(v, LOCAL, meaning),
        ));
    }
    for model in &m.models {
        image_group.push(text(
            "CONTAINS",
            code("111001", "DCM", "Algorithm Name"),
            &model.name,
        ));
        image_group.push(text(
            "CONTAINS",
            code("111003", "DCM", "Algorithm Version"),
            &format!(
                "{} ({}, sha256 {})",
                model.version, model.precision, model.sha256
            ),
        ));
    }
    let mut groups = vec![container(
        "CONTAINS",
        code("125007", "DCM", "Measurement Group"),
        image_group,
    )];

    // One group per box: the region on the source image and the detector's confidence.
    for (i, b) in m.boxes.iter().enumerate() {
        let n = (i + 1).to_string();
        let mut g: Vec<Item> = tracking(format!("Fracture region {n}"), &n).into();
        g.push(code_item("CONTAINS", finding(), fracture()));
        let mut region = item(
            "CONTAINS",
            "SCOORD",
            Some(code("111030", "DCM", "Image Region")),
            vec![
                el(tags::GRAPHIC_TYPE, VR::CS, "POLYLINE"),
                el(
                    tags::GRAPHIC_DATA,
                    VR::FL,
                    PrimitiveValue::F32(
                        [b.x1, b.y1, b.x2, b.y1, b.x2, b.y2, b.x1, b.y2, b.x1, b.y1]
                            .into_iter()
                            .collect(),
                    ),
                ),
            ],
        );
        region.put(seq(
            tags::CONTENT_SEQUENCE,
            vec![image_ref("SELECTED FROM", &src)],
        ));
        g.push(region);
        g.push(num(
            code("BOX-SCORE", LOCAL, "Detector confidence"),
            b.score.get(),
        ));
        let level = match b.level {
            Level::Definite => ("DEFINITE", "At or above the detector's definite threshold"),
            Level::Suspicious => (
                "SUSPICIOUS",
                "At or above the detector's suspicious threshold",
            ),
            Level::Candidate => (
                "CANDIDATE",
                "Below the detector's thresholds: a region to look at first",
            ),
        };
        g.push(code_item(
            "CONTAINS",
            code("BOX-LEVEL", LOCAL, "Detector operating point"),
            code(level.0, LOCAL, level.1),
        ));
        groups.push(container(
            "CONTAINS",
            code("125007", "DCM", "Measurement Group"),
            g,
        ));
    }

    let content = vec![
        code_item(
            "HAS CONCEPT MOD",
            code("121049", "DCM", "Language of Content Item and Descendants"),
            code("en-US", "RFC5646", "English (United States)"),
        ),
        code_item(
            "HAS OBS CONTEXT",
            code("121005", "DCM", "Observer Type"),
            code("121007", "DCM", "Device"),
        ),
        uidref(
            "HAS OBS CONTEXT",
            code("121012", "DCM", "Device Observer UID"),
            &derived_uid(&["fv-edge device", &m.site, &m.device]),
        ),
        text(
            "HAS OBS CONTEXT",
            code("121013", "DCM", "Device Observer Name"),
            &m.device,
        ),
        text(
            "HAS OBS CONTEXT",
            code("121015", "DCM", "Device Observer Model Name"),
            "FractuVision fv-edge",
        ),
        code_item(
            "HAS CONCEPT MOD",
            code("121058", "DCM", "Procedure reported"),
            code("363680008", "SCT", "Radiographic imaging procedure"),
        ),
        container(
            "CONTAINS",
            code("111028", "DCM", "Image Library"),
            vec![container(
                "CONTAINS",
                code("126200", "DCM", "Image Library Group"),
                vec![image_ref("CONTAINS", &src)],
            )],
        ),
        container(
            "CONTAINS",
            code("126010", "DCM", "Imaging Measurements"),
            groups,
        ),
        text("CONTAINS", code("121106", "DCM", "Comment"), DISCLAIMER),
    ];

    let evidence = Item::from_element_iter([
        el(tags::STUDY_INSTANCE_UID, VR::UI, src.study.as_str()),
        seq(
            tags::REFERENCED_SERIES_SEQUENCE,
            vec![Item::from_element_iter([
                el(tags::SERIES_INSTANCE_UID, VR::UI, src.series.as_str()),
                seq(tags::REFERENCED_SOP_SEQUENCE, vec![src.sop_ref()]),
            ])],
        ),
    ]);

    let mut obj = Item::from_element_iter(src.copied.clone());
    for e in [
        el(tags::SOP_CLASS_UID, VR::UI, COMPREHENSIVE_SR),
        el(tags::SOP_INSTANCE_UID, VR::UI, sop_instance_uid.as_str()),
        el(tags::STUDY_INSTANCE_UID, VR::UI, src.study.as_str()),
        el(tags::SERIES_INSTANCE_UID, VR::UI, series_uid.as_str()),
        el(tags::MODALITY, VR::CS, "SR"),
        el(tags::SERIES_NUMBER, VR::IS, "9001"),
        el(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            "FractuVision fracture detection",
        ),
        seq(tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE, vec![]),
        el(tags::MANUFACTURER, VR::LO, "FractuVision"),
        el(tags::MANUFACTURER_MODEL_NAME, VR::LO, "fv-edge"),
        el(tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION")),
        el(tags::INSTANCE_NUMBER, VR::IS, "1"),
        el(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"),
        el(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"),
        el(tags::CONTENT_DATE, VR::DA, date.as_str()),
        el(tags::CONTENT_TIME, VR::TM, time.as_str()),
        el(tags::INSTANCE_CREATION_DATE, VR::DA, date.as_str()),
        el(tags::INSTANCE_CREATION_TIME, VR::TM, time.as_str()),
        seq(tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]),
        seq(
            tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
            vec![evidence],
        ),
        seq(
            tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE,
            vec![Item::from_element_iter([
                el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, LOCAL),
                el(tags::CODING_SCHEME_NAME, VR::ST, "FractuVision local codes"),
                el(
                    tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
                    VR::ST,
                    "FractuVision",
                ),
            ])],
        ),
        el(tags::VALUE_TYPE, VR::CS, "CONTAINER"),
        seq(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code("126000", "DCM", "Imaging Measurement Report")],
        ),
        el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"),
        seq(
            tags::CONTENT_TEMPLATE_SEQUENCE,
            vec![Item::from_element_iter([
                el(tags::MAPPING_RESOURCE, VR::CS, "DCMR"),
                el(tags::TEMPLATE_IDENTIFIER, VR::CS, "1500"),
            ])],
        ),
        seq(tags::CONTENT_SEQUENCE, content),
    ] {
        obj.put(e);
    }
    let file = obj
        .with_meta(
            dicom_object::FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .media_storage_sop_class_uid(COMPREHENSIVE_SR)
                .media_storage_sop_instance_uid(sop_instance_uid.as_str()),
        )
        .expect("a complete file meta");
    let mut bytes = Vec::new();
    file.write_all(&mut bytes)
        .expect("an in-memory report of well-formed elements encodes");
    Ok(Report {
        sop_instance_uid,
        bytes,
    })
}
