//! `fv_edge::inspect` on generated inputs.

use fv_core::imaging::DecodeOptions;
use fv_edge::inspect::inspect;

#[test]
fn sixteen_bit_png_reports_its_depth() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("x.png");
    image::ImageBuffer::<image::Luma<u16>, _>::from_fn(6, 4, |x, _| image::Luma([x as u16 * 9000]))
        .save(&path)
        .unwrap();
    let line = inspect(&path, &DecodeOptions::default());
    assert!(line.ok, "{line:?}");
    assert_eq!(line.bits, Some(16));
    assert_eq!(line.size, Some([6, 4]));
}

#[test]
fn text_file_named_dcm_is_refused_with_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("report.dcm");
    std::fs::write(&path, "patient report, not an image\n").unwrap();
    let line = inspect(&path, &DecodeOptions::default());
    let err = line.error.unwrap();
    assert_eq!(err.code, "unsupported_format");
    assert!(err.message.contains("report.dcm"));
}
