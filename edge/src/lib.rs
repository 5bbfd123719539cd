//! `fv-edge`: the daemon beside a portable X-ray unit. Sources, inference engines, the
//! pipeline and MQTT publishing arrive with the edge issue; today it has the input check
//! that every source runs first.

pub mod inspect;
