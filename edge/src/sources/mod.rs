//! Where images come from: the watch folder's settled files (`watch`), DICOM Part
//! 10 objects (`dicom`), the DICOM node that takes them by C-STORE (`scp`) and the V4L2 frame
//! grabber (`v4l`), each turned into one [`input::Input`] or an [`input_error::InputError`]
//! that names the input and the reason.

pub mod dicom;
pub mod input;
pub mod input_error;
pub mod scp;
pub mod v4l;
pub mod watch;
