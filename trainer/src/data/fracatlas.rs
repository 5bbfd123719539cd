//! FracAtlas (Abedeen et al. 2023, CC BY 4.0) in its published layout:
//!
//! ```text
//! FracAtlas/
//!   images/Fractured/*.jpg         images/Non_fractured/*.jpg
//!   dataset.csv                    one row per image: region flags, fractured, views
//!   Annotations/COCO JSON/*.json   boxes of the fractured images, in displayed pixels
//!   Annotations/YOLO/*.txt         the same boxes, normalized
//!   Utilities/Fracture Split/{train,valid,test}.csv   the official detection split
//! ```
//!
//! The published data has flaws, which are handled here and reported, never papered over:
//! truncated JPEGs (excluded), EXIF-rotated images (boxes are in the rotated frame, which
//! `fv_core::imaging` produces), an image whose folder and `dataset.csv` disagree (the
//! folder and the COCO boxes win), and byte-identical duplicates (kept in one split).

use fv_core::imaging::{inspect_bytes, DecodeError, ImageHeader};
use fv_core::BoxXyxy;
use rand::seq::SliceRandom;
use rand_chacha::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Why the dataset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A required file or folder is missing.
    #[error("{path}: not found; is {root} a FracAtlas folder in its published layout (images/, dataset.csv, Annotations/, Utilities/)?")]
    Missing {
        /// What is missing.
        path: PathBuf,
        /// The dataset root given.
        root: PathBuf,
    },
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A CSV file is malformed.
    #[error("{path}: malformed CSV: {source}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: csv::Error,
    },
    /// The COCO file is malformed.
    #[error("{path}: malformed COCO JSON: {source}")]
    Coco {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A split or annotation names an image that is not in the folders.
    #[error("{path}: names {id}, which is in neither images/Fractured nor images/Non_fractured")]
    UnknownImage {
        /// The file naming it.
        path: PathBuf,
        /// The image id.
        id: String,
    },
    /// The split cannot be made with the requested sizes.
    #[error("cannot hold out {wanted} non-fractured images for {split}: only {available} usable ones remain; lower the hold-out sizes (--valid-non-fractured, --test-non-fractured) or add images")]
    TooFewImages {
        /// Which split.
        split: &'static str,
        /// How many were wanted.
        wanted: usize,
        /// How many there were.
        available: usize,
    },
}

/// The anatomical region flags of `dataset.csv`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regions {
    /// The image shows a hand.
    pub hand: bool,
    /// The image shows a leg.
    pub leg: bool,
    /// The image shows a hip.
    pub hip: bool,
    /// The image shows a shoulder.
    pub shoulder: bool,
    /// More than one region in the image.
    pub mixed: bool,
}

/// The one region an image is reported under in per-region breakdowns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    /// Hand.
    Hand,
    /// Leg.
    Leg,
    /// Hip.
    Hip,
    /// Shoulder.
    Shoulder,
    /// Several regions.
    Mixed,
    /// No region flagged.
    Unknown,
}

impl Regions {
    /// The region to report under: `Mixed` when several are flagged.
    pub fn primary(&self) -> Region {
        let flags = [
            (self.hand, Region::Hand),
            (self.leg, Region::Leg),
            (self.hip, Region::Hip),
            (self.shoulder, Region::Shoulder),
        ];
        let set: Vec<Region> = flags.iter().filter(|f| f.0).map(|f| f.1).collect();
        match set.as_slice() {
            _ if self.mixed => Region::Mixed,
            [one] => *one,
            [] => Region::Unknown,
            _ => Region::Mixed,
        }
    }
}

/// One image of the dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRecord {
    /// File name, e.g. `IMG0000019.jpg`, FracAtlas' image id.
    pub id: String,
    /// Full path.
    pub path: PathBuf,
    /// The label: which folder the image is in.
    pub fractured: bool,
    /// Region flags from `dataset.csv`, if it has a row.
    pub regions: Regions,
    /// Fracture boxes in displayed pixels (after EXIF orientation), from COCO.
    pub boxes: Vec<BoxXyxy>,
    /// Header facts, or why the file is unusable.
    pub header: Result<ImageHeader, String>,
    /// SHA-256 of the file bytes, for duplicate detection.
    pub sha256: [u8; 32],
}

impl ImageRecord {
    /// Whether the file decodes to a complete image.
    pub fn is_usable(&self) -> bool {
        self.header.is_ok()
    }
}

/// An image whose folder and `dataset.csv` disagree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LabelConflict {
    /// The image id.
    pub id: String,
    /// Label from the folder (the one used).
    pub folder_fractured: bool,
    /// Label from `dataset.csv`.
    pub csv_fractured: bool,
    /// Whether COCO has boxes for it (which sides with the folder).
    pub has_boxes: bool,
}

/// An image that cannot be used, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unusable {
    /// The image id.
    pub id: String,
    /// The error code (`truncated`, `corrupt`, ...).
    pub code: String,
    /// Why it was set aside, for the data report.
    pub reason: String,
}

/// An image whose COCO size is not its displayed size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SizeMismatch {
    /// The image id.
    pub id: String,
    /// `[width, height]` from COCO.
    pub coco: [u32; 2],
    /// `[width, height]` after EXIF orientation.
    pub displayed: [u32; 2],
}

/// Everything found wrong with the data, and what was done about it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Problems {
    /// Files that do not decode completely (excluded from every split).
    pub unusable: Vec<Unusable>,
    /// Images displayed rotated or flipped by EXIF orientation (boxes are in that frame).
    pub exif_rotated: Vec<String>,
    /// Folder and `dataset.csv` disagree (the folder and COCO win).
    pub label_conflicts: Vec<LabelConflict>,
    /// Groups of byte-identical files (each group kept within one split).
    pub duplicate_groups: Vec<Vec<String>>,
    /// Images without a `dataset.csv` row.
    pub missing_from_csv: Vec<String>,
    /// `dataset.csv` rows without an image.
    pub csv_without_image: Vec<String>,
    /// Fractured images whose COCO size disagrees with the displayed size.
    pub coco_size_mismatches: Vec<SizeMismatch>,
    /// Fractured images whose YOLO label count differs from COCO's.
    pub yolo_count_mismatches: Vec<String>,
    /// Fractured images in no official split file.
    pub fractured_not_in_split: Vec<String>,
    /// Images the official split put apart from a byte-identical copy, moved to the
    /// copy's earliest split (train before valid before test).
    pub official_split_moves: Vec<String>,
}

/// Indices into [`FracAtlas::images`], one list per split.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// Training images.
    pub train: Vec<usize>,
    /// Validation images: thresholds and checkpoints are chosen here.
    pub valid: Vec<usize>,
    /// Test images: reported, never tuned on.
    pub test: Vec<usize>,
}

impl Split {
    /// The three parts with their names.
    pub fn parts(&self) -> [(super::SplitPart, &[usize]); 3] {
        use super::SplitPart;
        [
            (SplitPart::Train, &self.train),
            (SplitPart::Valid, &self.valid),
            (SplitPart::Test, &self.test),
        ]
    }
}

/// How non-fractured images are assigned to the hold-outs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitMethod {
    /// A seeded shuffle of the list (runs before 2026-12): adding images to the folder moves
    /// images between parts, so it is kept only to re-evaluate those runs on their own split.
    /// Split files written without a method meant this.
    #[default]
    Shuffle,
    /// Ranked by a salted SHA-256 of the file name; the lowest ranks fill test, then
    /// validation. Adding images can only push held-out images towards training, never a
    /// training image into a hold-out, so a model trained on a smaller copy of FracAtlas stays
    /// honestly evaluable on a larger one.
    NameHash,
}

/// How the classification split holds out non-fractured images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassificationSplitConfig {
    /// How images are assigned (`shuffle` for files that do not say).
    #[serde(default)]
    pub method: SplitMethod,
    /// Seed of the shuffle, or salt of the name hash.
    pub seed: u64,
    /// Non-fractured validation images.
    pub valid_non_fractured: usize,
    /// Non-fractured test images.
    pub test_non_fractured: usize,
}

impl Default for ClassificationSplitConfig {
    /// The study's counts, 163 validation and 200 test non-fractured images, by name hash.
    fn default() -> Self {
        ClassificationSplitConfig {
            method: SplitMethod::NameHash,
            seed: 42,
            valid_non_fractured: 163,
            test_non_fractured: 200,
        }
    }
}

/// The rank of a file name in the name-hash split: the first 8 bytes of
/// SHA-256(salt as little-endian bytes, name). Independent of every other file.
pub fn name_rank(salt: u64, name: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(salt.to_le_bytes())
        .chain_update(name.as_bytes())
        .finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// FracAtlas, loaded and checked.
#[derive(Clone, Debug)]
pub struct FracAtlas {
    /// The dataset folder.
    pub root: PathBuf,
    /// Every image in the folders, sorted by id.
    pub images: Vec<ImageRecord>,
    /// What was found wrong.
    pub problems: Problems,
    /// The official detection split (fractured images only), duplicates kept together.
    pub detection_split: Split,
}

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    width: u32,
    height: u32,
    file_name: String,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    image_id: u64,
    bbox: [f32; 4],
}

#[derive(Deserialize)]
struct CsvRow {
    image_id: String,
    hand: u8,
    leg: u8,
    hip: u8,
    shoulder: u8,
    mixed: u8,
    fractured: u8,
}

fn require(root: &Path, rel: &str) -> Result<PathBuf, DatasetError> {
    let p = root.join(rel);
    if p.exists() {
        Ok(p)
    } else {
        Err(DatasetError::Missing {
            path: p,
            root: root.to_owned(),
        })
    }
}

fn list_images(dir: &Path) -> Result<Vec<String>, DatasetError> {
    let io = |source| DatasetError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        let name = name.to_string_lossy().into_owned();
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".jpg") || lower.ends_with(".jpeg") || lower.ends_with(".png") {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

fn read_id_csv(path: &Path) -> Result<Vec<String>, DatasetError> {
    #[derive(Deserialize)]
    struct Row {
        image_id: String,
    }
    let csv_err = |source| DatasetError::Csv {
        path: path.to_owned(),
        source,
    };
    let mut r = csv::Reader::from_path(path).map_err(csv_err)?;
    r.deserialize::<Row>()
        .map(|row| row.map(|r| r.image_id.trim().to_owned()).map_err(csv_err))
        .collect()
}

impl FracAtlas {
    /// Reads and checks the dataset at `root`. Reads every image file once (for its
    /// header, completeness and hash), without decoding pixels.
    pub fn open(root: &Path) -> Result<Self, DatasetError> {
        let frac_dir = require(root, "images/Fractured")?;
        let non_dir = require(root, "images/Non_fractured")?;
        let csv_path = require(root, "dataset.csv")?;
        let coco_dir = require(root, "Annotations/COCO JSON")?;
        let split_dir = require(root, "Utilities/Fracture Split")?;
        let mut problems = Problems::default();

        // Images, labelled by folder.
        let mut images = Vec::new();
        for (dir, fractured) in [(&frac_dir, true), (&non_dir, false)] {
            for id in list_images(dir)? {
                let path = dir.join(&id);
                let bytes = std::fs::read(&path).map_err(|source| DatasetError::Io {
                    path: path.clone(),
                    source,
                })?;
                let header = match inspect_bytes(&bytes, &path) {
                    Ok(h) => {
                        if h.is_reoriented() {
                            problems.exif_rotated.push(id.clone());
                        }
                        Ok(h)
                    }
                    Err(e) => {
                        let reason = match &e {
                            DecodeError::Truncated { detail, .. } => detail.clone(),
                            other => other.to_string(),
                        };
                        problems.unusable.push(Unusable {
                            id: id.clone(),
                            code: e.code().to_owned(),
                            reason: reason.clone(),
                        });
                        Err(reason)
                    }
                };
                images.push(ImageRecord {
                    id,
                    path,
                    fractured,
                    regions: Regions::default(),
                    boxes: Vec::new(),
                    header,
                    sha256: Sha256::digest(&bytes).into(),
                });
            }
        }
        // Sorted by id, as FracAtlas numbers its images across both folders.
        images.sort_by(|a, b| a.id.cmp(&b.id));
        problems.unusable.sort_by(|a, b| a.id.cmp(&b.id));
        problems.exif_rotated.sort();
        let index: HashMap<String, usize> = images
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect();

        // COCO boxes, in displayed pixels.
        let coco_path = std::fs::read_dir(&coco_dir)
            .map_err(|source| DatasetError::Io {
                path: coco_dir.clone(),
                source,
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .min()
            .ok_or_else(|| DatasetError::Missing {
                path: coco_dir.join("*.json"),
                root: root.to_owned(),
            })?;
        let coco_text = std::fs::read_to_string(&coco_path).map_err(|source| DatasetError::Io {
            path: coco_path.clone(),
            source,
        })?;
        let coco: CocoFile =
            serde_json::from_str(&coco_text).map_err(|source| DatasetError::Coco {
                path: coco_path.clone(),
                source,
            })?;
        let mut coco_images: HashMap<u64, usize> = HashMap::new();
        for ci in &coco.images {
            let &i = index
                .get(&ci.file_name)
                .ok_or_else(|| DatasetError::UnknownImage {
                    path: coco_path.clone(),
                    id: ci.file_name.clone(),
                })?;
            coco_images.insert(ci.id, i);
            if let Ok(h) = &images[i].header {
                let (w, h) = h.display_size();
                if (w, h) != (ci.width, ci.height) {
                    problems.coco_size_mismatches.push(SizeMismatch {
                        id: ci.file_name.clone(),
                        coco: [ci.width, ci.height],
                        displayed: [w, h],
                    });
                }
            }
        }
        for a in &coco.annotations {
            if let Some(&i) = coco_images.get(&a.image_id) {
                let [x, y, w, h] = a.bbox;
                images[i].boxes.push(BoxXyxy::from_xywh(x, y, w, h));
            }
        }

        // YOLO labels as a cross-check of the box counts.
        if let Ok(yolo_dir) = require(root, "Annotations/YOLO") {
            for r in images.iter().filter(|r| r.fractured) {
                let stem = r.id.rsplit_once('.').map_or(r.id.as_str(), |s| s.0);
                let n = std::fs::read_to_string(yolo_dir.join(format!("{stem}.txt")))
                    .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count())
                    .unwrap_or(0);
                if n != r.boxes.len() {
                    problems.yolo_count_mismatches.push(r.id.clone());
                }
            }
        }

        // dataset.csv: regions, and the label it claims.
        let csv_err = |source| DatasetError::Csv {
            path: csv_path.clone(),
            source,
        };
        let mut seen = vec![false; images.len()];
        for row in csv::Reader::from_path(&csv_path)
            .map_err(csv_err)?
            .deserialize::<CsvRow>()
        {
            let row = row.map_err(csv_err)?;
            let Some(&i) = index.get(row.image_id.trim()) else {
                problems.csv_without_image.push(row.image_id);
                continue;
            };
            seen[i] = true;
            let r = &mut images[i];
            r.regions = Regions {
                hand: row.hand == 1,
                leg: row.leg == 1,
                hip: row.hip == 1,
                shoulder: row.shoulder == 1,
                mixed: row.mixed == 1,
            };
            if (row.fractured == 1) != r.fractured {
                problems.label_conflicts.push(LabelConflict {
                    id: r.id.clone(),
                    folder_fractured: r.fractured,
                    csv_fractured: row.fractured == 1,
                    has_boxes: !r.boxes.is_empty(),
                });
            }
        }
        problems.missing_from_csv = images
            .iter()
            .zip(&seen)
            .filter(|(_, s)| !**s)
            .map(|(r, _)| r.id.clone())
            .collect();

        // Byte-identical duplicates.
        let mut by_hash: BTreeMap<[u8; 32], Vec<usize>> = BTreeMap::new();
        for (i, r) in images.iter().enumerate() {
            by_hash.entry(r.sha256).or_default().push(i);
        }
        let mut groups: Vec<Vec<usize>> = by_hash.into_values().filter(|g| g.len() > 1).collect();
        groups.sort();
        problems.duplicate_groups = groups
            .iter()
            .map(|g| g.iter().map(|&i| images[i].id.clone()).collect())
            .collect();

        // The official detection split.
        let mut which: Vec<Option<u8>> = vec![None; images.len()];
        for (k, name) in ["train.csv", "valid.csv", "test.csv"].iter().enumerate() {
            let path = split_dir.join(name);
            if !path.exists() {
                return Err(DatasetError::Missing {
                    path,
                    root: root.to_owned(),
                });
            }
            for id in read_id_csv(&path)? {
                let &i = index.get(&id).ok_or(DatasetError::UnknownImage {
                    path: path.clone(),
                    id: id.clone(),
                })?;
                which[i] = Some(k as u8);
            }
        }
        // A byte-identical copy in another split would leak the answer into evaluation:
        // keep every copy in the earliest split any of them was given.
        for g in &groups {
            if let Some(first) = g.iter().filter_map(|&i| which[i]).min() {
                for &i in g {
                    if which[i].is_some_and(|k| k != first) {
                        which[i] = Some(first);
                        problems.official_split_moves.push(images[i].id.clone());
                    }
                }
            }
        }
        let mut detection_split = Split::default();
        for (i, r) in images.iter().enumerate() {
            match which[i] {
                _ if !r.is_usable() => {}
                Some(0) => detection_split.train.push(i),
                Some(1) => detection_split.valid.push(i),
                Some(_) => detection_split.test.push(i),
                None if r.fractured => problems.fractured_not_in_split.push(r.id.clone()),
                None => {}
            }
        }

        Ok(FracAtlas {
            root: root.to_owned(),
            images,
            problems,
            detection_split,
        })
    }

    /// Images labelled fractured.
    pub fn fractured_count(&self) -> usize {
        self.images.iter().filter(|r| r.fractured).count()
    }

    /// Boxes over all images.
    pub fn box_count(&self) -> usize {
        self.images.iter().map(|r| r.boxes.len()).sum()
    }

    /// The study's classification split: fractured images as the official detection split,
    /// non-fractured usable images into validation and test hold-outs of the configured sizes
    /// (by `config.method`), the rest to training. Byte-identical copies move together.
    pub fn classification_split(
        &self,
        config: &ClassificationSplitConfig,
    ) -> Result<Split, DatasetError> {
        let mut split = self.detection_split.clone();
        let mut group_of: HashMap<[u8; 32], Vec<usize>> = HashMap::new();
        for (i, r) in self.images.iter().enumerate() {
            if !r.fractured && r.is_usable() {
                group_of.entry(r.sha256).or_default().push(i);
            }
        }
        let mut groups: Vec<Vec<usize>> = group_of.into_values().collect();
        for g in &mut groups {
            g.sort();
        }
        groups.sort();
        let available: usize = groups.iter().map(Vec::len).sum();
        let wanted = config.valid_non_fractured + config.test_non_fractured;
        if wanted > available {
            return Err(DatasetError::TooFewImages {
                split: "valid + test",
                wanted,
                available,
            });
        }
        match config.method {
            SplitMethod::Shuffle => {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed);
                groups.shuffle(&mut rng);
            }
            SplitMethod::NameHash => {
                // A group ranks by its lowest-ranked member, so a duplicate added later can
                // only pull its group towards the hold-outs it would have joined alone.
                groups.sort_by_cached_key(|g| {
                    g.iter()
                        .map(|&i| name_rank(config.seed, &self.images[i].id))
                        .min()
                });
            }
        }
        let (mut n_test, mut n_valid) = (0, 0);
        for g in groups {
            let target = if n_test + g.len() <= config.test_non_fractured {
                n_test += g.len();
                &mut split.test
            } else if n_valid + g.len() <= config.valid_non_fractured {
                n_valid += g.len();
                &mut split.valid
            } else {
                &mut split.train
            };
            target.extend(g);
        }
        for part in [&mut split.train, &mut split.valid, &mut split.test] {
            part.sort();
        }
        Ok(split)
    }

    /// Groups of byte-identical images that a split puts in more than one part. Must be 0.
    pub fn cross_split_duplicates(&self, split: &Split) -> usize {
        let mut part_of: HashMap<usize, usize> = HashMap::new();
        for (k, (_, ids)) in split.parts().iter().enumerate() {
            for &i in *ids {
                part_of.insert(i, k);
            }
        }
        let mut by_hash: HashMap<[u8; 32], Vec<usize>> = HashMap::new();
        for (i, r) in self.images.iter().enumerate() {
            if let Some(&k) = part_of.get(&i) {
                by_hash.entry(r.sha256).or_default().push(k);
            }
        }
        by_hash
            .values()
            .filter(|parts| parts.iter().any(|&k| k != parts[0]))
            .count()
    }
}
