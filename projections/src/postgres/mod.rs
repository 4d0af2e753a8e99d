//! The read side over PostgreSQL: the projector and the read-model queries.

mod apply;
mod projector;
mod queries;

pub use projector::{ActiveSession, PgProjector, ProjectorConfig, StepOutcome};
pub use queries::PgReadModels;
