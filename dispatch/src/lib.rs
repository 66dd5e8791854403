//! Training dispatch: decides when a line's model is retrained, runs the training job on the
//! GPU pool, and rolls the better model back out to the line's devices.
//!
//! ```text
//!  lake ──► triggers (volume, drift, schedule, manual; guards) ──► job queue (SQLite)
//!                                                                   │ scheduler: priority, fair share
//!                                                                   ▼
//!                                      GPU pool: backend `local` (child processes) | `slurm`
//!                                                                   │ loopline-train → artifact + metrics.json
//!                                                                   ▼
//!                             registry (<lake>/_models) ──► signed release ──► canary ──► line
//! ```

pub mod backend;
pub mod drift;
pub mod lake;
pub mod triggers;
