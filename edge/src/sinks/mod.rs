//! Where a result goes: the fleet over MQTT (`mqtt`) through the durable `outbox`; the PACS
//! (`pacs`) as a Structured Report (`sr`) and a Secondary Capture of the marks (`sc`); the
//! radiographer, as the overlay beside the input (`overlay`) and the reading screen
//! (`screen`).

pub mod mqtt;
pub mod outbox;
pub mod overlay;
pub mod pacs;
pub mod sc;
pub mod screen;
pub mod sr;
