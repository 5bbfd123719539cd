//! fv-edge as a DICOM node, against peers no one here wrote: DCMTK's `storescu` and `echoscu`
//! play the X-ray unit, its `storescp` the PACS, and dicom3tools' `dciodvfy` checks the
//! Structured Report. Bad peers too: a wrong called AE title, a calling AE title not allowed,
//! an unsupported SOP class, an object over the limit, an association dropped mid-object;
//! and hostile ones: a command set declaring 4 GiB, 60 connections that never associate, the
//! same image on two associations at once; and the systemd unit's mount layout.
//!
//! Without DCMTK (or dicom3tools for `dciodvfy`) the tests say so and pass, unless
//! FV_REQUIRE_DCMTK=1 (CI), which makes that a failure.

mod common;

use common::*;
use dicom_dictionary_std::{tags, uids};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

/// `tool` on the PATH, or `None` after saying why the test does nothing.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let what = format!("{name} not found (Debian: apt-get install dcmtk dicom3tools)");
        fv_e2e::missing("DCMTK", &what);
    }
    found
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    eprintln!(
        "{:?}: {}\n{}{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// DCMTK's `storescp` as the PACS: AE `PACS` on `port`, writing what it receives to `dir`.
struct Pacs {
    child: Child,
    dir: PathBuf,
}

impl Pacs {
    fn start(storescp: &Path, dir: &Path, port: u16) -> Pacs {
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new(storescp)
            .args(["--aetitle", "PACS", "--output-directory"])
            .arg(dir)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("storescp to listen", T, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Pacs {
            child,
            dir: dir.to_owned(),
        }
    }

    fn received(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Objects waiting in the daemon's PACS outbox.
fn queued(d: &Daemon) -> usize {
    d.depth_of("pacs-outbox")
}

/// The objects of SOP class `class` among `files`.
fn of_class(files: &[PathBuf], class: &str) -> Vec<PathBuf> {
    files
        .iter()
        .filter(|f| attr(f, tags::SOP_CLASS_UID).as_deref() == Some(class))
        .cloned()
        .collect()
}

impl Drop for Pacs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon that listens for DICOM on `port` as `FVEDGE` and reports to `pacs_port`.
fn node(dir: &Path, port: u16, pacs_port: u16, config: Option<&str>) -> Daemon {
    let listen = format!("127.0.0.1:{port}");
    let pacs = format!("PACS@127.0.0.1:{pacs_port}");
    let env = [
        ("FV_DICOM_LISTEN", listen.as_str()),
        ("FV_DICOM_AE", "FVEDGE"),
        ("FV_PACS", pacs.as_str()),
    ];
    match config {
        None => Daemon::start(dir, None, &env),
        Some(toml) => {
            let path = dir.join("fv-edge.toml");
            std::fs::write(&path, toml).unwrap();
            Daemon::spawn(dir, None, &env, Some(&path))
        }
    }
}

fn echo(echoscu: &Path, called: &str, port: u16) -> bool {
    run(Command::new(echoscu)
        .args(["-aet", "XRAY1", "-aec", called, "127.0.0.1"])
        .arg(port.to_string()))
    .status
    .success()
}

fn wait_listening(echoscu: &Path, port: u16) {
    wait_until("fv-edge to answer C-ECHO", T, || {
        echo(echoscu, "FVEDGE", port)
    });
}

fn store(storescu: &Path, calling: &str, port: u16, file: &Path) -> Output {
    run(Command::new(storescu)
        .args(["-aet", calling, "-aec", "FVEDGE", "127.0.0.1"])
        .arg(port.to_string())
        .arg(file))
}

/// The attribute `tag` of a DICOM file, as text.
fn attr(file: &Path, tag: dicom_core::Tag) -> Option<String> {
    let obj = dicom_object::open_file(file).ok()?;
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
}

/// Every value of `tag` anywhere in the file (sequences included), from dcmdump.
fn all_values(dcmdump: &Path, file: &Path, tag: &str) -> Vec<String> {
    let out = Command::new(dcmdump)
        .args(["+P", tag])
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let a = l.find('[')?;
            let b = l[a..].find(']')? + a;
            Some(l[a + 1..b].to_owned())
        })
        .collect()
}

#[test]
fn an_image_stored_by_storescu_brings_a_valid_report_to_the_pacs() {
    let (Some(storescu), Some(storescp), Some(echoscu), Some(dcmdump), Some(dciodvfy)) = (
        tool("storescu"),
        tool("storescp"),
        tool("echoscu"),
        tool("dcmdump"),
        tool("dciodvfy"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (port, pacs_port) = (free_port(), free_port());
    let pacs = Pacs::start(&storescp, &tmp.path().join("pacs"), pacs_port);
    let mut d = node(tmp.path(), port, pacs_port, None);
    wait_listening(&echoscu, port);

    // A fractured sample, so that the report has boxes.
    let dcm = tmp.path().join("image.dcm");
    dicom_from_jpeg(&sample("IMG0002322.jpg"), &dcm, "DX", true);
    assert!(store(&storescu, "XRAY1", port, &dcm).status.success());
    // Stored means answered, and storescp answers once the file is written.
    wait_until("the report and the marks stored at the PACS", T, || {
        pacs.received().len() == 2 && queued(&d) == 0
    });
    let sr = of_class(&pacs.received(), uids::COMPREHENSIVE_SR_STORAGE)[0].clone();
    let sc = of_class(&pacs.received(), uids::SECONDARY_CAPTURE_IMAGE_STORAGE)[0].clone();

    // What a PACS needs to file it: the source's patient and study, a new series, the image.
    assert_eq!(
        attr(&sr, tags::SOP_CLASS_UID).as_deref(),
        Some(uids::COMPREHENSIVE_SR_STORAGE)
    );
    assert_eq!(attr(&sr, tags::MODALITY).as_deref(), Some("SR"));
    assert_eq!(attr(&sr, tags::PATIENT_ID).as_deref(), Some("PID-777"));
    assert_eq!(attr(&sr, tags::PATIENT_NAME).as_deref(), Some("DOE^JOHN"));
    assert_eq!(
        attr(&sr, tags::STUDY_INSTANCE_UID).as_deref(),
        Some(STUDY_UID)
    );
    assert_ne!(
        attr(&sr, tags::SERIES_INSTANCE_UID).as_deref(),
        Some(SERIES_UID)
    );
    let refs = all_values(&dcmdump, &sr, "0008,1155");
    assert!(
        !refs.is_empty() && refs.iter().all(|r| r == SOP_UID),
        "the report references the image: {refs:?}"
    );

    // The reading inside matches the local result.
    let results = d.done_results();
    assert_eq!(results.len(), 1, "{results:?}");
    let p = results[0]["fracture_probability"].as_f64().unwrap();
    let nums = all_values(&dcmdump, &sr, "0040,a30a");
    let reported: f64 = nums[0].trim().parse().unwrap();
    assert!((reported - p).abs() < 1e-5, "{reported} vs {p}");
    let boxes = results[0]["boxes"].as_array().unwrap().len();
    assert_eq!(
        all_values(&dcmdump, &sr, "0070,0023").len(),
        boxes,
        "one image region per box"
    );
    assert_eq!(
        nums.len(),
        1 + boxes,
        "the probability and each box's score"
    );

    // dciodvfy: no error in either IOD.
    for object in [&sr, &sc] {
        let v = run(Command::new(&dciodvfy).arg(object));
        let text =
            String::from_utf8_lossy(&v.stderr).into_owned() + &String::from_utf8_lossy(&v.stdout);
        let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("Error")).collect();
        assert!(
            errors.is_empty(),
            "dciodvfy {}: {errors:#?}",
            object.display()
        );
    }

    // The marks: in the source's study, a derived series of their own, the source referenced,
    // and, rendered by DCMTK as a viewer would, the overlay the radiographer sees.
    assert_eq!(attr(&sc, tags::PATIENT_ID).as_deref(), Some("PID-777"));
    assert_eq!(
        attr(&sc, tags::STUDY_INSTANCE_UID).as_deref(),
        Some(STUDY_UID)
    );
    assert_eq!(
        attr(&sc, tags::IMAGE_TYPE).as_deref(),
        Some("DERIVED\\SECONDARY")
    );
    assert_eq!(
        attr(&sc, tags::BURNED_IN_ANNOTATION).as_deref(),
        Some("YES")
    );
    // The side the source's Image Laterality names, for the PACS to file the marks with.
    assert_eq!(attr(&sc, tags::LATERALITY).as_deref(), Some("L"));
    assert_ne!(
        attr(&sc, tags::SERIES_INSTANCE_UID),
        attr(&sr, tags::SERIES_INSTANCE_UID)
    );
    assert_eq!(all_values(&dcmdump, &sc, "0008,1155"), [SOP_UID]);
    if let Some(dcm2pnm) = tool("dcm2pnm") {
        let png = tmp.path().join("marks.png");
        let r = run(Command::new(dcm2pnm).arg("+on").arg(&sc).arg(&png));
        assert!(r.status.success(), "dcm2pnm: {r:?}");
        let rendered = image::open(&png).unwrap().to_rgb8();
        wait_until("the local overlay", T, || {
            std::fs::read_dir(d.watch.join("done")).is_ok_and(|r| {
                r.flatten()
                    .any(|e| e.path().to_string_lossy().ends_with("overlay.png"))
            })
        });
        // The capture is the overlay at most 1024 pixels on its long side.
        let overlay = image::open(d.done_file("overlay.png")).unwrap().to_rgb8();
        let (w, h) = overlay.dimensions();
        let k = f64::from(fv_edge::sinks::sc::MAX_SIDE) / f64::from(w.max(h));
        let overlay = if k < 1.0 {
            let (sw, sh) = (
                (f64::from(w) * k).round() as u32,
                (f64::from(h) * k).round() as u32,
            );
            image::imageops::resize(&overlay, sw, sh, image::imageops::FilterType::Triangle)
        } else {
            overlay
        };
        assert_eq!(rendered.dimensions(), overlay.dimensions());
        let diff = rendered
            .as_raw()
            .iter()
            .zip(overlay.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            diff, 0,
            "the rendering differs from the overlay in {diff} values"
        );
        if let Ok(keep) = std::env::var("FV_KEEP_RENDERING") {
            std::fs::copy(&png, keep).unwrap();
        }
    }

    // The same image again: acknowledged, not read twice, nothing sent twice. Then another
    // image: once it is read and its objects stored, with nothing left in the watch folder,
    // the duplicate would have been read by then had it been written there.
    assert!(store(&storescu, "XRAY1", port, &dcm).status.success());
    let other = tmp.path().join("other.dcm");
    dicom_from_jpeg_as(
        &sample("IMG0002322.jpg"),
        &other,
        "DX",
        true,
        uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
        "1.2.826.0.1.3680043.8.498.99",
    );
    assert!(store(&storescu, "XRAY1", port, &other).status.success());
    // An input is moved to done/ last, after its result and its PACS objects.
    let moved = |d: &Daemon| {
        std::fs::read_dir(d.watch.join("done")).map_or(0, |r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.ends_with(".dcm") && !n.ends_with(".sr.dcm") && !n.ends_with(".sc.dcm")
                })
                .count()
        })
    };
    wait_until(
        "the other image read, its objects stored, itself moved",
        T,
        || moved(&d) >= 2 && pacs.received().len() >= 4 && queued(&d) == 0,
    );
    let waiting: Vec<PathBuf> = std::fs::read_dir(&d.watch)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    assert!(waiting.is_empty(), "{waiting:?}");
    assert_eq!(d.done_results().len(), 2);
    assert_eq!(pacs.received().len(), 4);
    assert!(echo(&echoscu, "FVEDGE", port));
    assert!(d.stop("TERM").success());

    // The log keeps no patient data, though the network path handled all of it.
    let log = std::fs::read_to_string(tmp.path().join("fv-edge.log")).unwrap();
    for secret in PHI {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

#[test]
fn reports_wait_for_a_pacs_that_is_down_across_a_kill_9() {
    let (Some(storescu), Some(storescp), Some(echoscu)) =
        (tool("storescu"), tool("storescp"), tool("echoscu"))
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (port, pacs_port) = (free_port(), free_port());
    let mut d = node(tmp.path(), port, pacs_port, None);
    wait_listening(&echoscu, port);
    let uids_sent = [
        "1.2.826.0.1.3680043.8.498.11",
        "1.2.826.0.1.3680043.8.498.12",
    ];
    for (i, uid) in uids_sent.iter().enumerate() {
        let f = tmp.path().join(format!("{i}.dcm"));
        dicom_from_jpeg_as(
            &sample("IMG0002322.jpg"),
            &f,
            "DX",
            true,
            uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
            uid,
        );
        assert!(store(&storescu, "XRAY1", port, &f).status.success());
    }
    wait_until("two reports and their marks queued for the PACS", T, || {
        queued(&d) == 4
    });
    d.stop("KILL");

    let pacs = Pacs::start(&storescp, &tmp.path().join("pacs"), pacs_port);
    let d = node(tmp.path(), port, pacs_port, None);
    wait_until("both reports and their marks at the PACS", T, || {
        pacs.received().len() == 4 && queued(&d) == 0
    });
    let mut referenced: Vec<String> = of_class(&pacs.received(), uids::COMPREHENSIVE_SR_STORAGE)
        .iter()
        .map(|f| {
            let obj = dicom_object::open_file(f).unwrap();
            let ev = obj
                .element(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()[0]
                .element(tags::REFERENCED_SERIES_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()[0]
                .element(tags::REFERENCED_SOP_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()[0]
                .element(tags::REFERENCED_SOP_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0')
                .to_owned();
            ev
        })
        .collect();
    referenced.sort();
    assert_eq!(referenced, uids_sent);
    wait_until("the PACS outbox to empty", T, || queued(&d) == 0);
}

#[test]
fn bad_peers_are_refused_and_the_daemon_keeps_going() {
    let (Some(storescu), Some(echoscu)) = (tool("storescu"), tool("echoscu")) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (port, pacs_port) = (free_port(), free_port());
    let d = node(
        tmp.path(),
        port,
        pacs_port,
        Some(
            "[dicom]\nallowed_calling_ae_titles = [\"XRAY1\"]\nmax_object_bytes = 2000000\nidle_timeout_s = 5\n",
        ),
    );
    wait_listening(&echoscu, port);
    let parts = || {
        std::fs::read_dir(&d.watch)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .count()
    };
    let watched = || {
        std::fs::read_dir(&d.watch)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_file())
            .count()
    };

    // A wrong called AE title, and a calling AE title not allowed: associations refused.
    assert!(!echo(&echoscu, "NOT-FVEDGE", port));
    let small = tmp.path().join("small.dcm");
    dicom_from_jpeg(&sample("IMG0002322.jpg"), &small, "DX", true);
    assert!(!store(&storescu, "STRANGER", port, &small).status.success());

    // An unsupported SOP class (CT): no presentation context for it.
    let ct = tmp.path().join("ct.dcm");
    dicom_from_jpeg_as(
        &sample("IMG0002322.jpg"),
        &ct,
        "CT",
        true,
        uids::CT_IMAGE_STORAGE,
        "1.2.826.0.1.3680043.8.498.21",
    );
    assert!(!store(&storescu, "XRAY1", port, &ct).status.success());

    // An object over max_object_bytes: refused with "out of resources".
    let big = tmp.path().join("big.dcm");
    dicom_from_jpeg_as(
        &sample("IMG0002322.jpg"),
        &big,
        "DX",
        true,
        uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
        "1.2.826.0.1.3680043.8.498.22",
    );
    assert!(std::fs::metadata(&big).unwrap().len() > 2_000_000);
    let out = run(Command::new(&storescu)
        .args(["-v", "-aet", "XRAY1", "-aec", "FVEDGE", "127.0.0.1"])
        .arg(port.to_string())
        .arg(&big));
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && said.contains("Refused: OutOfResources"),
        "storescu should report status A700 (out of resources): {said}"
    );

    // An association dropped in the middle of an object: once the daemon has logged the
    // association's end (after it discarded what it held), nothing half-received is kept.
    let ended = || {
        std::fs::read_to_string(tmp.path().join("fv-edge.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("association aborted") || l.contains("aborted the association"))
            .count()
    };
    let before = ended();
    drop_mid_object(port);
    wait_until("the dropped association's end in the log", T, || {
        ended() > before
    });
    assert_eq!(parts(), 0, "nothing half-received is kept");

    // A peer that connects and says nothing is closed after idle_timeout_s (5 here).
    {
        use std::io::Read as _;
        let mut silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 16];
        let n = silent.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "closed without a word");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "closed after {:?}",
            started.elapsed()
        );
    }

    // None of it reached the watch folder; the daemon still answers and still stores.
    assert_eq!(watched(), 0);
    assert!(echo(&echoscu, "FVEDGE", port));
    let ok = tmp.path().join("ok.dcm");
    dicom_from_jpeg_as(
        &sample("IMG0002322.jpg"),
        &ok,
        "DX",
        false,
        uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
        "1.2.826.0.1.3680043.8.498.23",
    );
    assert!(store(&storescu, "XRAY1", port, &ok).status.success());
    wait_until("the stored object to be read", T, || {
        d.quarantined().len() + d.done_results().len() == 1
    });
}

/// A client that opens an association, sends a C-STORE-RQ and half a data set, then drops
/// the connection.
fn drop_mid_object(port: u16) {
    use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
    let mut a = dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title("XRAY1")
        .called_ae_title("FVEDGE")
        .with_presentation_context(
            uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
            vec![uids::EXPLICIT_VR_LITTLE_ENDIAN],
        )
        .establish(("127.0.0.1", port))
        .unwrap();
    let pc = a.presentation_contexts()[0].id;
    let rq = fv_edge::dimse::Command::store_rq(
        1,
        uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
        "1.2.826.0.1.3680043.8.498.24",
    );
    a.send(&rq.pdu(pc)).unwrap();
    a.send(&Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc,
            value_type: PDataValueType::Data,
            is_last: false,
            data: vec![0x08, 0x00, 0x16, 0x00, b'U', b'I', 4, 0],
        }],
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Dropped without release or abort: the TCP connection closes under the SCP.
    drop(a);
}

/// Peak resident memory of a process, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib << 10
}

/// An association on a DX context, as a modality opens it.
fn associate(port: u16) -> dicom_ul::ClientAssociation<std::net::TcpStream> {
    dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title("XRAY1")
        .called_ae_title("FVEDGE")
        .with_presentation_context(
            uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
            vec![uids::EXPLICIT_VR_LITTLE_ENDIAN],
        )
        .establish(("127.0.0.1", port))
        .unwrap()
}

#[test]
fn hostile_peers_cost_little_and_a_real_modality_still_gets_through() {
    use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
    use std::io::Write as _;
    let (Some(storescu), Some(storescp), Some(echoscu)) =
        (tool("storescu"), tool("storescp"), tool("echoscu"))
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (port, pacs_port) = (free_port(), free_port());
    let pacs = Pacs::start(&storescp, &tmp.path().join("pacs"), pacs_port);
    let mut d = node(tmp.path(), port, pacs_port, None);
    wait_listening(&echoscu, port);
    let pid = d.child.id();
    let before = peak_rss(pid);

    // 26 bytes: a command set whose (0000,0002) declares 0xFFFFFFFE bytes.
    let mut evil = vec![0, 0, 0, 0, 4, 0, 0, 0, 14, 0, 0, 0];
    evil.extend_from_slice(&[0, 0, 2, 0, 0xFE, 0xFF, 0xFF, 0xFF]);
    evil.extend_from_slice(b"1.2\0\0\0");
    assert_eq!(evil.len(), 26);
    let mut a = associate(port);
    let pc = a.presentation_contexts()[0].id;
    a.send(&Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc,
            value_type: PDataValueType::Command,
            is_last: true,
            data: evil,
        }],
    })
    .unwrap();
    let answer = a.receive();
    assert!(
        matches!(answer, Ok(Pdu::AbortRQ { .. }) | Err(_)),
        "the association is aborted: {answer:?}"
    );
    let grew = peak_rss(pid).saturating_sub(before);
    eprintln!(
        "peak RSS {} MiB before the 26-byte command, grew by {} KiB",
        before >> 20,
        grew >> 10
    );
    assert!(
        grew < 64 << 20,
        "the 26-byte command cost {} MiB",
        grew >> 20
    );
    assert!(echo(&echoscu, "FVEDGE", port), "C-ECHO still answered");

    // 50 connections that say nothing and 10 that trickle an association request a byte at
    // a time: none of them holds the door shut.
    let idle: Vec<std::net::TcpStream> = (0..50)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle: Vec<_> = (0..10)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                // An A-ASSOCIATE-RQ header that announces far more than ever comes.
                for b in [1u8, 0, 0, 0, 0x10, 0].iter().cycle() {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) || s.write_all(&[*b]).is_err()
                    {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            })
        })
        .collect();
    let dcm = tmp.path().join("image.dcm");
    dicom_from_jpeg(&sample("IMG0002322.jpg"), &dcm, "DX", true);
    assert!(
        store(&storescu, "XRAY1", port, &dcm).status.success(),
        "storescu got through 60 hostile connections"
    );
    wait_until("its report at the PACS", T, || !pacs.received().is_empty());
    // The watch loop still reads files, and the daemon still runs.
    d.drop_file(&sample("IMG0002322.jpg"), "dropped.jpg");
    wait_until("the dropped file read", T, || d.done_results().len() == 2);
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon runs");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    drop(idle);
    for t in trickle {
        t.join().unwrap();
    }
    assert!(d.stop("TERM").success());
    let log = std::fs::read_to_string(tmp.path().join("fv-edge.log")).unwrap();
    assert!(
        log.contains("declares 4294967294 bytes"),
        "the log says why the association was aborted"
    );
}

#[test]
fn one_image_on_two_associations_at_once_is_stored_once_and_read_once() {
    use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
    let Some(echoscu) = tool("echoscu") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (port, pacs_port) = (free_port(), free_port());
    let d = node(tmp.path(), port, pacs_port, None);
    wait_listening(&echoscu, port);
    let dcm = tmp.path().join("image.dcm");
    dicom_from_jpeg(&sample("IMG0002322.jpg"), &dcm, "DX", true);
    // The data set as a storescu sends it: the file without preamble and file meta.
    let obj = dicom_object::open_file(&dcm).unwrap();
    let mut data = Vec::new();
    obj.write_dataset_with_ts(
        &mut data,
        &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
    )
    .unwrap();
    let half = data.len() / 2;
    let rq = fv_edge::dimse::Command::store_rq(
        1,
        uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
        SOP_UID,
    );
    let chunk = |pc: u8, bytes: &[u8], is_last: bool| Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc,
            value_type: PDataValueType::Data,
            is_last,
            data: bytes.to_vec(),
        }],
    };
    // Both associations are half-way through the same SOP Instance UID before either ends.
    let mut a = associate(port);
    let mut b = associate(port);
    let (pa, pb) = (
        a.presentation_contexts()[0].id,
        b.presentation_contexts()[0].id,
    );
    a.send(&rq.pdu(pa)).unwrap();
    b.send(&rq.pdu(pb)).unwrap();
    for (assoc, pc) in [(&mut a, pa), (&mut b, pb)] {
        for piece in data[..half].chunks(16 << 10) {
            assoc.send(&chunk(pc, piece, false)).unwrap();
        }
    }
    let mut statuses = Vec::new();
    for (assoc, pc) in [(&mut a, pa), (&mut b, pb)] {
        let rest: Vec<&[u8]> = data[half..].chunks(16 << 10).collect();
        for (i, piece) in rest.iter().enumerate() {
            assoc.send(&chunk(pc, piece, i + 1 == rest.len())).unwrap();
        }
        let Pdu::PData { data: rsp } = assoc.receive().unwrap() else {
            panic!("a C-STORE-RSP")
        };
        statuses.push(
            fv_edge::dimse::Command::decode(&rsp[0].data)
                .unwrap()
                .status
                .unwrap(),
        );
    }
    assert_eq!(statuses, [0, 0], "both senders are told it is stored");
    wait_until("the image read", T, || d.done_results().len() == 1);
    // A third send, later: acknowledged and not read again.
    let mut c = associate(port);
    let pc = c.presentation_contexts()[0].id;
    c.send(&rq.pdu(pc)).unwrap();
    let pieces: Vec<&[u8]> = data.chunks(16 << 10).collect();
    for (i, piece) in pieces.iter().enumerate() {
        c.send(&chunk(pc, piece, i + 1 == pieces.len())).unwrap();
    }
    let Pdu::PData { data: rsp } = c.receive().unwrap() else {
        panic!("a C-STORE-RSP")
    };
    assert_eq!(
        fv_edge::dimse::Command::decode(&rsp[0].data)
            .unwrap()
            .status,
        Some(0)
    );
    assert!(echo(&echoscu, "FVEDGE", port));
    let results = d.done_results();
    assert_eq!(results.len(), 1, "one image, one result: {results:#?}");
    let read: Vec<serde_json::Value> = results.into_iter().chain(d.quarantined()).collect();
    assert!(
        read[0]["error"].is_null(),
        "the stored object is whole: {:?}",
        read[0]
    );
}

#[test]
fn below_the_free_space_floor_c_store_is_refused_and_c_echo_answered() {
    let (Some(storescu), Some(echoscu)) = (tool("storescu"), tool("echoscu")) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (port, pacs_port) = (free_port(), free_port());
    // A floor no disk here reaches: every object meets a full disk.
    let mut d = node(
        tmp.path(),
        port,
        pacs_port,
        Some("[dicom]\nmin_free_mb = 1000000000\n"),
    );
    wait_listening(&echoscu, port);
    let dcm = tmp.path().join("image.dcm");
    dicom_from_jpeg(&sample("IMG0002322.jpg"), &dcm, "DX", false);
    let out = run(Command::new(&storescu)
        .args(["-v", "-aet", "XRAY1", "-aec", "FVEDGE", "127.0.0.1"])
        .arg(port.to_string())
        .arg(&dcm));
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && said.contains("Refused: OutOfResources"),
        "status A700 below the floor: {said}"
    );
    assert!(echo(&echoscu, "FVEDGE", port));
    assert!(d.stop("TERM").success());
    let log = std::fs::read_to_string(tmp.path().join("fv-edge.log")).unwrap();
    assert!(log.contains("min_free_mb"), "the log says why");
    assert!(d.done_results().is_empty() && d.quarantined().is_empty());
}

/// Whether this process may make mount namespaces and bind mounts (root with `unshare`).
fn can_unshare() -> bool {
    let ok = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        fv_e2e::missing(
            "MOUNT",
            "no mount namespace can be made here (needs root and unshare)",
        );
    }
    ok
}

#[test]
fn in_the_systemd_units_mount_layout_a_c_store_leads_to_a_result_and_a_report() {
    let (Some(storescu), Some(storescp), Some(echoscu)) =
        (tool("storescu"), tool("storescp"), tool("echoscu"))
    else {
        return;
    };
    if !can_unshare() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (port, pacs_port) = (free_port(), free_port());
    let pacs = Pacs::start(&storescp, &tmp.path().join("pacs"), pacs_port);
    let (watch, state) = (tmp.path().join("watch"), tmp.path().join("state"));
    for d in [&watch, &state] {
        std::fs::create_dir_all(d).unwrap();
    }
    // As ProtectSystem=strict with StateDirectory= and ReadWritePaths= makes them: the state
    // and watch folders are mount points of their own, so a rename between them is EXDEV.
    let listen = format!("127.0.0.1:{port}");
    let to_pacs = format!("PACS@127.0.0.1:{pacs_port}");
    let mut d = Daemon::spawn_wrapped(
        tmp.path(),
        &[
            ("FV_DICOM_LISTEN", listen.as_str()),
            ("FV_DICOM_AE", "FVEDGE"),
            ("FV_PACS", to_pacs.as_str()),
        ],
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount --bind \"$1\" \"$1\" && mount --bind \"$2\" \"$2\" && shift 2 && exec \"$@\"",
            "sh",
            state.to_str().unwrap(),
            watch.to_str().unwrap(),
        ],
    );
    wait_listening(&echoscu, port);
    let dcm = tmp.path().join("image.dcm");
    dicom_from_jpeg(&sample("IMG0002322.jpg"), &dcm, "DX", true);
    assert!(store(&storescu, "XRAY1", port, &dcm).status.success());
    wait_until("a result", T, || d.done_results().len() == 1);
    wait_until("its report at the PACS", T, || !pacs.received().is_empty());
    assert!(d.stop("TERM").success());
}
