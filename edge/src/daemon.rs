//! `fv-edge run`: starts each source and sink on its own thread (one small function each),
//! then runs the worker over the watch folder ([`crate::sources::watch`]) and the frame
//! grabber. Each input ends in `done/` (with its result JSON and overlay PNG) or in
//! `quarantine/` (with `.error.json`); its result goes to the outbox first, so a crash at any
//! point loses nothing (at worst an input is read twice).

use crate::config::DaemonSettings;
use crate::health::Stats;
use crate::pipeline::{file_source, fleet_name, Pipeline, PipelineConfig};
use crate::sinks::mqtt::Publisher;
use crate::sinks::outbox::{Outbox, SharedOutbox};
use crate::sources::input::{file_name, load_file};
use crate::sources::watch::WatchFolder;
use anyhow::Context as _;
use fv_core::imaging::DecodeOptions;
use fv_core::wire::{Topics, TOPIC_PREFIX};
use fv_runtime::models::load_dir;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The kind of a failure, as the fleet may see it: the I/O error's kind where there is one
/// (`StorageFull`, `PermissionDenied`, …), never its text.
fn failure_kind(e: &anyhow::Error) -> String {
    e.chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .map_or_else(|| "error".to_owned(), |io| format!("{:?}", io.kind()))
}

/// `dir/name`, or `dir/stem-N.ext` when taken.
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    if !p.exists() {
        return p;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) => (s.to_owned(), format!(".{e}")),
        None => (name.to_owned(), String::new()),
    };
    (1..)
        .map(|n| dir.join(format!("{stem}-{n}{ext}")))
        .find(|p| !p.exists())
        .expect("some name is free")
}

/// Moves a file, copying across file systems.
fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(_) => {
            std::fs::copy(from, to)?;
            std::fs::File::open(to)?.sync_all()?;
            std::fs::remove_file(from)
        }
    }
}

/// Holds an exclusive lock on `STATE/lock` for the daemon's life: two daemons on one state
/// directory would write over each other's outbox records and journal.
fn lock_state(state: &Path) -> anyhow::Result<std::fs::File> {
    let p = state.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .with_context(|| format!("{}: cannot open the state lock", p.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "{}: another fv-edge is running on this state directory; stop it, or give this one its own --state",
            state.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("{}: cannot lock", p.display()))
        }
    }
}

/// What was decided for one input, kept in `STATE/journal/` from the moment its result
/// exists until the input has been moved: a retry (after a failed move, a full disk, a
/// restart) finishes that decision instead of reading the input again, so one input gets
/// one result id however often it is retried.
#[derive(serde::Serialize, serde::Deserialize)]
struct Journal {
    /// The local result (the real file name), id fixed at the first attempt.
    message: fv_core::result::ResultMessage,
    /// Where the input and its local result go.
    dest: PathBuf,
    /// Whether its fleet copy is in the outbox.
    queued: bool,
    /// Whether its Structured Report is in the PACS outbox (or none is due).
    #[serde(default)]
    reported: bool,
}

/// `STATE/journal/<hash of the input's path, size and time>.json`.
pub fn journal_path(state: &Path, input: &Path) -> std::io::Result<PathBuf> {
    use sha2::Digest as _;
    let m = std::fs::symlink_metadata(input)?;
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let digest = sha2::Sha256::new()
        .chain_update(input.as_os_str().as_encoded_bytes())
        .chain_update(m.len().to_le_bytes())
        .chain_update(mtime.to_le_bytes())
        .finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    Ok(state.join("journal").join(format!("{hex}.json")))
}

/// `STATE/inflight.json`: the input being read right now and how many daemons have started
/// on it. A file that kills the daemon (out of memory, a decoder's abort) is then
/// quarantined at the third start instead of being taken first again after every restart.
#[derive(serde::Serialize, serde::Deserialize, PartialEq)]
struct InFlight {
    journal: PathBuf,
    attempts: u32,
}

/// Tries an input gets before a crash while reading it sends it to quarantine.
const MAX_ATTEMPTS: u32 = 2;

/// The salt for StudyInstanceUID hashes: configured, or made once and kept in the state dir.
fn uid_salt(configured: Option<String>, state: &Path) -> anyhow::Result<String> {
    // An empty salt makes every pseudonym a plain hash of the name or UID: anyone can
    // compute it, so it protects nothing.
    const TOO_SHORT: usize = 16;
    if let Some(s) = configured {
        anyhow::ensure!(
            s.trim().len() >= TOO_SHORT,
            "uid_salt (or FV_UID_SALT) is {} characters: use at least {TOO_SHORT} random ones, or leave it out and one is made in the state directory",
            s.trim().len()
        );
        return Ok(s);
    }
    let p = state.join("uid_salt");
    if let Ok(s) = std::fs::read_to_string(&p) {
        anyhow::ensure!(
            s.trim().len() >= TOO_SHORT,
            "{}: the salt is {} characters (damaged?); restore it from a backup, or delete it to make a new one (earlier pseudonyms will then differ)",
            p.display(),
            s.trim().len()
        );
        return Ok(s.trim().to_owned());
    }
    let s = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    fv_core::durable::write(&p, s.as_bytes())
        .with_context(|| format!("{}: cannot write", p.display()))?;
    Ok(s)
}

/// Everything `run` resolved from the layers.
struct Resolved {
    watch: PathBuf,
    done: PathBuf,
    quarantine: PathBuf,
    state: PathBuf,
    settle: Duration,
    decode: DecodeOptions,
    /// Reports for the PACS, when one is configured.
    pacs: Option<SharedOutbox>,
    /// What shows the marks in the PACS viewer.
    marks: crate::config::Marks,
    /// The reading screen, when it is on.
    screen: Option<Arc<crate::sinks::screen::Screen>>,
}

impl Resolved {
    /// `quarantine/` for a failed input, `done/` otherwise.
    fn dir_for(&self, m: &fv_core::result::ResultMessage) -> &Path {
        if m.error.is_some() {
            &self.quarantine
        } else {
            &self.done
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(settings: DaemonSettings) -> anyhow::Result<()> {
    let DaemonSettings {
        read,
        state,
        watch,
        done,
        quarantine,
        settle,
        uid_salt: configured_salt,
        outbox: limits,
        mqtt,
        pacs,
        dicom,
        dashboard,
        screen,
        v4l,
    } = settings;
    let (site, device) = (read.site.clone(), read.device_id.clone());
    let mut r = Resolved {
        done,
        quarantine,
        state,
        settle,
        decode: read.decode.clone(),
        watch,
        pacs: None,
        marks: crate::config::Marks::None,
        screen: None,
    };
    for d in [
        &r.watch,
        &r.done,
        &r.quarantine,
        &r.state,
        &r.state.join("journal"),
    ] {
        std::fs::create_dir_all(d).with_context(|| format!("{}: cannot create", d.display()))?;
    }
    let _lock = lock_state(&r.state)?;
    let threads = fv_runtime::engine::set_threads(read.threads);
    tracing::info!("{threads} inference threads");
    let models = load_dir(&read.models, &read.selection)?;
    r.decode = models.decode_options(&r.decode, read.reduced_decode);
    let mut refs = vec![models.classifier.reference()];
    refs.extend(models.detector.as_ref().map(|d| d.reference()));
    let mut pipeline = Pipeline {
        models,
        config: PipelineConfig {
            site: site.clone(),
            device: device.clone(),
            uid_salt: uid_salt(configured_salt, &r.state)?,
            read: read.read,
        },
    };
    // Without a broker nothing would drain the outbox: results are local files only.
    let outbox: Option<SharedOutbox> = match mqtt {
        Some(_) => Some(Arc::new(Mutex::new(Outbox::open(
            &r.state.join("outbox"),
            limits,
        )?))),
        None => None,
    };

    let shutdown = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(Stats::default()));
    let pacs_sender = match pacs {
        None => None,
        Some(target) => {
            r.marks = target.marks;
            let (o, handle) = start_pacs(target, &r.state, limits, &stats, &shutdown)?;
            r.pacs = Some(o);
            Some(handle)
        }
    };
    let scp = match &dicom.listen {
        None => None,
        Some(listen) => Some(start_scp(
            &dicom,
            listen,
            &r,
            &pipeline.config.uid_salt,
            &stats,
            &shutdown,
        )?),
    };
    r.screen = start_screen(&screen, &outbox, &stats)?;
    // The fleet page, when asked for: static files only, so it cannot slow the readings.
    let _dashboard = match dashboard.listen {
        Some(_) => Some(crate::dashboard::serve(&dashboard)?),
        None => None,
    };
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutdown.clone())?;
    }
    let worker_done = Arc::new(AtomicBool::new(false));
    let publisher = match mqtt {
        None => {
            tracing::info!("no MQTT broker configured: results are written locally only");
            None
        }
        Some(m) => Some(start_publisher(
            m,
            (&site, &device),
            outbox.clone().expect("an outbox with a broker"),
            refs,
            &stats,
            &shutdown,
            &worker_done,
        )?),
    };
    let mut folder = WatchFolder::new(&r.watch, r.settle)?;
    tracing::info!(
        "watching {} (site {site}, device {device}); done → {}, quarantine → {}",
        r.watch.display(),
        r.done.display(),
        r.quarantine.display()
    );
    let (frames_tx, frames) = std::sync::mpsc::sync_channel::<Frame>(2);
    let grabber = match v4l {
        None => None,
        Some(v) => Some(spawn_grabber(v, shutdown.clone(), frames_tx)?),
    };

    work(
        &mut pipeline,
        &mut folder,
        &frames,
        &r,
        outbox.as_deref(),
        &stats,
        &shutdown,
    );

    tracing::info!("stopping: finishing up");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(g) = grabber {
        let _ = g.join();
    }
    worker_done.store(true, Ordering::SeqCst);
    if let Some(h) = publisher {
        let _ = h.join();
    }
    for h in [scp, pacs_sender].into_iter().flatten() {
        let _ = h.join();
    }
    Ok(())
}

/// Reports to the PACS: their own durable outbox, drained by their own thread.
fn start_pacs(
    target: crate::config::PacsTarget,
    state: &Path,
    limits: crate::sinks::outbox::OutboxLimits,
    stats: &Arc<Mutex<Stats>>,
    shutdown: &Arc<AtomicBool>,
) -> anyhow::Result<(SharedOutbox, std::thread::JoinHandle<()>)> {
    let o: SharedOutbox = Arc::new(Mutex::new(Outbox::open(
        &state.join("pacs-outbox"),
        limits,
    )?));
    stats.lock().expect("stats lock").pacs_outbox_depth =
        Some(o.lock().expect("outbox lock").depth());
    tracing::info!(
        "Structured Reports ({:?} for the marks) go to {}@{} as {}",
        target.marks,
        target.address.ae_title,
        target.address.host_port,
        target.calling_ae
    );
    let sender = crate::sinks::pacs::PacsSender {
        pacs: target.address,
        calling_ae: target.calling_ae,
        outbox: o.clone(),
        max_retry: target.max_retry,
        stats: stats.clone(),
        shutdown: shutdown.clone(),
    };
    let handle = std::thread::Builder::new()
        .name("pacs".into())
        .spawn(move || sender.run())?;
    Ok((o, handle))
}

/// The DICOM node: it writes complete objects into the watch folder.
fn start_scp(
    dicom: &crate::config::DicomSettings,
    listen: &str,
    r: &Resolved,
    uid_salt: &str,
    stats: &Arc<Mutex<Stats>>,
    shutdown: &Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let mut scp = crate::sources::scp::Scp::from_settings(
        dicom,
        &r.watch,
        &r.state,
        r.decode.max_file_bytes,
        uid_salt,
    )?;
    scp.health = Some(stats.clone());
    let (addr, handle) = scp.start(listen, shutdown.clone())?;
    // Printed so that a script (and the tests) can find a port-0 listener.
    println!("dicom on {addr}");
    Ok(handle)
}

/// The reading screen at the unit, when asked for.
fn start_screen(
    screen: &crate::sinks::screen::ScreenSettings,
    outbox: &Option<SharedOutbox>,
    stats: &Arc<Mutex<Stats>>,
) -> anyhow::Result<Option<Arc<crate::sinks::screen::Screen>>> {
    let Some(addr) = crate::sinks::screen::listen_addr(screen)? else {
        return Ok(None);
    };
    let s = Arc::new(crate::sinks::screen::Screen::new(
        screen
            .recent
            .unwrap_or(crate::sinks::screen::DEFAULT_RECENT),
        outbox.clone(),
        stats.clone(),
    ));
    let bound = crate::sinks::screen::serve(addr, screen.token.clone(), s.clone())?;
    // Printed so that a script (and the tests) can find a port-0 listener.
    println!("screen on http://{bound}/");
    tracing::info!("reading screen on http://{bound}/");
    Ok(Some(s))
}

/// The MQTT publisher, draining the outbox to the broker.
fn start_publisher(
    m: crate::config::MqttConnection,
    (site, device): (&str, &str),
    outbox: SharedOutbox,
    models: Vec<fv_core::result::ModelRef>,
    stats: &Arc<Mutex<Stats>>,
    shutdown: &Arc<AtomicBool>,
    worker_done: &Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let p = Publisher {
        url: m.url,
        client_id: device.to_owned(),
        site: site.to_owned(),
        credentials: m.credentials,
        ca_file: m.ca_file,
        heartbeat: m.heartbeat,
        topics: Topics::new(TOPIC_PREFIX, site, device),
        outbox,
        max_packet_bytes: m.max_packet_bytes,
        models,
        stats: stats.clone(),
        shutdown: shutdown.clone(),
        worker_done: worker_done.clone(),
    };
    // A URL or CA file that no retry can fix stops the start, saying what to fix.
    let options = p.options().context("the [mqtt] configuration")?;
    Ok(std::thread::Builder::new()
        .name("mqtt".into())
        .spawn(move || p.run(options))?)
}

/// The worker: reads each settled file of the watch folder and each grabbed frame until
/// shutdown. An input whose result cannot be stored stays where it is and is retried with
/// backoff.
fn work(
    pipeline: &mut Pipeline,
    folder: &mut WatchFolder,
    frames: &std::sync::mpsc::Receiver<Frame>,
    r: &Resolved,
    outbox: Option<&Mutex<Outbox>>,
    stats: &Mutex<Stats>,
    shutdown: &AtomicBool,
) {
    // Under systemd (Type=notify): ready now, then a watchdog ping from this loop, so a hung
    // decoder or engine gets the service restarted.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = sd_notify::watchdog_enabled();
    let mut last_ping = Instant::now();
    let mut ping = || {
        if let Some(period) = watchdog {
            if last_ping.elapsed() >= period / 3 {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                last_ping = Instant::now();
            }
        }
    };
    let mut retry: HashMap<PathBuf, (Instant, Duration)> = HashMap::new();
    while !shutdown.load(Ordering::SeqCst) {
        ping();
        let ready = folder.ready();
        while let Ok(f) = frames.try_recv() {
            if let Err(e) = process_frame(pipeline, f, r, outbox, stats) {
                tracing::error!("frame: {e:#}");
            }
        }
        for path in ready {
            if shutdown.load(Ordering::SeqCst) {
                break;
            }
            if retry.get(&path).is_some_and(|(at, _)| Instant::now() < *at) {
                continue;
            }
            folder.taken(&path);
            ping();
            match process_file(pipeline, &path, r, outbox, stats) {
                Ok(()) => {
                    retry.remove(&path);
                }
                Err(e) => {
                    // The input stays where it is and is tried again later; say why, loudly.
                    let delay = retry.get(&path).map_or(Duration::from_secs(1), |(_, d)| {
                        (*d * 2).min(Duration::from_secs(300))
                    });
                    tracing::error!("{}: {e:#}; retrying in {delay:?}", path.display());
                    // The heartbeat goes to the fleet: the input's pseudonym and the kind of
                    // failure only, never the message (it can name a destination, which is
                    // the input's real name).
                    let name = fleet_name(&file_name(&path), &pipeline.config.uid_salt);
                    stats.lock().expect("stats lock").last_error =
                        Some(format!("{name}: not stored ({})", failure_kind(&e)));
                    retry.insert(path, (Instant::now() + delay, delay));
                }
            }
        }
        retry.retain(|p, _| folder.holds(p));
        folder.wait(Duration::from_millis(250));
    }
}

/// A frame from the grabber.
struct Frame {
    name: String,
    image: Result<fv_core::imaging::XrayImage, crate::sources::input_error::InputError>,
    captured_at: String,
}

#[cfg(feature = "v4l")]
fn spawn_grabber(
    v: crate::config::V4lSettings,
    stop: Arc<AtomicBool>,
    tx: std::sync::mpsc::SyncSender<Frame>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    Ok(std::thread::Builder::new()
        .name("v4l".into())
        .spawn(move || {
            let r = crate::sources::v4l::capture(
                &v.device,
                v.format,
                v.size,
                v.trigger,
                &stop,
                |image, name| {
                    let captured_at = crate::pipeline::now_rfc3339();
                    // A full queue means the worker is busy: this frame is skipped, not queued.
                    let _ = tx.try_send(Frame {
                        name,
                        image,
                        captured_at,
                    });
                },
            );
            if let Err(e) = r {
                tracing::error!("{}: capture stopped: {e:#}", v.device.display());
            }
        })?)
}

#[cfg(not(feature = "v4l"))]
fn spawn_grabber(
    v: crate::config::V4lSettings,
    _: Arc<AtomicBool>,
    _: std::sync::mpsc::SyncSender<Frame>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    anyhow::bail!(
        "{}: this fv-edge was built without V4L2 support; rebuild with `--features v4l`",
        v.device.display()
    )
}

fn process_frame(
    pipeline: &mut Pipeline,
    f: Frame,
    r: &Resolved,
    outbox: Option<&Mutex<Outbox>>,
    stats: &Mutex<Stats>,
) -> anyhow::Result<()> {
    let source = fv_core::result::Source {
        kind: fv_core::result::SourceKind::V4l,
        name: f.name.clone(),
    };
    let name = f.name.clone();
    let captured_at = f.captured_at;
    let outcome = pipeline.process(source, || {
        f.image.map(|image| crate::sources::input::Input {
            image,
            kind: fv_core::result::SourceKind::V4l,
            name: name.clone(),
            study_uid: None,
            captured_at: Some(captured_at),
        })
    });
    queue(&outcome.message, &pipeline.config.uid_salt, outbox, stats)?;
    let m = &outcome.message;
    let base = r.dir_for(m).join(name.replace(['#', '/'], "-"));
    let overlay = outcome
        .input
        .as_ref()
        .map(|i| crate::sinks::overlay::Lazy::new(&i.image, m));
    write_local(m, overlay.as_ref(), &base, r.screen.as_deref())
}

/// Durable first: the outbox entry (when a broker is configured), and the counters.
fn queue(
    m: &fv_core::result::ResultMessage,
    salt: &str,
    outbox: Option<&Mutex<Outbox>>,
    stats: &Mutex<Stats>,
) -> anyhow::Result<()> {
    // What is published carries pseudonyms for file names (see `for_fleet`), and so do the
    // heartbeat's counters.
    let fleet = crate::pipeline::for_fleet(m, salt);
    if let Some(outbox) = outbox {
        outbox
            .lock()
            .expect("outbox lock")
            .push(&serde_json::to_vec(&fleet)?)?;
    }
    count(stats, &fleet);
    Ok(())
}

/// The files a person sees, named `<base>.result.json` and `<base>.overlay.png`, or
/// `<base>.error.json` for a failed input; each written whole and fsync'd.
/// The reading screen, when on, shows the result as soon as its JSON is written and its
/// overlay once that is rendered (a full-size PNG takes a while).
fn write_local(
    m: &fv_core::result::ResultMessage,
    overlay: Option<&crate::sinks::overlay::Lazy>,
    base: &Path,
    screen: Option<&crate::sinks::screen::Screen>,
) -> anyhow::Result<()> {
    let with = |suffix: &str| PathBuf::from(format!("{}.{suffix}", base.display()));
    let json = serde_json::to_vec_pretty(m)?;
    if m.error.is_some() {
        let p = with("error.json");
        fv_core::durable::write(&p, &json)
            .with_context(|| format!("cannot write {}", p.display()))?;
        if let Some(s) = screen {
            s.show(m);
        }
        return Ok(());
    }
    let p = with("result.json");
    fv_core::durable::write(&p, &json).with_context(|| format!("cannot write {}", p.display()))?;
    let shown = screen.map(|s| (s, s.show(m)));
    if let Some(overlay) = overlay {
        let png = with("overlay.png");
        let mut bytes = std::io::Cursor::new(Vec::new());
        let written = overlay
            .get()
            .write_to(&mut bytes, image::ImageFormat::Png)
            .map_err(anyhow::Error::from)
            .and_then(|()| Ok(fv_core::durable::write(&png, bytes.get_ref())?));
        match written {
            Ok(()) => {
                if let Some((s, seq)) = shown {
                    s.overlay_ready(seq, png);
                }
            }
            Err(e) => tracing::warn!("{}: cannot write the overlay: {e}", png.display()),
        }
    }
    Ok(())
}

fn count(stats: &Mutex<Stats>, m: &fv_core::result::ResultMessage) {
    let mut s = stats.lock().expect("stats lock");
    match &m.error {
        Some(e) => {
            s.failed += 1;
            s.last_error = Some(e.message.clone());
        }
        None => {
            s.processed += 1;
            if m.finding == Some(fv_core::result::Finding::NotApplicable) {
                s.not_applicable += 1;
            }
        }
    }
}

/// A DICOM image's reading as a Structured Report, and with `marks` its overlay as a Secondary
/// Capture: into the PACS outbox, and copies beside the local result (`<name>.sr.dcm`,
/// `<name>.sc.dcm`). An object that cannot be made (the source lacks a UID it must reference)
/// is logged; the reading itself stands.
fn report(
    j: &Journal,
    path: &Path,
    pacs: &Mutex<Outbox>,
    marks: crate::config::Marks,
    overlay: Option<&crate::sinks::overlay::Lazy>,
) -> anyhow::Result<()> {
    let m = &j.message;
    if m.error.is_some() || m.source.kind != fv_core::result::SourceKind::Dicom {
        return Ok(());
    }
    let sr = match crate::sinks::sr::report(path, m) {
        Ok(sr) => sr,
        Err(e) => {
            tracing::warn!("no report for the PACS: {e}");
            return Ok(());
        }
    };
    let sc = match (marks, overlay) {
        (crate::config::Marks::SecondaryCapture, Some(overlay)) => {
            match crate::sinks::sc::capture(path, m, overlay.get()) {
                Ok(sc) => Some(sc),
                Err(e) => {
                    tracing::warn!("no marks for the PACS: {e}");
                    None
                }
            }
        }
        (crate::config::Marks::SecondaryCapture, None) => {
            tracing::warn!("result {}: no pixels for the marks, report only", m.id);
            None
        }
        (crate::config::Marks::None, _) => None,
    };
    for (object, suffix) in std::iter::once((&sr, "sr")).chain(sc.as_ref().map(|s| (s, "sc"))) {
        pacs.lock().expect("outbox lock").push(&object.bytes)?;
        let copy = PathBuf::from(format!("{}.{suffix}.dcm", j.dest.display()));
        if let Err(e) = fv_core::durable::write(&copy, &object.bytes) {
            tracing::warn!("{}: cannot write the copy: {e}", copy.display());
        }
    }
    tracing::info!(
        "result {}: report{} queued for the PACS",
        m.id,
        if sc.is_some() { " and marks" } else { "" }
    );
    Ok(())
}

fn process_file(
    pipeline: &mut Pipeline,
    path: &Path,
    r: &Resolved,
    outbox: Option<&Mutex<Outbox>>,
    stats: &Mutex<Stats>,
) -> anyhow::Result<()> {
    let name = file_name(path);
    let jpath = journal_path(&r.state, path).with_context(|| format!("{}", path.display()))?;
    let mut image = None;
    let mut j = match std::fs::read(&jpath) {
        Ok(bytes) => {
            let j: Journal = serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: damaged journal entry", jpath.display()))?;
            tracing::info!(
                "{name}: finishing an earlier attempt (result {}), not reading it again",
                j.message.id
            );
            j
        }
        Err(_) => {
            let inflight_path = r.state.join("inflight.json");
            let earlier: Option<InFlight> = std::fs::read(&inflight_path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .filter(|f: &InFlight| f.journal == jpath);
            let attempts = earlier.map_or(0, |f| f.attempts);
            let outcome = if attempts >= MAX_ATTEMPTS {
                let e = crate::sources::input_error::InputError {
                    code: "crashed",
                    message: format!(
                        "{}: fv-edge stopped {attempts} times while reading this file (out of memory, or a decoder's abort); quarantined so that the inputs behind it are read",
                        path.display()
                    ),
                };
                tracing::error!("{}", e.message);
                crate::pipeline::Outcome {
                    message: pipeline.failed(file_source(path), &e),
                    input: None,
                }
            } else {
                fv_core::durable::write(
                    &inflight_path,
                    &serde_json::to_vec(&InFlight {
                        journal: jpath.clone(),
                        attempts: attempts + 1,
                    })?,
                )?;
                pipeline.process(file_source(path), || load_file(path, &r.decode))
            };
            let dest = free_name(r.dir_for(&outcome.message), &name);
            let j = Journal {
                message: outcome.message,
                dest,
                queued: false,
                reported: false,
            };
            fv_core::durable::write(&jpath, &serde_json::to_vec(&j)?)
                .with_context(|| format!("cannot write {}", jpath.display()))?;
            let _ = std::fs::remove_file(&inflight_path);
            image = outcome.input.map(|i| i.image);
            j
        }
    };
    // The order RELIABILITY.md states: the outbox record, the local result, the move.
    if !j.queued {
        queue(&j.message, &pipeline.config.uid_salt, outbox, stats)?;
        j.queued = true;
        fv_core::durable::write(&jpath, &serde_json::to_vec(&j)?)
            .with_context(|| format!("cannot write {}", jpath.display()))?;
    }
    let overlay = PathBuf::from(format!("{}.overlay.png", j.dest.display()));
    let reduced = image.as_ref().is_some_and(|i| i.is_reduced());
    let marks_due = !j.reported
        && r.pacs.is_some()
        && r.marks != crate::config::Marks::None
        && j.message.source.kind == fv_core::result::SourceKind::Dicom;
    if (image.is_none() || reduced) && j.message.error.is_none() && (!overlay.exists() || marks_due)
    {
        // A retry needs the pixels again (the result does not), and a reading made from a
        // reduced-scale decode needs the full image: the overlays are drawn on the image
        // decoded whole, after the result is queued for delivery.
        let full = DecodeOptions {
            reduce_to: None,
            ..r.decode.clone()
        };
        image = load_file(path, &full).ok().map(|i| i.image);
    }
    let overlay = image
        .as_ref()
        .map(|i| crate::sinks::overlay::Lazy::new(i, &j.message));
    if !j.reported {
        if let Some(pacs) = &r.pacs {
            report(&j, path, pacs, r.marks, overlay.as_ref())?;
        }
        j.reported = true;
        fv_core::durable::write(&jpath, &serde_json::to_vec(&j)?)
            .with_context(|| format!("cannot write {}", jpath.display()))?;
    }
    write_local(&j.message, overlay.as_ref(), &j.dest, r.screen.as_deref())?;
    move_file(path, &j.dest).with_context(|| format!("cannot move to {}", j.dest.display()))?;
    fv_core::durable::sync_parent(&j.dest)?;
    fv_core::durable::sync_parent(path)?;
    std::fs::remove_file(&jpath).with_context(|| format!("cannot remove {}", jpath.display()))?;
    let m = &j.message;
    match &m.error {
        Some(e) => tracing::warn!("quarantined {}: {}", j.dest.display(), e.message),
        None => tracing::info!(
            "{name}: {:?} (p = {:.3}) in {:.0} ms",
            m.finding,
            m.fracture_probability.map_or(f64::NAN, |p| p.get()),
            m.timing_ms.total
        ),
    }
    Ok(())
}
