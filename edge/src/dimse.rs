//! DIMSE messages over a dicom-ul association, for the storage SCP (`scp.rs`) and the PACS
//! sender (`pacs.rs`): command sets (always Implicit VR Little Endian, PS3.7 6.3.1) built
//! and read with dicom-object, and the few statuses both sides act on.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};

/// Largest command set accepted: a C-STORE-RQ is a few hundred bytes.
pub const MAX_COMMAND_BYTES: usize = 64 << 10;

/// The largest PDU the storage SCP accepts by default (`[dicom] max_pdu_bytes`).
pub const MAX_PDU_BYTES: u32 = 64 << 10;

/// The Verification SOP class (C-ECHO).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// DIMSE command fields (PS3.7 E.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandField {
    /// C-STORE-RQ.
    StoreRq,
    /// C-STORE-RSP.
    StoreRsp,
    /// C-ECHO-RQ.
    EchoRq,
    /// C-ECHO-RSP.
    EchoRsp,
    /// Any other (C-FIND, C-MOVE, N-…): not served here.
    Other(u16),
}

impl CommandField {
    fn code(self) -> u16 {
        match self {
            CommandField::StoreRq => 0x0001,
            CommandField::StoreRsp => 0x8001,
            CommandField::EchoRq => 0x0030,
            CommandField::EchoRsp => 0x8030,
            CommandField::Other(c) => c,
        }
    }

    fn from_code(c: u16) -> Self {
        match c {
            0x0001 => CommandField::StoreRq,
            0x8001 => CommandField::StoreRsp,
            0x0030 => CommandField::EchoRq,
            0x8030 => CommandField::EchoRsp,
            c => CommandField::Other(c),
        }
    }
}

/// Statuses (PS3.7 C, PS3.4 B.2.3).
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: out of resources (the object exceeds a limit, the disk is full).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: data set does not match SOP class.
    pub const DATA_SET_MISMATCH: u16 = 0xA900;
    /// Error: cannot understand.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;

    /// Success and the warnings (0001, Bxxx), after which the object is stored.
    pub fn is_stored(s: u16) -> bool {
        s == SUCCESS || s == 0x0001 || (s & 0xF000) == 0xB000
    }

    /// Failures worth trying again later: out of resources (A7xx), and 0xFE00 (cancel).
    pub fn is_transient(s: u16) -> bool {
        (s & 0xFF00) == 0xA700 || s == 0xFE00
    }
}

/// The fields of a command set that the two sides read.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    /// What it is.
    pub field: CommandField,
    /// Affected SOP Class UID.
    pub sop_class: String,
    /// Affected SOP Instance UID (C-STORE).
    pub sop_instance: Option<String>,
    /// Message ID (requests) or Message ID Being Responded To (responses).
    pub message_id: u16,
    /// Whether a data set follows.
    pub has_data_set: bool,
    /// Status (responses).
    pub status: Option<u16>,
    /// Error Comment (responses), for the log of whoever sent the request.
    pub error_comment: Option<String>,
}

fn ui(tag: Tag, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::UI, PrimitiveValue::from(v))
}

fn us(tag: Tag, v: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(v))
}

/// No data set follows (Command Data Set Type).
const NO_DATA_SET: u16 = 0x0101;

impl Command {
    /// A C-STORE-RQ for one object, medium priority.
    pub fn store_rq(message_id: u16, sop_class: &str, sop_instance: &str) -> Self {
        Command {
            field: CommandField::StoreRq,
            sop_class: sop_class.to_owned(),
            sop_instance: Some(sop_instance.to_owned()),
            message_id,
            has_data_set: true,
            status: None,
            error_comment: None,
        }
    }

    /// The response to `rq` with `status`.
    pub fn response(rq: &Command, status: u16, error_comment: Option<String>) -> Self {
        let field = match rq.field {
            CommandField::EchoRq => CommandField::EchoRsp,
            _ => CommandField::StoreRsp,
        };
        Command {
            field,
            sop_class: rq.sop_class.clone(),
            sop_instance: rq.sop_instance.clone(),
            message_id: rq.message_id,
            has_data_set: false,
            status: Some(status),
            error_comment,
        }
    }

    /// The command set's bytes, Command Group Length first.
    pub fn encode(&self) -> Vec<u8> {
        let is_rq = matches!(
            self.field,
            CommandField::StoreRq | CommandField::EchoRq | CommandField::Other(_)
        );
        let mut e = vec![
            ui(tags::AFFECTED_SOP_CLASS_UID, &self.sop_class),
            us(tags::COMMAND_FIELD, self.field.code()),
            us(
                if is_rq {
                    tags::MESSAGE_ID
                } else {
                    tags::MESSAGE_ID_BEING_RESPONDED_TO
                },
                self.message_id,
            ),
            us(
                tags::COMMAND_DATA_SET_TYPE,
                if self.has_data_set {
                    0x0000
                } else {
                    NO_DATA_SET
                },
            ),
        ];
        if self.field == CommandField::StoreRq {
            e.push(us(tags::PRIORITY, 0x0000));
        }
        if let Some(s) = self.status {
            e.push(us(tags::STATUS, s));
        }
        if let Some(c) = &self.error_comment {
            // LO: at most 64 characters.
            let c: String = c.chars().take(64).collect();
            e.push(DataElement::new(
                tags::ERROR_COMMENT,
                VR::LO,
                PrimitiveValue::from(c),
            ));
        }
        if let Some(i) = &self.sop_instance {
            e.push(ui(tags::AFFECTED_SOP_INSTANCE_UID, i));
        }
        let mut body = Vec::new();
        InMemDicomObject::from_element_iter(e)
            .write_dataset_with_ts(&mut body, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
            .expect("a command set of fixed elements encodes");
        // (0000,0000) UL, implicit VR: tag, 4-byte length, value.
        let mut out = Vec::with_capacity(body.len() + 12);
        out.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0]);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Reads a command set. Every element's declared length is checked against the bytes
    /// received before dicom-object sees them: it would allocate what a peer declares.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        check_lengths(bytes)?;
        let obj =
            InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
                .map_err(|e| format!("unreadable command set: {e}"))?;
        let text = |t: Tag| -> Option<String> {
            obj.element_opt(t)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
        };
        let num = |t: Tag| -> Option<u16> {
            obj.element_opt(t)
                .ok()
                .flatten()
                .and_then(|e| e.to_int::<u16>().ok())
        };
        let field = CommandField::from_code(
            num(tags::COMMAND_FIELD).ok_or("the command set has no Command Field")?,
        );
        let message_id = num(tags::MESSAGE_ID)
            .or_else(|| num(tags::MESSAGE_ID_BEING_RESPONDED_TO))
            .ok_or("the command set has no Message ID")?;
        Ok(Command {
            field,
            sop_class: text(tags::AFFECTED_SOP_CLASS_UID).unwrap_or_default(),
            sop_instance: text(tags::AFFECTED_SOP_INSTANCE_UID),
            message_id,
            has_data_set: num(tags::COMMAND_DATA_SET_TYPE).is_some_and(|t| t != NO_DATA_SET),
            status: num(tags::STATUS),
            error_comment: text(tags::ERROR_COMMENT),
        })
    }

    /// The command as one P-DATA PDU on presentation context `pc`.
    pub fn pdu(&self, pc: u8) -> Pdu {
        Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: true,
                data: self.encode(),
            }],
        }
    }
}

/// Walks a command set's elements (Implicit VR Little Endian: tag, 32-bit length, value)
/// and refuses any whose declared length runs past the bytes received, an undefined length
/// (command sets have no sequences) and any element outside group 0000.
fn check_lengths(bytes: &[u8]) -> Result<(), String> {
    let mut at = 0usize;
    while at < bytes.len() {
        let head = bytes.get(at..at + 8).ok_or_else(|| {
            format!(
                "a command set truncated inside an element header at byte {at} of {}",
                bytes.len()
            )
        })?;
        let group = u16::from_le_bytes([head[0], head[1]]);
        let element = u16::from_le_bytes([head[2], head[3]]);
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if group != 0 {
            return Err(format!(
                "element ({group:04X},{element:04X}) in a command set (group 0000 only)"
            ));
        }
        let left = bytes.len() - at - 8;
        if len == u32::MAX || len as usize > left {
            return Err(format!(
                "command set element (0000,{element:04X}) declares {len} bytes where {left} remain"
            ));
        }
        at += 8 + len as usize;
    }
    Ok(())
}

/// A UID as PS3.5 9.1 has it: 1 to 64 characters of digits and dots, no empty component,
/// no leading zero in a component. Received UIDs name files: this is also what keeps a
/// peer's UID from naming a path.
pub fn is_valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
                && (c == "0" || !c.starts_with('0'))
        })
}

/// A `2.25.` UID (PS3.5 B.2) from 128 bits of a SHA-256 of `parts`: the same parts give the
/// same UID, so a re-sent report keeps its identity.
pub fn derived_uid(parts: &[&str]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let n = u128::from_be_bytes(d[..16].try_into().expect("16 bytes"));
    format!("2.25.{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let rq = Command::store_rq(7, "1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.4");
        let back = Command::decode(&rq.encode()).unwrap();
        assert_eq!(back, rq);
        let rsp = Command::response(&rq, status::OUT_OF_RESOURCES, Some("too big".into()));
        let back = Command::decode(&rsp.encode()).unwrap();
        assert_eq!(back.field, CommandField::StoreRsp);
        assert_eq!(back.status, Some(0xA700));
        assert_eq!(back.message_id, 7);
        assert!(!back.has_data_set);
        assert_eq!(back.error_comment.as_deref(), Some("too big"));
        // The group length counts the bytes after it.
        let bytes = rsp.encode();
        let n = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        assert_eq!(n, bytes.len() - 12);
    }

    #[test]
    fn declared_lengths_are_bounded_by_the_bytes_received() {
        // The 26-byte command that made fv-edge allocate 4 GiB: a group length, then
        // (0000,0002) declaring 0xFFFFFFFE bytes.
        let mut evil = vec![0, 0, 0, 0, 4, 0, 0, 0, 14, 0, 0, 0];
        evil.extend_from_slice(&[
            0, 0, 2, 0, 0xFE, 0xFF, 0xFF, 0xFF, b'1', b'.', b'2', 0, 0, 0,
        ]);
        assert_eq!(evil.len(), 26);
        let e = Command::decode(&evil).unwrap_err();
        assert!(e.contains("(0000,0002) declares 4294967294 bytes"), "{e}");
        let mut undefined = evil.clone();
        undefined[16..20].copy_from_slice(&[0xFF; 4]);
        assert!(Command::decode(&undefined).is_err());
        let mut other_group = Command::store_rq(1, "1.2", "1.2.3").encode();
        other_group.extend_from_slice(&[8, 0, 0x16, 0, 0, 0, 0, 0]);
        assert!(Command::decode(&other_group)
            .unwrap_err()
            .contains("(0008,0016)"));
        let good = Command::store_rq(1, "1.2", "1.2.3").encode();
        for cut in [1, 5, 13] {
            assert!(
                Command::decode(&good[..good.len() - cut]).is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn uids() {
        assert!(is_valid_uid("1.2.840.10008.1.1"));
        assert!(is_valid_uid("2.25.0"));
        for bad in ["", "1..2", "1.02", "../etc", "1.2/3", &"1".repeat(65)] {
            assert!(!is_valid_uid(bad), "{bad}");
        }
        let u = derived_uid(&["sr", "abc"]);
        assert!(is_valid_uid(&u), "{u}");
        assert_eq!(u, derived_uid(&["sr", "abc"]));
        assert_ne!(u, derived_uid(&["sr", "abd"]));
        assert_ne!(derived_uid(&["a", "bc"]), derived_uid(&["ab", "c"]));
    }
}
