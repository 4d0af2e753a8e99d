//! The read side over PostgreSQL: the projector, the read-model queries, the positioned
//! log reader (events pages, exports, time travel) and shadow-table rebuilds.

mod apply;
pub(crate) mod binary_copy;
mod log_reader;
mod projector;
mod queries;
mod rebuild;

pub use log_reader::{log_event, log_event_with_payload, PgEventLog};
pub use projector::{ActiveSession, PgProjector, ProjectorConfig, StepOutcome, LOCK_KEY};
pub use queries::PgReadModels;
pub use rebuild::{RebuildConfig, RebuildPhase, RebuildProgress, RebuildReport};
