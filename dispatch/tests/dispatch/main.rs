//! Dispatch's integration tests, one binary: the backends (local everywhere, Slurm against a
//! real one-node cluster), the HTTP API and CLI, a `kill -9` restart, the release path to a
//! real agent, and the triggers on simulated lines through the lake.

mod api;
mod backend_local;
mod backend_slurm;
mod release;
mod restart;
mod triggers;
