//! The report of `fv-train data check`: what is in the dataset, how it splits, and what
//! is wrong with it.

use super::fracatlas::{ClassificationSplitConfig, FracAtlas, Problems, Split};
use serde::Serialize;
use std::fmt::Write as _;

/// Image counts per class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ClassCounts {
    /// Fractured images.
    pub fractured: usize,
    /// Non-fractured images.
    pub non_fractured: usize,
}

/// Sizes of the three parts of a split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PartSizes<T> {
    /// Training.
    pub train: T,
    /// Validation.
    pub valid: T,
    /// Test.
    pub test: T,
}

/// The problem lists, as ids, with details beside them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProblemSummary {
    /// Truncated files (excluded).
    pub truncated: Vec<String>,
    /// Other files that do not decode (excluded).
    pub undecodable: Vec<String>,
    /// Images displayed rotated or flipped by EXIF orientation.
    pub exif_rotated: Vec<String>,
    /// Images whose folder and `dataset.csv` disagree.
    pub label_conflicts: Vec<String>,
    /// Byte-identical groups.
    pub duplicate_groups: Vec<Vec<String>>,
    /// Duplicate groups spread over more than one part of either split (must be 0).
    pub cross_split_duplicates: usize,
    /// Everything else found, with reasons.
    pub details: Problems,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DataCheckReport {
    /// The dataset folder.
    pub data: String,
    /// Images per class (by folder), including unusable ones.
    pub images: ClassCounts,
    /// Fracture boxes.
    pub boxes: usize,
    /// The official detection split (fractured images).
    pub detection_split: PartSizes<usize>,
    /// How the classification split was made.
    pub classification_split_config: ClassificationSplitConfig,
    /// The classification split, per class.
    pub classification_split: PartSizes<ClassCounts>,
    /// What is wrong.
    pub problems: ProblemSummary,
}

fn counts(data: &FracAtlas, ids: &[usize]) -> ClassCounts {
    let fractured = ids.iter().filter(|&&i| data.images[i].fractured).count();
    ClassCounts {
        fractured,
        non_fractured: ids.len() - fractured,
    }
}

impl DataCheckReport {
    /// Builds the report for a loaded dataset and its classification split.
    pub fn new(data: &FracAtlas, config: ClassificationSplitConfig, cls: &Split) -> Self {
        let det = &data.detection_split;
        let p = &data.problems;
        let fractured = data.fractured_count();
        let (truncated, undecodable): (Vec<_>, Vec<_>) =
            p.unusable.iter().partition(|u| u.code == "truncated");
        DataCheckReport {
            data: data.root.display().to_string(),
            images: ClassCounts {
                fractured,
                non_fractured: data.images.len() - fractured,
            },
            boxes: data.box_count(),
            detection_split: PartSizes {
                train: det.train.len(),
                valid: det.valid.len(),
                test: det.test.len(),
            },
            classification_split_config: config,
            classification_split: PartSizes {
                train: counts(data, &cls.train),
                valid: counts(data, &cls.valid),
                test: counts(data, &cls.test),
            },
            problems: ProblemSummary {
                truncated: truncated.iter().map(|u| u.id.clone()).collect(),
                undecodable: undecodable.iter().map(|u| u.id.clone()).collect(),
                exif_rotated: p.exif_rotated.clone(),
                label_conflicts: p.label_conflicts.iter().map(|c| c.id.clone()).collect(),
                duplicate_groups: p.duplicate_groups.clone(),
                cross_split_duplicates: data.cross_split_duplicates(det)
                    + data.cross_split_duplicates(cls),
                details: p.clone(),
            },
        }
    }

    /// The report as a table for people.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let c = &self.classification_split;
        let cfg = &self.classification_split_config;
        let _ = writeln!(s, "FracAtlas at {}", self.data);
        let _ = writeln!(
            s,
            "  images        {:>5} fractured  {:>5} non-fractured  {:>5} boxes",
            self.images.fractured, self.images.non_fractured, self.boxes
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "  split                  train  valid   test");
        let d = &self.detection_split;
        let _ = writeln!(
            s,
            "  detection (official)   {:>5}  {:>5}  {:>5}",
            d.train, d.valid, d.test
        );
        let _ = writeln!(
            s,
            "  classify: fractured    {:>5}  {:>5}  {:>5}",
            c.train.fractured, c.valid.fractured, c.test.fractured
        );
        let _ = writeln!(
            s,
            "  classify: non-fract.   {:>5}  {:>5}  {:>5}   ({:?}, seed {})",
            c.train.non_fractured,
            c.valid.non_fractured,
            c.test.non_fractured,
            cfg.method,
            cfg.seed
        );
        let _ = writeln!(s);
        let p = &self.problems;
        let list = |ids: &[String]| {
            if ids.is_empty() {
                "none".to_owned()
            } else {
                ids.join(", ")
            }
        };
        let _ = writeln!(s, "  problems, and what was done");
        let _ = writeln!(
            s,
            "  truncated ({}, excluded): {}",
            p.truncated.len(),
            list(&p.truncated)
        );
        if !p.undecodable.is_empty() {
            let _ = writeln!(
                s,
                "  undecodable ({}, excluded): {}",
                p.undecodable.len(),
                list(&p.undecodable)
            );
        }
        let _ = writeln!(
            s,
            "  EXIF-rotated ({}, boxes in the displayed frame): {}",
            p.exif_rotated.len(),
            list(&p.exif_rotated)
        );
        for lc in &p.details.label_conflicts {
            let _ = writeln!(
                s,
                "  label conflict: {} is in {} but dataset.csv says fractured={}{}; the folder wins",
                lc.id,
                if lc.folder_fractured { "Fractured/" } else { "Non_fractured/" },
                lc.csv_fractured as u8,
                if lc.has_boxes { ", and COCO has its boxes" } else { "" },
            );
        }
        let _ = writeln!(
            s,
            "  byte-identical groups ({}, each kept in one split): {}",
            p.duplicate_groups.len(),
            p.duplicate_groups
                .iter()
                .map(|g| format!("[{}]", g.join(" = ")))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let _ = writeln!(
            s,
            "  duplicates across splits: {}",
            p.cross_split_duplicates
        );
        let d = &p.details;
        for (what, ids) in [
            ("images missing from dataset.csv", &d.missing_from_csv),
            ("dataset.csv rows without an image", &d.csv_without_image),
            ("YOLO box count differs from COCO", &d.yolo_count_mismatches),
            (
                "fractured images in no split file",
                &d.fractured_not_in_split,
            ),
            ("moved to keep duplicates together", &d.official_split_moves),
        ] {
            if !ids.is_empty() {
                let _ = writeln!(s, "  {what} ({}): {}", ids.len(), list(ids));
            }
        }
        for m in &d.coco_size_mismatches {
            let _ = writeln!(
                s,
                "  COCO size {}×{} differs from displayed {}×{}: {}",
                m.coco[0], m.coco[1], m.displayed[0], m.displayed[1], m.id
            );
        }
        s
    }
}
