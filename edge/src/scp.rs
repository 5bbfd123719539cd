//! The storage SCP (`run --dicom-listen`): the X-ray unit sends each image by C-STORE, as to
//! any DICOM node; fv-edge answers C-ECHO too.
//!
//! An object is streamed to `STATE/dicom/incoming/`, fsync'd and renamed into the watch
//! folder as `dicom-<key>.dcm` *before* the response says success, so a crash after the
//! response loses nothing; the worker then reads it like any other file. The key is a salted
//! hash of the SOP Instance UID (a UID identifies a patient's image, so it names no file and
//! no log line). A marker in `STATE/dicom/received/` makes the same SOP Instance UID, sent
//! again, a success that is not processed twice. Limits (associations at once, PDU size, object size, idle time) keep a
//! misbehaving peer from exhausting memory or stalling the unit; calling AE titles and source
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
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
    /// An association silent for this long is closed.
    pub idle: Duration,
    /// Where complete objects go: the watch folder.
    pub inbox: PathBuf,
    /// `STATE/dicom`.
    pub state: PathBuf,
    /// The device's UID salt, for the file names.
    pub salt: String,
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
            max_pdu: s.max_pdu_bytes.unwrap_or(64 << 10).clamp(4096, 4 << 20),
            max_object_bytes: s.max_object_bytes.unwrap_or(max_input_bytes),
            idle: Duration::from_secs(s.idle_timeout_s.unwrap_or(60).max(1)),
            inbox: inbox.to_owned(),
            state: state.join("dicom"),
            salt: salt.to_owned(),
        })
    }

    /// `dicom-<salted hash of the SOP Instance UID>`: the name of its file and marker.
    pub fn key(&self, sop_instance_uid: &str) -> String {
        let h = crate::pipeline::uid_hash(&self.salt, &format!("sop:{sop_instance_uid}"));
        format!("dicom-{}", &h[..24])
    }

    fn incoming(&self) -> PathBuf {
        self.state.join("incoming")
    }

    fn received(&self) -> PathBuf {
        self.state.join("received")
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
        for d in [self.incoming(), self.received()] {
            std::fs::create_dir_all(&d)
                .with_context(|| format!("{}: cannot create", d.display()))?;
        }
        // A partial object was never acknowledged: the unit sends it again.
        for e in std::fs::read_dir(self.incoming())?.flatten() {
            let _ = std::fs::remove_file(e.path());
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
        let active = Arc::new(AtomicUsize::new(0));
        while !shutdown.load(Ordering::SeqCst) {
            let (stream, peer) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                Err(e) => {
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
            let full = active.load(Ordering::SeqCst) >= self.max_associations;
            let scp = self.clone();
            let count = active.clone();
            count.fetch_add(1, Ordering::SeqCst);
            let spawned = std::thread::Builder::new()
                .name("dicom-assoc".into())
                .spawn(move || {
                    if let Err(e) = scp.association(stream, peer, full) {
                        tracing::warn!("DICOM association from {peer}: {e:#}");
                    }
                    count.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                active.fetch_sub(1, Ordering::SeqCst);
                tracing::error!("DICOM: cannot start a thread for {peer}: {e}");
            }
        }
    }

    fn options(
        &self,
        full: bool,
    ) -> ServerAssociationOptions<'_, Gate<'_>, impl dicom_ul::association::server::Negotiation>
    {
        let mut o = ServerAssociationOptions::new()
            .ae_access_control(Gate {
                allowed_calling: &self.allowed_calling,
                full,
            })
            .ae_title(self.ae_title.as_str())
            .max_pdu_length(self.max_pdu)
            .read_timeout(self.idle)
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

    fn association(&self, stream: TcpStream, peer: SocketAddr, full: bool) -> anyhow::Result<()> {
        stream.set_nonblocking(false)?;
        let mut assoc = match self.options(full).establish(stream) {
            Ok(a) => a,
            Err(e) => {
                if full {
                    tracing::warn!(
                        "DICOM: refused an association from {peer}: {} associations already open ([dicom] max_associations)",
                        self.max_associations
                    );
                } else {
                    tracing::warn!("DICOM: refused an association from {peer}: {e}");
                }
                return Ok(());
            }
        };
        let calling = assoc.peer_ae_title().to_owned();
        tracing::info!("DICOM association from {calling} at {peer}");
        let mut session = Session {
            scp: self,
            calling: calling.clone(),
            command: Vec::new(),
            store: None,
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
    full: bool,
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
        if self.full {
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
}

impl Session<'_> {
    fn serve(&mut self, assoc: &mut ServerAssociation<TcpStream>) -> anyhow::Result<End> {
        loop {
            let pdu = assoc.receive().map_err(|e| {
                anyhow::anyhow!("{e} (peer gone, or silent for over {:?})", self.scp.idle)
            })?;
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
        let path = self
            .scp
            .incoming()
            .join(format!("{}.part", self.scp.key(uid)));
        let mut f = std::fs::File::create(&path)
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
        store.bytes += bytes.len() as u64;
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
        let done = (|| -> std::io::Result<PathBuf> {
            f.sync_all()?;
            drop(f);
            let dest = self.scp.inbox.join(format!("{key}.dcm"));
            std::fs::rename(&part, &dest)?;
            std::fs::File::open(&self.scp.inbox)?.sync_all()?;
            let marker = self.scp.received().join(&key);
            std::fs::File::create(&marker)?.sync_all()?;
            std::fs::File::open(self.scp.received())?.sync_all()?;
            Ok(dest)
        })();
        match done {
            Ok(dest) => {
                tracing::info!(
                    "DICOM: received {} ({} bytes) from {}",
                    crate::input::file_name(&dest),
                    store.bytes,
                    self.calling
                );
                Ok(Command::response(&store.rq, status::SUCCESS, None))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&part);
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
