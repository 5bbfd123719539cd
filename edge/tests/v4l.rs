//! A real V4L2 device, when this machine has one: one frame is captured and converted. CI
//! machines and this project's build machine have none, so there it says so and passes;
//! the format conversions and the trigger are unit-tested in `edge/src/sources/v4l.rs`. On a unit with
//! a frame grabber, `FV_REQUIRE_V4L=1` makes a missing device a failure.

#![cfg(feature = "v4l")]

use fv_edge::sources::v4l::{capture, FrameFormat, Trigger};
use std::sync::atomic::{AtomicBool, Ordering};

#[test]
fn captures_a_frame_from_the_first_device() {
    let Some(device) = std::fs::read_dir("/dev")
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("video"))
        })
    else {
        fv_e2e::missing("V4L", "no /dev/video* on this machine");
        return;
    };
    let mut errors = Vec::new();
    for format in [
        FrameFormat::Yuyv,
        FrameFormat::Mjpg,
        FrameFormat::Grey,
        FrameFormat::Y16,
    ] {
        let stop = AtomicBool::new(false);
        let mut got = None;
        let r = capture(
            &device,
            format,
            None,
            Trigger::EveryNth { n: 1 },
            &stop,
            |img, name| {
                got = Some((img.map(|i| (i.width(), i.height())), name));
                stop.store(true, Ordering::SeqCst);
            },
        );
        match (r, got) {
            (Ok(()), Some((Ok((w, h)), name))) => {
                assert!(w > 0 && h > 0);
                assert!(name.contains('#'), "{name}");
                return;
            }
            (r, got) => errors.push(format!("{format:?}: {r:?} {got:?}")),
        }
    }
    panic!("{}: no format captured: {errors:?}", device.display());
}
