//! What the edge's integration tests share: a real Mosquitto broker per test on a free port,
//! an MQTT subscriber that records what arrives, the fv-edge daemon as a child process, and
//! test inputs (FracAtlas sample images and DICOM files written here).

#![allow(dead_code)] // each test binary uses its own part of this module

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn sample(name: &str) -> PathBuf {
    let base = workspace().join("tests/data/fracatlas-sample/images");
    ["Fractured", "Non_fractured"]
        .iter()
        .map(|d| base.join(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is not in the committed sample"))
}

pub fn models_dir() -> PathBuf {
    workspace().join("models")
}

/// The committed schema of one MQTT message (`result`, `status`, `heartbeat`).
pub fn validator(message: &str) -> jsonschema::Validator {
    let p = workspace().join(format!("core/schemas/{message}.schema.json"));
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

pub fn result_validator() -> jsonschema::Validator {
    validator("result")
}

pub fn assert_valid(v: &serde_json::Value) {
    assert_valid_as("result", v)
}

/// `v` validates against the committed schema of `message`.
pub fn assert_valid_as(message: &str, v: &serde_json::Value) {
    let errors: Vec<String> = validator(message)
        .iter_errors(v)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{message}: {errors:?} in {v}");
}

// Each test binary uses its own part of these.
#[allow(unused_imports)]
pub use fv_e2e::{free_port, unsafe_kill, wait_until, Broker};

#[derive(Clone, Debug)]
pub struct Msg {
    pub topic: String,
    pub retain: bool,
    pub json: serde_json::Value,
}

/// A subscriber to `fractuvision/#` with a persistent session (QoS 1), reconnecting on its
/// own, recording every message.
pub struct Subscriber {
    pub msgs: Arc<Mutex<Vec<Msg>>>,
}

impl Subscriber {
    pub fn start(port: u16, client_id: &str) -> Subscriber {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut conn) = Client::new(o, 64);
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let m = msgs.clone();
        let subscribed = Arc::new(Mutex::new(false));
        let s = subscribed.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe("fractuvision/#", QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => *s.lock().unwrap() = true,
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let json =
                            serde_json::from_slice(&p.payload).unwrap_or(serde_json::Value::Null);
                        m.lock().unwrap().push(Msg {
                            topic: p.topic.clone(),
                            retain: p.retain,
                            json,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        wait_until("the subscription", Duration::from_secs(10), || {
            *subscribed.lock().unwrap()
        });
        Subscriber { msgs }
    }

    pub fn on(&self, suffix: &str) -> Vec<Msg> {
        self.msgs
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic.ends_with(suffix))
            .cloned()
            .collect()
    }

    pub fn result_ids(&self) -> std::collections::BTreeSet<String> {
        self.on("/result")
            .iter()
            .map(|m| m.json["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// `fv-edge run` as a child process, in `dir` (watch/ and state/ inside).
pub struct Daemon {
    pub child: Child,
    pub watch: PathBuf,
    pub state: PathBuf,
}

impl Daemon {
    /// Runs with a TOML config file (and the test's watch and state folders).
    pub fn start_with_config(dir: &Path, config: &Path) -> Daemon {
        Daemon::spawn(dir, None, &[], Some(config))
    }

    pub fn start(dir: &Path, mqtt: Option<&str>, extra_env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn(dir, mqtt, extra_env, None)
    }

    /// Runs under `wrapper` (a program and its first arguments, e.g. a mount namespace),
    /// which ends by executing the rest of its arguments: fv-edge's command line.
    pub fn spawn_wrapped(dir: &Path, extra_env: &[(&str, &str)], wrapper: &[&str]) -> Daemon {
        Daemon::build(dir, None, extra_env, None, wrapper)
    }

    /// Runs with all of: a broker, extra environment, a config file.
    pub fn spawn(
        dir: &Path,
        mqtt: Option<&str>,
        extra_env: &[(&str, &str)],
        config: Option<&Path>,
    ) -> Daemon {
        Daemon::build(dir, mqtt, extra_env, config, &[])
    }

    fn build(
        dir: &Path,
        mqtt: Option<&str>,
        extra_env: &[(&str, &str)],
        config: Option<&Path>,
        wrapper: &[&str],
    ) -> Daemon {
        let watch = dir.join("watch");
        let state = dir.join("state");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_fv-edge"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_fv-edge")),
        };
        cmd.arg("-v")
            .arg("run")
            .arg("--watch")
            .arg(&watch)
            .arg("--state")
            .arg(&state)
            .arg("--models")
            .arg(models_dir())
            .args([
                "--site",
                "test-site",
                "--device-id",
                "unit-1",
                "--heartbeat",
                "1",
            ])
            .args(["--settle-ms", "200"]);
        if let Some(url) = mqtt {
            cmd.arg("--mqtt").arg(url);
        }
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        for (k, _) in std::env::vars() {
            if k.starts_with("FV_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        // Appended: a restarted daemon's log follows its predecessor's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("fv-edge.log"))
            .unwrap();
        cmd.stdout(Stdio::null()).stderr(log);
        Daemon {
            child: cmd.spawn().expect("start fv-edge"),
            watch,
            state,
        }
    }

    /// Drops `src` into the watch folder the safe way: written under a temporary name,
    /// then renamed.
    pub fn drop_file(&self, src: &Path, name: &str) {
        std::fs::create_dir_all(&self.watch).unwrap();
        let tmp = self.watch.join(format!(".{name}.part"));
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, self.watch.join(name)).unwrap();
    }

    pub fn outbox_depth(&self) -> usize {
        self.depth_of("outbox")
    }

    /// Records waiting in the outbox folder `name` of the state directory.
    pub fn depth_of(&self, name: &str) -> usize {
        std::fs::read_dir(self.state.join(name))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "rec"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// The first file in `done/` whose name ends with `suffix`.
    pub fn done_file(&self, suffix: &str) -> PathBuf {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.watch.join("done"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .collect();
        v.sort();
        v.into_iter()
            .next()
            .unwrap_or_else(|| panic!("no *{suffix} in done/"))
    }

    /// Result files written beside done inputs.
    pub fn done_results(&self) -> Vec<serde_json::Value> {
        list_json(&self.watch.join("done"), ".result.json")
    }

    pub fn quarantined(&self) -> Vec<serde_json::Value> {
        list_json(&self.watch.join("quarantine"), ".error.json")
    }

    pub fn stop(&mut self, sig: &str) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), sig);
        self.child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn list_json(dir: &Path, suffix: &str) -> Vec<serde_json::Value> {
    let Ok(d) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    d.flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .filter_map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok())
        .collect()
}

pub fn ids(v: &[serde_json::Value]) -> std::collections::BTreeSet<String> {
    v.iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The patient data written into test DICOMs; none of it may leave fv-edge.
pub const STUDY_UID: &str = "1.2.826.0.1.3680043.8.498.424242";
pub const SOP_UID: &str = "1.2.826.0.1.3680043.8.498.1";
pub const PHI: [&str; 6] = ["DOE", "JOHN", "PID-777", "19700101", STUDY_UID, SOP_UID];

/// The series of the test DICOMs.
pub const SERIES_UID: &str = "1.2.826.0.1.3680043.8.498.77";

/// A DX radiograph from a sample JPEG: 12 bits stored, MONOCHROME1 (inverted), rescaled by
/// slope 2 and intercept −100, windowed exactly over the rescaled range; read back right it
/// shows the JPEG's grey levels.
pub fn dicom_from_jpeg(jpeg: &Path, out: &Path, modality: &str, with_pixels: bool) {
    dicom_from_jpeg_as(
        jpeg,
        out,
        modality,
        with_pixels,
        uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
        SOP_UID,
    );
}

/// The same with another SOP class and instance UID.
pub fn dicom_from_jpeg_as(
    jpeg: &Path,
    out: &Path,
    modality: &str,
    with_pixels: bool,
    sop_class: &str,
    sop_uid: &str,
) {
    let g = image::open(jpeg).unwrap().to_luma8();
    let stored: Vec<u16> = g
        .as_raw()
        .iter()
        .map(|&v| ((255 - v) as f32 * 4095.0 / 255.0).round() as u16)
        .collect();
    let us = |t, v: u16| DataElement::new(t, VR::US, PrimitiveValue::from(v));
    let s = |t, vr, v: &str| DataElement::new(t, vr, PrimitiveValue::from(v));
    let mut elements = vec![
        s(tags::SOP_CLASS_UID, VR::UI, sop_class),
        s(tags::SOP_INSTANCE_UID, VR::UI, sop_uid),
        s(tags::STUDY_INSTANCE_UID, VR::UI, STUDY_UID),
        s(tags::SERIES_INSTANCE_UID, VR::UI, SERIES_UID),
        s(tags::PATIENT_NAME, VR::PN, "DOE^JOHN"),
        s(tags::PATIENT_ID, VR::LO, "PID-777"),
        s(tags::PATIENT_BIRTH_DATE, VR::DA, "19700101"),
        s(tags::MODALITY, VR::CS, modality),
        s(tags::IMAGE_LATERALITY, VR::CS, "L"),
        us(tags::SAMPLES_PER_PIXEL, 1),
        s(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME1"),
        us(tags::ROWS, g.height() as u16),
        us(tags::COLUMNS, g.width() as u16),
        us(tags::BITS_ALLOCATED, 16),
        us(tags::BITS_STORED, 12),
        us(tags::HIGH_BIT, 11),
        us(tags::PIXEL_REPRESENTATION, 0),
        s(tags::RESCALE_SLOPE, VR::DS, "2"),
        s(tags::RESCALE_INTERCEPT, VR::DS, "-100"),
        s(tags::WINDOW_CENTER, VR::DS, "3995.5"),
        s(tags::WINDOW_WIDTH, VR::DS, "8191"),
    ];
    if with_pixels {
        elements.push(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(stored.into()),
        ));
    }
    write_dicom(elements, uids::EXPLICIT_VR_LITTLE_ENDIAN, out);
}

/// A Part 10 file of `elements` in transfer syntax `ts`; the file meta names the SOP class
/// and instance the elements hold.
pub fn write_dicom(elements: Vec<DataElement<InMemDicomObject>>, ts: &str, out: &Path) {
    let obj = InMemDicomObject::from_element_iter(elements);
    let uid = |t| {
        obj.element_opt(t)
            .unwrap()
            .map(|e| e.to_str().unwrap().into_owned())
    };
    let class = uid(tags::SOP_CLASS_UID)
        .unwrap_or_else(|| uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION.into());
    let instance = uid(tags::SOP_INSTANCE_UID).unwrap_or_else(|| SOP_UID.into());
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(ts)
                .media_storage_sop_class_uid(class)
                .media_storage_sop_instance_uid(instance),
        )
        .unwrap();
    file.write_to_file(out).unwrap();
}

/// A TCP proxy on 127.0.0.1 that holds every chunk for `delay` in each direction (a slow
/// uplink: 150 ms each way is a poor cellular link, 300 ms a satellite one), and optionally
/// cuts every open connection every `reset_every` (a link that drops). It counts the
/// connections it accepted. Stops when dropped.
pub struct DelayProxy {
    pub port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl DelayProxy {
    pub fn start(upstream: u16, delay: Duration, reset_every: Option<Duration>) -> DelayProxy {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpStream};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        if let Some(every) = reset_every {
            let (stop, open) = (stop.clone(), open.clone());
            std::thread::spawn(move || {
                let mut last = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                    if last.elapsed() >= every {
                        for s in open.lock().unwrap().drain(..) {
                            let _ = s.shutdown(Shutdown::Both);
                        }
                        last = Instant::now();
                    }
                }
            });
        }
        // One direction: read chunks as they come, deliver each `delay` after it was read,
        // in order (a link's latency, not its bandwidth).
        fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
            let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
            let writer = std::thread::spawn(move || {
                for (due, chunk) in rx {
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    if to.write_all(&chunk).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(Shutdown::Write);
            });
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            drop(tx);
            let _ = writer.join();
        }
        {
            let (stop, connections) = (stop.clone(), connections.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        continue;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    {
                        let mut o = open.lock().unwrap();
                        o.push(client.try_clone().unwrap());
                        o.push(server.try_clone().unwrap());
                    }
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    std::thread::spawn(move || pump(client, server, delay));
                    std::thread::spawn(move || pump(s2, c2, delay));
                }
            });
        }
        DelayProxy {
            port,
            stop,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}
