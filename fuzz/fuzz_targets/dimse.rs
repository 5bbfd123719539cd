//! The DICOM node's network input as bytes: a PDU as dicom-ul reads it at the SCP's PDU limit,
//! and the command sets inside a P-DATA (or the bytes themselves as one) as fv-edge's SCP
//! decodes them: an error, never a panic, and never an allocation of what a peer declares.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fv_edge::dimse::Command::decode(data);
    if let Ok(Some(dicom_ul::pdu::Pdu::PData { data: values })) =
        dicom_ul::pdu::read_pdu(data, fv_edge::dimse::MAX_PDU_BYTES, true)
    {
        for v in values {
            let _ = fv_edge::dimse::Command::decode(&v.data);
        }
    }
});
