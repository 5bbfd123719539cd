//! The storage SCP (`run --dicom-listen`): the X-ray unit sends each image by C-STORE, as to
//! any DICOM node; fv-edge answers C-ECHO too.
//!
//! An object is streamed to a hidden `.dicom-<key>.<n>.part` file in the watch folder itself
//! (one per receive), fsync'd, remembered in `STATE/dicom/received/`, and renamed to
//! `dicom-<key>.dcm` in the same folder *before* the response says success: the rename never
//! crosses a mount point (systemd's `ProtectSystem=strict` mounts the state and watch folders
//! separately), a crash after the response loses nothing, and the worker reads it like any
//! other file. The key is a salted hash of the SOP Instance UID (a UID identifies a patient's
//! image, so it names no file and no log line); the same UID sent again, or on two
//! associations at once, is acknowledged and read once.
//!
//! A peer is bounded before it is believed: a slot is taken before a thread is spent on a
//! connection (`max_connections`, the oldest connection that has not associated gives way),
//! the association request must arrive within `handshake_timeout_s` and every later PDU
//! within `idle_timeout_s`, PDUs are at most `max_pdu_bytes`, command sets' declared lengths
//! are checked against the bytes received, objects are at most `max_object_bytes`, and
//! C-STORE is refused while less than `min_free_mb` is free. Calling AE titles and source
//! addresses can be restricted.
//!
//! Built on dicom-ul (associations, PDUs) and dicom-object (command sets, file meta).

use crate::config::DicomSettings;
use crate::dimse::{self, status, Command, CommandField};
use anyhow::Context as _;
use dicom_ul::association::server::AccessControl;
use dicom_ul::association::Association as _;
use dicom_ul::pdu::{AssociationRJServiceUserReason, PDataValueType, Pdu, UserIdentity};
use dicom_ul::{ServerAssociation, ServerAssociationOptions};
use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The storage SOP classes accepted: the radiographs fv-edge reads (CR, DX for presentation
/// and for processing). Mammography and intra-oral X-ray are other modalities, refused by
/// the reader, so they are not negotiated.
pub const STORAGE_SOP_CLASSES: [&str; 3] = [
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1.1",
];

/// Transfer syntaxes accepted: those fv-edge decodes (dicom-pixeldata's native codecs and
/// OpenJPEG): implicit and explicit VR little endian, JPEG baseline, JPEG lossless (both),
/// JPEG 2000 (both), RLE.
pub const TRANSFER_SYNTAXES: [&str; 8] = [
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
];

/// Days a received SOP Instance UID is remembered (a re-send later than that is read again).
const REMEMBER_DAYS: u64 = 90;

/// The resolved SCP settings.
#[derive(Clone, Debug)]
pub struct Scp {
    /// Our AE title: the called AE title a peer must use.
    pub ae_title: String,
    /// Calling AE titles allowed (empty: any).
    pub allowed_calling: Vec<String>,
    /// Source addresses allowed (empty: any).
    pub allowed_addresses: Vec<IpAddr>,
    /// Associations at once.
    pub max_associations: usize,
    /// Largest PDU accepted.
    pub max_pdu: u32,
    /// Largest object accepted, in bytes.
    pub max_object_bytes: u64,
    /// An association silent for this long is closed; also the most one PDU may take.
    pub idle: Duration,
    /// TCP connections at once, associated or not.
    pub max_connections: usize,
    /// How long a connection has to complete its association request.
    pub handshake: Duration,
    /// C-STORE is refused while the state folder's file system has less free.
    pub min_free_bytes: u64,
    /// Where complete objects go: the watch folder.
    pub inbox: PathBuf,
    /// `STATE/dicom`.
    pub state: PathBuf,
    /// The device's UID salt, for the file names.
    pub salt: String,
    /// Where the node says it refuses objects for want of space (the heartbeat's `dicom`).
    pub health: Option<Arc<Mutex<crate::health::Stats>>>,
    /// Numbers each receive's temporary file.
    receives: Arc<AtomicU64>,
    /// Held while a received object is handed to the watch folder: one UID, one file.
    publishing: Arc<Mutex<()>>,
}

/// What became of a complete object.
enum Published {
    /// It is in the watch folder, durably, and remembered.
    New(PathBuf),
    /// The same SOP Instance UID was handed over first by another receive: this copy is gone.
    Duplicate,
}

impl Scp {
    /// Resolves `[dicom]`; `max_input_bytes` bounds objects unless `max_object_bytes` is set.
    pub fn from_settings(
        s: &DicomSettings,
        inbox: &Path,
        state: &Path,
        max_input_bytes: u64,
        salt: &str,
    ) -> anyhow::Result<Self> {
        let ae_title = s.ae_title();
        check_ae_title(&ae_title).context("[dicom] ae_title")?;
        for a in s.allowed_calling_ae_titles.iter().flatten() {
            check_ae_title(a).context("[dicom] allowed_calling_ae_titles")?;
        }
        Ok(Scp {
            ae_title,
            allowed_calling: s.allowed_calling_ae_titles.clone().unwrap_or_default(),
            allowed_addresses: s.allowed_addresses.clone().unwrap_or_default(),
            max_associations: s.max_associations.unwrap_or(4).max(1),
            max_pdu: s
                .max_pdu_bytes
                .unwrap_or(dimse::MAX_PDU_BYTES)
                .clamp(4096, 4 << 20),
            max_object_bytes: s.max_object_bytes.unwrap_or(max_input_bytes),
            idle: Duration::from_secs(s.idle_timeout_s.unwrap_or(60).max(1)),
            max_connections: s.max_connections.unwrap_or(32).max(2),
            handshake: Duration::from_secs(s.handshake_timeout_s.unwrap_or(10).max(1)),
            min_free_bytes: s.min_free_mb.unwrap_or(512) << 20,
            inbox: inbox.to_owned(),
            state: state.join("dicom"),
            salt: salt.to_owned(),
            health: None,
            receives: Arc::default(),
            publishing: Arc::default(),
        })
    }

    /// `dicom-<salted hash of the SOP Instance UID>`: the name of its file and marker.
    pub fn key(&self, sop_instance_uid: &str) -> String {
        let h = crate::pipeline::uid_hash(&self.salt, &format!("sop:{sop_instance_uid}"));
        format!("dicom-{}", &h[..24])
    }

    fn received(&self) -> PathBuf {
        self.state.join("received")
    }

    /// Why an object cannot be taken now for want of space (`None`: there is room); the
    /// heartbeat says the same.
    fn low_on_space(&self) -> Option<String> {
        let why = self
            .free_bytes()
            .filter(|&free| free < self.min_free_bytes)
            .map(|free| {
                format!(
                    "{} MiB free, under the {} MiB kept for results ([dicom] min_free_mb)",
                    free >> 20,
                    self.min_free_bytes >> 20
                )
            });
        if let Some(h) = &self.health {
            let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
            if h.dicom_refusing != why {
                match &why {
                    Some(w) => tracing::warn!("DICOM: refusing objects: {w}"),
                    None => tracing::info!("DICOM: taking objects again: space freed"),
                }
                h.dicom_refusing = why.clone();
            }
        }
        why
    }

    /// Hands a complete object to the watch folder: remembered first (so a re-send is a
    /// duplicate from the moment it can be read), then renamed in place, then the folder
    /// synced. A failure undoes what it can, so that the unit's re-send is read once.
    fn publish(&self, key: &str, part: PathBuf, f: std::fs::File) -> std::io::Result<Published> {
        let _one = self.publishing.lock().unwrap_or_else(|p| p.into_inner());
        let dest = self.inbox.join(format!("{key}.dcm"));
        let marker = self.received().join(key);
        if marker.exists() || dest.exists() {
            drop(f);
            let _ = std::fs::remove_file(&part);
            return Ok(Published::Duplicate);
        }
        let done = (|| {
            f.sync_all()?;
            drop(f);
            std::fs::File::create(&marker)?.sync_all()?;
            fv_core::durable::sync_parent(&marker)?;
            std::fs::rename(&part, &dest)?;
            if let Err(e) = fv_core::durable::sync_parent(&dest) {
                // Not durable: take it back unless the watch loop already has it.
                if std::fs::rename(&dest, &part).is_ok() {
                    return Err(e);
                }
                tracing::warn!(
                    "DICOM: {key}: the watch folder could not be synced ({e}); already being read"
                );
            }
            Ok(Published::New(dest.clone()))
        })();
        if done.is_err() {
            let _ = std::fs::remove_file(&part);
            let _ = std::fs::remove_file(&marker);
        }
        done
    }

    /// Binds `addr` (`PORT` or `ADDR:PORT`), clears what a crash left half-received, and
    /// serves on a thread until `shutdown`.
    pub fn start(
        self,
        addr: &str,
        shutdown: Arc<AtomicBool>,
    ) -> anyhow::Result<(SocketAddr, std::thread::JoinHandle<()>)> {
        let addr = if addr.contains(':') {
            addr.to_owned()
        } else {
            format!("0.0.0.0:{addr}")
        };
        std::fs::create_dir_all(self.received())
            .with_context(|| format!("{}: cannot create", self.received().display()))?;
        // A partial object was never acknowledged: the unit sends it again. (Objects were
        // once received into STATE/dicom/incoming.)
        let _ = std::fs::remove_dir_all(self.state.join("incoming"));
        for e in std::fs::read_dir(&self.inbox)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".dicom-") && name.ends_with(".part") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        self.forget_old();
        let listener = TcpListener::bind(&addr)
            .with_context(|| format!("--dicom-listen {addr}: cannot listen (port in use, or a privileged port without the capability?)"))?;
        let local = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        tracing::info!(
            "DICOM storage SCP {} listening on {local} (CR, DX; C-ECHO)",
            self.ae_title
        );
        let scp = Arc::new(self);
        let handle = std::thread::Builder::new()
            .name("dicom-scp".into())
            .spawn(move || scp.accept_loop(listener, shutdown))?;
        Ok((local, handle))
    }

    fn forget_old(&self) {
        let horizon = Duration::from_secs(REMEMBER_DAYS * 86_400);
        let Ok(dir) = std::fs::read_dir(self.received()) else {
            return;
        };
        for e in dir.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > horizon);
            if old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn accept_loop(self: Arc<Self>, listener: TcpListener, shutdown: Arc<AtomicBool>) {
        let slots = Arc::new(Slots::default());
        let mut refused_at: Option<Instant> = None;
        while !shutdown.load(Ordering::SeqCst) {
            slots.sweep(&self);
            let (stream, peer) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(e) => {
                    // EMFILE and the like pass: connections close, descriptors come back.
                    tracing::warn!("DICOM: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if !self.allowed_addresses.is_empty() && !self.allowed_addresses.contains(&peer.ip()) {
                tracing::warn!(
                    "DICOM: refused a connection from {peer}: not in [dicom] allowed_addresses"
                );
                continue;
            }
            // The slot is taken before anything else is spent on the connection.
            let Some((id, progress)) = slots.admit(&stream, self.max_connections) else {
                if refused_at.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(
                        "DICOM: refused a connection from {peer}: {} connections open and all associated ([dicom] max_connections)",
                        self.max_connections
                    );
                    refused_at = Some(Instant::now());
                }
                continue;
            };
            let scp = self.clone();
            let held = slots.clone();
            let spawned = std::thread::Builder::new()
                .name("dicom-assoc".into())
                .spawn(move || {
                    let _slot = SlotGuard(&held, id, progress.clone());
                    if let Err(e) = scp.association(stream, peer, &held, &progress) {
                        tracing::warn!("DICOM association from {peer}: {e:#}");
                    }
                });
            if let Err(e) = spawned {
                slots.release(id);
                tracing::error!("DICOM: cannot start a thread for {peer}: {e}");
            }
        }
    }

    fn options<'a>(
        &'a self,
        gate: Gate<'a>,
    ) -> ServerAssociationOptions<'a, Gate<'a>, impl dicom_ul::association::server::Negotiation>
    {
        let mut o = ServerAssociationOptions::new()
            .ae_access_control(gate)
            .ae_title(self.ae_title.as_str())
            .max_pdu_length(self.max_pdu)
            .read_timeout(self.idle.min(self.handshake))
            .write_timeout(self.idle)
            .with_abstract_syntax(dimse::VERIFICATION);
        for c in STORAGE_SOP_CLASSES {
            o = o.with_abstract_syntax(c);
        }
        for t in TRANSFER_SYNTAXES {
            o = o.with_transfer_syntax(t);
        }
        o
    }

    fn association(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        slots: &Slots,
        progress: &Progress,
    ) -> anyhow::Result<()> {
        stream.set_nonblocking(false)?;
        let gate = Gate {
            allowed_calling: &self.allowed_calling,
            slots,
            max_associations: self.max_associations,
        };
        let mut assoc = match self.options(gate).establish(stream) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("DICOM: refused an association from {peer}: {e}");
                return Ok(());
            }
        };
        progress.associated(slots);
        let _ = assoc.inner_stream().set_read_timeout(Some(self.idle));
        let calling = assoc.peer_ae_title().to_owned();
        tracing::info!("DICOM association from {calling} at {peer}");
        let mut session = Session {
            scp: self,
            calling: calling.clone(),
            command: Vec::new(),
            store: None,
            progress,
        };
        let outcome = session.serve(&mut assoc);
        session.discard();
        match outcome {
            Ok(End::Released) => {
                let _ = assoc.send(&Pdu::ReleaseRP);
                Ok(())
            }
            Ok(End::Aborted) => {
                tracing::warn!("DICOM: {calling} at {peer} aborted the association");
                Ok(())
            }
            Err(e) => {
                let _ = assoc.abort();
                Err(e.context(format!("{calling}: association aborted")))
            }
        }
    }

    /// Bytes free for an unprivileged writer on the file systems a received object and its
    /// results are written to (the smaller).
    fn free_bytes(&self) -> Option<u64> {
        [self.state.as_path(), self.inbox.as_path()]
            .iter()
            .filter_map(|p| rustix::fs::statvfs(*p).ok())
            .map(|v| v.f_bavail.saturating_mul(v.f_frsize))
            .min()
    }
}

/// What a connection's thread tells the accept loop of itself.
struct Progress {
    /// Set once the association is accepted.
    associated: AtomicBool,
    /// When the connection opened.
    opened: Instant,
    /// Milliseconds after `opened` at which the last PDU completed.
    last_pdu_ms: AtomicU64,
}

impl Progress {
    fn associated(&self, slots: &Slots) {
        self.associated.store(true, Ordering::SeqCst);
        self.pdu();
        slots.associated.fetch_add(1, Ordering::SeqCst);
    }

    fn pdu(&self) {
        self.last_pdu_ms
            .store(self.opened.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    /// How long since the connection last made progress: since it opened while it has not
    /// associated, since its last whole PDU after.
    fn stalled(&self) -> Duration {
        let opened = self.opened;
        if self.associated.load(Ordering::SeqCst) {
            opened.elapsed().saturating_sub(Duration::from_millis(
                self.last_pdu_ms.load(Ordering::SeqCst),
            ))
        } else {
            opened.elapsed()
        }
    }
}

/// One open connection: a handle to shut it down from the accept loop, and its progress.
struct Slot {
    stream: TcpStream,
    progress: Arc<Progress>,
    closing: bool,
}

/// The open connections, counted before a thread is spent on one.
#[derive(Default)]
struct Slots {
    open: Mutex<HashMap<u64, Slot>>,
    next: AtomicU64,
    /// Connections that hold an association (a slot's thread decrements it when it ends).
    associated: AtomicUsize,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `stream`, closing the oldest connection that has not associated when all
    /// `max` are taken; `None` when every one of them holds an association.
    fn admit(&self, stream: &TcpStream, max: usize) -> Option<(u64, Arc<Progress>)> {
        let mut open = self.lock();
        if open.len() >= max {
            let oldest = open
                .iter()
                .filter(|(_, s)| !s.progress.associated.load(Ordering::SeqCst))
                .max_by_key(|(_, s)| s.progress.stalled())
                .map(|(id, _)| *id)?;
            if let Some(s) = open.remove(&oldest) {
                let _ = s.stream.shutdown(std::net::Shutdown::Both);
            }
        }
        let handle = stream.try_clone().ok()?;
        let progress = Arc::new(Progress {
            associated: AtomicBool::new(false),
            opened: Instant::now(),
            last_pdu_ms: AtomicU64::new(0),
        });
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        open.insert(
            id,
            Slot {
                stream: handle,
                progress: progress.clone(),
                closing: false,
            },
        );
        Some((id, progress))
    }

    /// Closes connections past their deadline: the association request not complete within
    /// `handshake`, or a PDU not complete within `idle` (a peer trickling bytes).
    fn sweep(&self, scp: &Scp) {
        for (id, s) in self.lock().iter_mut() {
            let limit = if s.progress.associated.load(Ordering::SeqCst) {
                scp.idle
            } else {
                scp.handshake
            };
            if !s.closing && s.progress.stalled() > limit {
                tracing::warn!(
                    "DICOM: closing connection {id}: no progress for {limit:?} ({})",
                    if s.progress.associated.load(Ordering::SeqCst) {
                        "a PDU took too long; [dicom] idle_timeout_s"
                    } else {
                        "no association request; [dicom] handshake_timeout_s"
                    }
                );
                let _ = s.stream.shutdown(std::net::Shutdown::Both);
                s.closing = true;
            }
        }
    }

    fn release(&self, id: u64) {
        self.lock().remove(&id);
    }
}

/// Frees a connection's slot when its thread ends, however it ends.
struct SlotGuard<'a>(&'a Slots, u64, Arc<Progress>);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
        if self.2.associated.load(Ordering::SeqCst) {
            self.0.associated.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// AE titles: 1 to 16 characters of printable ASCII but backslash (PS3.5 VR AE).
fn check_ae_title(t: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !t.trim().is_empty()
            && t.len() <= 16
            && t.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\'),
        "AE title `{t}`: use 1 to 16 printable ASCII characters, no backslash"
    );
    Ok(())
}

/// Who may associate: our called AE title, an allowed calling one, and room.
struct Gate<'a> {
    allowed_calling: &'a [String],
    slots: &'a Slots,
    max_associations: usize,
}

impl AccessControl for Gate<'_> {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called_ae_title.trim() != this_ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if !self.allowed_calling.is_empty()
            && !self
                .allowed_calling
                .iter()
                .any(|a| a.trim() == calling_ae_title.trim())
        {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        if self.slots.associated.load(Ordering::SeqCst) >= self.max_associations {
            tracing::warn!(
                "DICOM: refused an association from {}: {} associations already open ([dicom] max_associations)",
                calling_ae_title.trim(),
                self.max_associations
            );
            return Err(AssociationRJServiceUserReason::NoReasonGiven);
        }
        Ok(())
    }
}

enum End {
    Released,
    Aborted,
}

/// The object being received.
struct Store {
    rq: Command,
    /// Presentation context it arrives on.
    pc: u8,
    /// Temporary file (`None`: a duplicate or an object over the limit, read and dropped).
    file: Option<(PathBuf, std::fs::File)>,
    bytes: u64,
    /// Why it will be refused, once all of it is read.
    refusal: Option<(u16, String)>,
    duplicate: bool,
}

struct Session<'a> {
    scp: &'a Scp,
    calling: String,
    command: Vec<u8>,
    store: Option<Store>,
    progress: &'a Progress,
}

impl Session<'_> {
    fn serve(&mut self, assoc: &mut ServerAssociation<TcpStream>) -> anyhow::Result<End> {
        loop {
            let pdu = assoc.receive().map_err(|e| {
                anyhow::anyhow!("{e} (peer gone, or silent for over {:?})", self.scp.idle)
            })?;
            self.progress.pdu();
            match pdu {
                Pdu::PData { data } => {
                    for v in data {
                        let pc = assoc
                            .presentation_contexts()
                            .iter()
                            .find(|p| {
                                p.id == v.presentation_context_id
                                    && p.reason
                                        == dicom_ul::pdu::PresentationContextResultReason::Acceptance
                            })
                            .cloned()
                            .with_context(|| {
                                format!(
                                    "data on presentation context {}, which was not accepted",
                                    v.presentation_context_id
                                )
                            })?;
                        match v.value_type {
                            PDataValueType::Command => {
                                anyhow::ensure!(
                                    self.command.len() + v.data.len() <= dimse::MAX_COMMAND_BYTES,
                                    "a command set over {} bytes",
                                    dimse::MAX_COMMAND_BYTES
                                );
                                self.command.extend_from_slice(&v.data);
                                if v.is_last {
                                    let bytes = std::mem::take(&mut self.command);
                                    let cmd =
                                        Command::decode(&bytes).map_err(anyhow::Error::msg)?;
                                    if let Some(rsp) = self.on_command(cmd, &pc)? {
                                        assoc.send(&rsp.pdu(pc.id))?;
                                    }
                                }
                            }
                            PDataValueType::Data => {
                                self.on_data(&v.data, pc.id)?;
                                if v.is_last {
                                    let rsp = self.finish()?;
                                    assoc.send(&rsp.pdu(pc.id))?;
                                }
                            }
                        }
                    }
                }
                Pdu::ReleaseRQ => return Ok(End::Released),
                Pdu::AbortRQ { .. } => return Ok(End::Aborted),
                other => anyhow::bail!("unexpected {}", other.short_description()),
            }
        }
    }

    /// A complete command set: the response now (C-ECHO), or after its data set (C-STORE).
    fn on_command(
        &mut self,
        cmd: Command,
        pc: &dicom_ul::pdu::PresentationContextNegotiated,
    ) -> anyhow::Result<Option<Command>> {
        match cmd.field {
            CommandField::EchoRq => Ok(Some(Command::response(&cmd, status::SUCCESS, None))),
            CommandField::StoreRq => {
                anyhow::ensure!(
                    self.store.is_none(),
                    "a C-STORE-RQ before the last one's data set ended"
                );
                anyhow::ensure!(cmd.has_data_set, "a C-STORE-RQ without a data set");
                let uid = cmd.sop_instance.clone().unwrap_or_default();
                let mut store = Store {
                    rq: cmd,
                    pc: pc.id,
                    file: None,
                    bytes: 0,
                    refusal: None,
                    duplicate: false,
                };
                if store.rq.sop_class != pc.abstract_syntax {
                    store.refusal = Some((
                        status::DATA_SET_MISMATCH,
                        format!(
                            "SOP class {} on a context for {}",
                            store.rq.sop_class, pc.abstract_syntax
                        ),
                    ));
                } else if !dimse::is_valid_uid(&uid) {
                    store.refusal = Some((
                        status::CANNOT_UNDERSTAND,
                        "invalid Affected SOP Instance UID".into(),
                    ));
                } else if self.scp.received().join(self.scp.key(&uid)).exists()
                    || self
                        .scp
                        .inbox
                        .join(format!("{}.dcm", self.scp.key(&uid)))
                        .exists()
                {
                    store.duplicate = true;
                } else if let Some(why) = self.scp.low_on_space() {
                    store.refusal = Some((status::OUT_OF_RESOURCES, why));
                } else {
                    store.file = Some(self.open(&store.rq, &uid, &pc.transfer_syntax)?);
                }
                self.store = Some(store);
                Ok(None)
            }
            CommandField::StoreRsp | CommandField::EchoRsp | CommandField::Other(_) => {
                anyhow::bail!(
                    "command {:?} is not served here (C-STORE and C-ECHO only)",
                    cmd.field
                )
            }
        }
    }

    /// The Part 10 preamble and file meta, ahead of the data set's bytes as they arrive.
    fn open(&self, rq: &Command, uid: &str, ts: &str) -> anyhow::Result<(PathBuf, std::fs::File)> {
        // In the watch folder itself, so that the rename that hands it over never crosses a
        // mount point; the leading dot keeps the watch loop off it, and the receive's own
        // number keeps two receives of one UID out of each other's file.
        let n = self.scp.receives.fetch_add(1, Ordering::SeqCst);
        let path = self
            .scp
            .inbox
            .join(format!(".{}.{n}.part", self.scp.key(uid)));
        let mut f = std::fs::File::create_new(&path)
            .with_context(|| format!("{}: cannot create", path.display()))?;
        let meta = dicom_object::FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(rq.sop_class.as_str())
            .media_storage_sop_instance_uid(uid)
            .transfer_syntax(ts)
            .source_application_entity_title(self.calling.as_str())
            .build()
            .map_err(|e| anyhow::anyhow!("{}: file meta: {e}", path.display()))?;
        f.write_all(&[0u8; 128])?;
        f.write_all(b"DICM")?;
        meta.write(&mut f)
            .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))?;
        Ok((path, f))
    }

    fn on_data(&mut self, bytes: &[u8], pc: u8) -> anyhow::Result<()> {
        let store = self
            .store
            .as_mut()
            .context("a data set with no C-STORE-RQ before it")?;
        anyhow::ensure!(
            store.pc == pc,
            "a data set on another presentation context than its command"
        );
        let before = store.bytes;
        store.bytes += bytes.len() as u64;
        // Every 16 MiB the disk is looked at again: one large object must not eat the room
        // the outboxes and the journal need.
        if store.refusal.is_none() && before >> 24 != store.bytes >> 24 {
            if let Some(why) = self.scp.low_on_space() {
                store.refusal = Some((status::OUT_OF_RESOURCES, why));
                if let Some((path, _)) = store.file.take() {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        if store.refusal.is_none() && store.bytes > self.scp.max_object_bytes {
            let key = self
                .scp
                .key(store.rq.sop_instance.as_deref().unwrap_or_default());
            tracing::warn!(
                "DICOM: {key} from {} is over {} bytes ([dicom] max_object_bytes): refused",
                self.calling,
                self.scp.max_object_bytes
            );
            store.refusal = Some((
                status::OUT_OF_RESOURCES,
                format!("object over {} bytes", self.scp.max_object_bytes),
            ));
            if let Some((path, _)) = store.file.take() {
                let _ = std::fs::remove_file(path);
            }
        }
        if let Some((path, f)) = store.file.as_mut() {
            if let Err(e) = f.write_all(bytes) {
                tracing::error!("DICOM: {}: cannot write: {e}", path.display());
                store.refusal = Some((status::OUT_OF_RESOURCES, format!("cannot store: {e}")));
                let (path, _) = store.file.take().expect("open");
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }

    /// The whole data set is in: durable in the inbox, then remembered, then the response.
    fn finish(&mut self) -> anyhow::Result<Command> {
        let store = self
            .store
            .take()
            .context("a data set with no C-STORE-RQ before it")?;
        let key = self
            .scp
            .key(store.rq.sop_instance.as_deref().unwrap_or_default());
        if let Some((code, why)) = store.refusal {
            return Ok(Command::response(&store.rq, code, Some(why)));
        }
        if store.duplicate {
            tracing::info!(
                "DICOM: {key} from {} was received before: acknowledged, not read again",
                self.calling
            );
            return Ok(Command::response(&store.rq, status::SUCCESS, None));
        }
        let (part, f) = store.file.expect("an object being stored has a file");
        match self.scp.publish(&key, part, f) {
            Ok(Published::New(dest)) => {
                tracing::info!(
                    "DICOM: received {} ({} bytes) from {}",
                    crate::sources::input::file_name(&dest),
                    store.bytes,
                    self.calling
                );
                Ok(Command::response(&store.rq, status::SUCCESS, None))
            }
            Ok(Published::Duplicate) => {
                tracing::info!(
                    "DICOM: {key} from {} arrived on another association at the same time: acknowledged, read once",
                    self.calling
                );
                Ok(Command::response(&store.rq, status::SUCCESS, None))
            }
            Err(e) => {
                tracing::error!("DICOM: cannot store {key}: {e}");
                Ok(Command::response(
                    &store.rq,
                    status::OUT_OF_RESOURCES,
                    Some(format!("cannot store: {e}")),
                ))
            }
        }
    }

    /// An association that ends mid-object leaves nothing behind.
    fn discard(&mut self) {
        if let Some(Store {
            file: Some((path, _)),
            ..
        }) = self.store.take()
        {
            let _ = std::fs::remove_file(path);
        }
    }
}
