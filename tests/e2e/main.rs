//! End-to-end tests: the real binaries against a real broker (Mosquitto when installed, the
//! embedded broker otherwise), with the lake read back from the Parquet files.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap its own fixtures should fail loudly

mod config_docs;
mod demo;
mod deploy;
mod durability;
mod evolution;
mod faults;
mod harness;
mod malformed;
mod pipeline;
