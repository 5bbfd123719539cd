//! Structured Reports to the PACS: C-STORE SCU over dicom-ul, from a durable outbox
//! (`STATE/pacs-outbox/`, the same on-disk queue as MQTT's) so that reports wait out a PACS
//! that is down, across restarts, and leave it only once the PACS has said it stored them.
//! A report the PACS refuses for good (a failure status other than "out of resources") is
//! set aside in `dropped.jsonl` with the PACS's reason; its file stays in `done/` beside the
//! image's result (`<name>.sr.dcm`) for a person to send again.

use crate::dimse::{status, Command};
use crate::sinks::outbox::{Entry, SharedOutbox};
use crate::sinks::sr::COMPREHENSIVE_SR;

/// What fv-edge sends to the PACS: Structured Reports, and the marks as Secondary Captures.
const SENT_CLASSES: [&str; 2] = [COMPREHENSIVE_SR, uids::SECONDARY_CAPTURE_IMAGE_STORAGE];
use anyhow::Context as _;
use dicom_dictionary_std::uids;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex as _;
use dicom_ul::pdu::{PDataValueType, Pdu, PresentationContextResultReason};
use dicom_ul::ClientAssociationOptions;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A PACS: `TITLE@HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacsAddress {
    /// Its AE title (the called AE title).
    pub ae_title: String,
    /// `HOST:PORT`.
    pub host_port: String,
}

impl std::str::FromStr for PacsAddress {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (ae, hp) = s.split_once('@').with_context(|| {
            format!("PACS address `{s}`: write it as TITLE@HOST:PORT, e.g. PACS@10.0.0.5:104")
        })?;
        anyhow::ensure!(
            !ae.is_empty() && ae.len() <= 16,
            "PACS address `{s}`: the AE title must have 1 to 16 characters"
        );
        let port = hp.rsplit_once(':').map(|(_, p)| p);
        anyhow::ensure!(
            port.is_some_and(|p| p.parse::<u16>().is_ok()),
            "PACS address `{s}`: HOST:PORT needs a port number after the last ':'"
        );
        Ok(PacsAddress {
            ae_title: ae.to_owned(),
            host_port: hp.to_owned(),
        })
    }
}

/// The sender.
pub struct PacsSender {
    /// The PACS's AE title, host and port.
    pub pacs: PacsAddress,
    /// Our calling AE title.
    pub calling_ae: String,
    /// The reports.
    pub outbox: SharedOutbox,
    /// Longest backoff.
    pub max_retry: Duration,
    /// For the heartbeat (`pacs_*`).
    pub stats: Arc<Mutex<crate::health::Stats>>,
    /// Stop when set (after the outbox is empty, or the PACS is unreachable).
    pub shutdown: Arc<AtomicBool>,
}

/// How one report went.
enum Sent {
    Stored,
    /// Refused for good: set aside with this reason.
    Refused(String),
}

impl PacsSender {
    /// Sends until shutdown.
    pub fn run(self) {
        let mut backoff = Duration::from_secs(1);
        let mut next_try = Instant::now();
        while !self.shutdown.load(Ordering::SeqCst) {
            let pending = {
                let o = self.outbox.lock().expect("outbox lock");
                let e = o.after(None, 64);
                self.stats.lock().expect("stats lock").pacs_outbox_depth = Some(o.depth());
                e
            };
            if pending.is_empty() || Instant::now() < next_try {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            match self.send_batch(&pending) {
                Ok(()) => {
                    backoff = Duration::from_secs(1);
                    self.stats.lock().expect("stats lock").pacs_stalled = None;
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    tracing::warn!(
                        "PACS {}@{}: {why}; {} report(s) wait, next try in {backoff:?}",
                        self.pacs.ae_title,
                        self.pacs.host_port,
                        pending.len()
                    );
                    self.stats.lock().expect("stats lock").pacs_stalled = Some(why);
                    next_try = Instant::now() + backoff;
                    backoff = (backoff * 2).min(self.max_retry);
                }
            }
        }
    }

    /// One association for up to 64 objects, in order; each removed once stored.
    fn send_batch(&self, pending: &[Entry]) -> anyhow::Result<()> {
        let mut options = ClientAssociationOptions::new()
            .calling_ae_title(self.calling_ae.as_str())
            .called_ae_title(self.pacs.ae_title.as_str());
        for class in SENT_CLASSES {
            options = options.with_presentation_context(
                class,
                vec![
                    uids::EXPLICIT_VR_LITTLE_ENDIAN,
                    uids::IMPLICIT_VR_LITTLE_ENDIAN,
                ],
            );
        }
        let mut assoc = options
            .connection_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .write_timeout(Duration::from_secs(60))
            .establish(self.pacs.host_port.as_str())
            .map_err(|e| anyhow::anyhow!("cannot associate: {e}"))?;
        let accepted: Vec<_> = assoc
            .presentation_contexts()
            .iter()
            .filter(|p| p.reason == PresentationContextResultReason::Acceptance)
            .cloned()
            .collect();
        anyhow::ensure!(
            !accepted.is_empty(),
            "the PACS accepts neither Comprehensive SR nor Secondary Capture (no presentation \
             context accepted)"
        );
        for (n, e) in pending.iter().enumerate() {
            if self.shutdown.load(Ordering::SeqCst) {
                break;
            }
            let bytes = self.outbox.lock().expect("outbox lock").read(e);
            let bytes = match bytes {
                Ok(b) => b,
                // A damaged record is moved aside by the outbox itself.
                Err(err) => {
                    tracing::error!("PACS outbox record {}: {err:#}", e.seq);
                    continue;
                }
            };
            let outcome = self.store(&mut assoc, &accepted, (n % 0xFFFF) as u16 + 1, &bytes)?;
            let mut o = self.outbox.lock().expect("outbox lock");
            match outcome {
                Sent::Stored => {
                    o.remove(e)?;
                    self.stats.lock().expect("stats lock").pacs_sent += 1;
                }
                Sent::Refused(why) => {
                    tracing::error!(
                        "PACS {} refused object {} for good: {why}; set aside (its copy is in done/)",
                        self.pacs.ae_title,
                        e.seq
                    );
                    o.drop_entry(e, &format!("refused by the PACS: {why}"))?;
                }
            }
            self.stats.lock().expect("stats lock").pacs_outbox_depth = Some(o.depth());
        }
        let _ = assoc.release();
        Ok(())
    }

    fn store(
        &self,
        assoc: &mut dicom_ul::ClientAssociation<std::net::TcpStream>,
        accepted: &[dicom_ul::pdu::PresentationContextNegotiated],
        message_id: u16,
        file: &[u8],
    ) -> anyhow::Result<Sent> {
        let obj = dicom_object::OpenFileOptions::new()
            .from_reader(&file[128..])
            .map_err(|e| anyhow::anyhow!("a queued object does not parse: {e}"))?;
        let uid = obj.meta().media_storage_sop_instance_uid().to_owned();
        let class = obj
            .meta()
            .media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .to_owned();
        let Some(pc) = accepted
            .iter()
            .find(|p| p.abstract_syntax.trim_end_matches('\0') == class)
        else {
            return Ok(Sent::Refused(format!(
                "the PACS accepts no {class} (no presentation context accepted)"
            )));
        };
        let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
            .get(&pc.transfer_syntax)
            .with_context(|| format!("transfer syntax {} unknown", pc.transfer_syntax))?;
        let mut data = Vec::new();
        obj.write_dataset_with_ts(&mut data, ts)
            .map_err(|e| anyhow::anyhow!("cannot encode the object: {e}"))?;
        let rq = Command::store_rq(message_id, &class, uid.trim_end_matches('\0'));
        assoc.send(&rq.pdu(pc.id))?;
        {
            let mut w = assoc.send_pdata(pc.id);
            w.write_all(&data)?;
            w.finish()?;
        }
        let mut command = Vec::new();
        loop {
            match assoc.receive()? {
                Pdu::PData { data } => {
                    for v in data {
                        if v.value_type == PDataValueType::Command {
                            command.extend_from_slice(&v.data);
                            if v.is_last {
                                let rsp = Command::decode(&command).map_err(anyhow::Error::msg)?;
                                let s = rsp.status.context("a C-STORE-RSP without a status")?;
                                return Ok(if status::is_stored(s) {
                                    Sent::Stored
                                } else if status::is_transient(s) {
                                    anyhow::bail!(
                                        "C-STORE status {s:04X}{}: will retry",
                                        rsp.error_comment
                                            .map(|c| format!(" ({c})"))
                                            .unwrap_or_default()
                                    )
                                } else {
                                    Sent::Refused(format!(
                                        "C-STORE status {s:04X}{}",
                                        rsp.error_comment
                                            .map(|c| format!(" ({c})"))
                                            .unwrap_or_default()
                                    ))
                                });
                            }
                        }
                    }
                }
                Pdu::AbortRQ { .. } => anyhow::bail!("the PACS aborted the association"),
                other => anyhow::bail!("unexpected {} from the PACS", other.short_description()),
            }
        }
    }
}
