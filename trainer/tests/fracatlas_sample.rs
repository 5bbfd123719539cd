//! The FracAtlas data layer on the committed sample (`tests/data/fracatlas-sample`), and
//! on copies of it with flaws added.

mod common;

use common::{sample_dir, small_holdout};
use fv_train::data::fracatlas::DatasetError;
use fv_train::data::{ClassificationSplitConfig, FracAtlas};
use std::path::Path;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn ids(data: &FracAtlas, idx: &[usize]) -> Vec<String> {
    idx.iter().map(|&i| data.images[i].id.clone()).collect()
}

#[test]
fn sample_counts_flaws_and_boxes() {
    let data = FracAtlas::open(&sample_dir()).unwrap();
    assert_eq!(data.images.len(), 12);
    assert_eq!(data.fractured_count(), 6);
    assert_eq!(data.box_count(), 7);
    let p = &data.problems;
    let unusable: Vec<&str> = p.unusable.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(unusable, ["IMG0004092.jpg"]);
    assert_eq!(p.unusable[0].code, "truncated");
    assert_eq!(
        p.exif_rotated,
        ["IMG0000429.jpg", "IMG0002588.jpg", "IMG0002628.jpg"]
    );
    assert_eq!(p.label_conflicts.len(), 1);
    let lc = &p.label_conflicts[0];
    assert_eq!(lc.id, "IMG0003298.jpg");
    assert!(lc.folder_fractured && !lc.csv_fractured && lc.has_boxes);
    assert_eq!(p.duplicate_groups, [["IMG0000002.jpg", "IMG0002296.jpg"]]);
    assert!(
        p.coco_size_mismatches.is_empty(),
        "{:?}",
        p.coco_size_mismatches
    );
    assert!(p.yolo_count_mismatches.is_empty());
    assert!(p.missing_from_csv.is_empty() && p.csv_without_image.is_empty());

    // The label conflict is resolved by the folder: it is fractured and in the test split.
    let conflict = data
        .images
        .iter()
        .position(|r| r.id == "IMG0003298.jpg")
        .unwrap();
    assert!(data.images[conflict].fractured);
    assert!(data.detection_split.test.contains(&conflict));

    // Boxes of the EXIF-rotated image come in its displayed frame (454 wide, 373 high).
    let rotated = data
        .images
        .iter()
        .find(|r| r.id == "IMG0002628.jpg")
        .unwrap();
    let b = rotated.boxes[0];
    assert!((b.x1 - 177.30757).abs() < 1e-3 && (b.y2 - (74.845_39 + 24.232_73)).abs() < 1e-3);
    assert_eq!(rotated.header.as_ref().unwrap().display_size(), (454, 373));

    let d = &data.detection_split;
    assert_eq!(
        (d.train.len(), d.valid.len(), d.test.len()),
        (3, 1, 2),
        "official split"
    );
}

#[test]
fn classification_split_is_seeded_excludes_truncated_and_keeps_duplicates_together() {
    let data = FracAtlas::open(&sample_dir()).unwrap();
    let a = data.classification_split(&small_holdout(7)).unwrap();
    let b = data.classification_split(&small_holdout(7)).unwrap();
    assert_eq!(a, b, "same seed, same split");
    let mut differs = false;
    for seed in 0..40 {
        let s = data.classification_split(&small_holdout(seed)).unwrap();
        assert_eq!(data.cross_split_duplicates(&s), 0, "seed {seed}");
        let all: Vec<String> = s.parts().iter().flat_map(|(_, p)| ids(&data, p)).collect();
        assert!(
            !all.contains(&"IMG0004092.jpg".to_owned()),
            "truncated image in a split"
        );
        assert_eq!(all.len(), 11, "every usable image exactly once");
        let non_fractured_test = s
            .test
            .iter()
            .filter(|&&i| !data.images[i].fractured)
            .count();
        assert_eq!(non_fractured_test, 1);
        differs |= s != a;
    }
    assert!(differs, "the seed changes the split");
}

#[test]
fn too_large_holdout_is_a_clear_error() {
    let data = FracAtlas::open(&sample_dir()).unwrap();
    let err = data
        .classification_split(&ClassificationSplitConfig::default())
        .unwrap_err();
    assert!(matches!(
        err,
        DatasetError::TooFewImages {
            wanted: 363,
            available: 5,
            ..
        }
    ));
    assert!(err.to_string().contains("--valid-non-fractured"));
}

#[test]
fn duplicate_across_the_official_split_is_moved_to_train() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("FracAtlas");
    copy_dir(&sample_dir(), &root);
    // A byte-identical copy of a training image, listed in the official test split.
    std::fs::copy(
        root.join("images/Fractured/IMG0002628.jpg"),
        root.join("images/Fractured/IMG9999999.jpg"),
    )
    .unwrap();
    let test_csv = root.join("Utilities/Fracture Split/test.csv");
    let mut text = std::fs::read_to_string(&test_csv).unwrap();
    text.push_str("\r\nIMG9999999.jpg\r\n");
    std::fs::write(&test_csv, text).unwrap();

    let data = FracAtlas::open(&root).unwrap();
    assert_eq!(data.problems.official_split_moves, ["IMG9999999.jpg"]);
    assert!(ids(&data, &data.detection_split.train).contains(&"IMG9999999.jpg".to_owned()));
    assert_eq!(data.cross_split_duplicates(&data.detection_split), 0);
    assert_eq!(data.problems.missing_from_csv, ["IMG9999999.jpg"]);
}

#[test]
fn missing_layout_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let err = FracAtlas::open(tmp.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("images/Fractured") && msg.contains("published layout"),
        "{msg}"
    );
}

#[test]
fn split_naming_an_unknown_image_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("FracAtlas");
    copy_dir(&sample_dir(), &root);
    let valid_csv = root.join("Utilities/Fracture Split/valid.csv");
    std::fs::write(&valid_csv, "image_id\nIMG0000001.jpg\n").unwrap();
    let err = FracAtlas::open(&root).unwrap_err();
    assert!(err.to_string().contains("IMG0000001.jpg"), "{err}");
    assert!(err.to_string().contains("valid.csv"), "{err}");
}

/// A copy of `src` with a JPEG comment after the start-of-image marker: another file, the
/// same picture.
fn jpeg_variant(src: &Path, dest: &Path, tag: u16) {
    let bytes = std::fs::read(src).unwrap();
    let mut out = bytes[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xFE, 0x00, 0x04]);
    out.extend_from_slice(&tag.to_be_bytes());
    out.extend_from_slice(&bytes[2..]);
    std::fs::write(dest, out).unwrap();
}

#[test]
fn adding_images_never_moves_a_training_image_into_a_hold_out() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("FracAtlas");
    copy_dir(&sample_dir(), &root);
    let config = ClassificationSplitConfig {
        valid_non_fractured: 2,
        test_non_fractured: 2,
        ..ClassificationSplitConfig::default()
    };
    let non_fractured_train = |data: &FracAtlas, split: &fv_train::data::Split| -> Vec<String> {
        split
            .train
            .iter()
            .filter(|&&i| !data.images[i].fractured)
            .map(|&i| data.images[i].id.clone())
            .collect()
    };
    let neg = root.join("images/Non_fractured");
    let mut before: Option<Vec<String>> = None;
    let mut held_out_before: Vec<String> = Vec::new();
    let mut moved_out_of_holdout = 0;
    for round in 0..4u16 {
        let data = FracAtlas::open(&root).unwrap();
        let split = data.classification_split(&config).unwrap();
        let counts = |p: &[usize]| p.iter().filter(|&&i| !data.images[i].fractured).count();
        assert_eq!((counts(&split.valid), counts(&split.test)), (2, 2));
        let train = non_fractured_train(&data, &split);
        if let Some(before) = &before {
            for id in before {
                assert!(
                    train.contains(id),
                    "round {round}: {id} left training when images were added"
                );
            }
            moved_out_of_holdout += held_out_before
                .iter()
                .filter(|id| train.contains(id))
                .count();
        }
        held_out_before = [&split.valid, &split.test]
            .into_iter()
            .flatten()
            .filter(|&&i| !data.images[i].fractured)
            .map(|&i| data.images[i].id.clone())
            .collect();
        before = Some(train);
        // Six more non-fractured images for the next round.
        for k in 0..6 {
            let tag = round * 100 + k;
            jpeg_variant(
                &neg.join("IMG0000002.jpg"),
                &neg.join(format!("IMG8{tag:06}.jpg")),
                tag,
            );
        }
    }
    // Some new images ranked into the hold-outs and pushed older ones into training: the
    // hold-outs really were re-ranked, not frozen.
    assert!(moved_out_of_holdout > 0);
}
