//! Bad inputs and patient data through the real daemon and a real broker: every malformed
//! file gets its error code and goes to quarantine while the daemon keeps going, and no
//! patient identifier from a DICOM reaches an MQTT payload, a log line or a local result.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

/// A well-formed little PNG whose header claims `w`×`h`: a decoder that trusts the header
/// would allocate gigabytes (900 MB for 30000×30000 greyscale) before finding the data short.
fn png_claiming(path: &Path, w: u32, h: u32) {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit greyscale
    chunk(b"IHDR", &ihdr);
    // One zlib stream holding a single empty stored block: valid, and far too short.
    chunk(
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01,
        ],
    );
    chunk(b"IEND", &[]);
    std::fs::write(path, png).unwrap();
}

/// Seeded bytes: the same "random" file on every run.
fn random_bytes(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

#[test]
fn malformed_inputs_are_quarantined_with_their_code_and_the_daemon_keeps_going() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let good = sample("IMG0002588.jpg");
    let make = |name: &str, f: &dyn Fn(&Path)| {
        let p = corpus.join(name);
        f(&p);
        p
    };
    // (file, expected code)
    let cases = [
        // FracAtlas's own truncated JPEG.
        (sample("IMG0004092.jpg"), "truncated"),
        (
            make("zero.jpg", &|p| std::fs::write(p, b"").unwrap()),
            "empty",
        ),
        (
            make("noise.jpg", &|p| {
                std::fs::write(p, random_bytes(4096, 0x9e37_79b9_7f4a_7c15)).unwrap()
            }),
            "unsupported_format",
        ),
        (
            make("huge.png", &|p| png_claiming(p, 30_000, 30_000)),
            "too_large",
        ),
        (
            make("report.dcm", &|p| dicom_from_jpeg(&good, p, "DX", false)),
            "not_an_image",
        ),
        (
            make("ct.dcm", &|p| dicom_from_jpeg(&good, p, "CT", true)),
            "unsupported_modality",
        ),
        (
            make("notes.dcm", &|p| {
                std::fs::write(p, "Patient arrived 10:40, left wrist, see notes.\n").unwrap()
            }),
            "unsupported_format",
        ),
    ];

    let broker = Broker::start(&tmp.path().join("broker"), free_port());
    let sub = Subscriber::start(broker.port, "test-sub-malformed");
    let mut d = Daemon::start(tmp.path(), Some(&broker.url()), &[]);
    let names: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, (src, _))| {
            let ext = src.extension().unwrap().to_str().unwrap();
            format!("bad{i}.{ext}")
        })
        .collect();
    for ((src, _), name) in cases.iter().zip(&names) {
        d.drop_file(src, name);
    }
    // After all the bad ones, a good one: the daemon is still reading.
    d.drop_file(&good, "after.jpg");

    wait_until("every input handled", T, || {
        d.quarantined().len() == cases.len() && d.done_results().len() == 1
    });
    assert!(
        d.done_results()[0]["error"].is_null(),
        "{}",
        d.done_results()[0]
    );
    for ((_, code), name) in cases.iter().zip(&names) {
        assert!(
            d.watch.join("quarantine").join(name).is_file(),
            "{name} kept in quarantine"
        );
        let e: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                d.watch
                    .join("quarantine")
                    .join(format!("{name}.error.json")),
            )
            .unwrap(),
        )
        .unwrap();
        assert_valid(&e);
        assert_eq!(e["error"]["code"], *code, "{name}: {e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains(name.as_str()),
            "the local error names the file: {e}"
        );
        assert!(!d.watch.join(name).exists(), "{name} left the watch folder");
    }
    // Every failure is published too (under a pseudonym), and counted in the heartbeat.
    wait_until("all results published", T, || {
        sub.on("/result").len() == cases.len() + 1
    });
    wait_until("a heartbeat counting the failures", T, || {
        sub.on("/heartbeat")
            .last()
            .is_some_and(|m| m.json["failed"] == cases.len() && m.json["processed"] == 1)
    });
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "the daemon is still running"
    );
    assert!(d.stop("TERM").success());
}

#[test]
fn no_patient_data_leaves_the_device() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("broker"), free_port());
    let sub = Subscriber::start(broker.port, "test-sub-phi");
    // Debug logging for everything, our crates and the libraries: no line may carry PHI.
    let mut d = Daemon::start(tmp.path(), Some(&broker.url()), &[("RUST_LOG", "debug")]);
    let good = sample("IMG0002322.jpg");
    let dcm = tmp.path().join("study.dcm");
    dicom_from_jpeg(&good, &dcm, "DX", true);
    let no_pixels = tmp.path().join("report.dcm");
    dicom_from_jpeg(&good, &no_pixels, "DX", false);
    let ct = tmp.path().join("ct.dcm");
    dicom_from_jpeg(&good, &ct, "CT", true);
    d.drop_file(&dcm, "study.dcm");
    d.drop_file(&no_pixels, "report.dcm");
    d.drop_file(&ct, "ct.dcm");
    wait_until("three results", T, || sub.on("/result").len() == 3);
    wait_until("a heartbeat after them", T, || {
        sub.on("/heartbeat")
            .last()
            .is_some_and(|m| m.json["processed"] == 1 && m.json["failed"] == 2)
    });
    let ok = sub
        .on("/result")
        .into_iter()
        .find(|m| m.json["error"].is_null())
        .unwrap();
    assert_eq!(ok.json["source"]["kind"], "dicom");
    assert_eq!(
        ok.json["study"]["uid_hash"].as_str().unwrap().len(),
        64,
        "the study is a salted hash"
    );
    assert!(d.stop("TERM").success());

    let mut texts: Vec<(String, String)> = sub
        .msgs
        .lock()
        .unwrap()
        .iter()
        .map(|m| (format!("MQTT {}", m.topic), m.json.to_string()))
        .collect();
    texts.push((
        "log".into(),
        std::fs::read_to_string(tmp.path().join("fv-edge.log")).unwrap(),
    ));
    for dir in ["done", "quarantine"] {
        for e in std::fs::read_dir(d.watch.join(dir)).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") {
                texts.push((
                    format!("{dir}/{name}"),
                    std::fs::read_to_string(e.path()).unwrap(),
                ));
            }
        }
    }
    assert!(
        texts.len() >= 3 + 1 + 3,
        "payloads, the log and local results"
    );
    assert!(
        texts.iter().any(|(w, t)| w == "log" && t.contains("DEBUG")),
        "debug logging was on"
    );
    for (where_, text) in &texts {
        for secret in PHI {
            assert!(
                !text.contains(secret),
                "{secret} leaked into {where_}: {text}"
            );
        }
    }
}
