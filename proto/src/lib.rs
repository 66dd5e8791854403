//! The Loopline wire contract, v1.
//!
//! How this crate is laid out:
//! - [`v1`]: the prost-generated messages of `proto/loopline.proto` (package `loopline.v1`).
//!   Generated code lives here and nowhere else; its lint exemptions stay inside that module.
//! - [`topic`]: the MQTT topic namespace `loopline/v1/{site}/{line}/{device}/{kind}`. No binary
//!   formats or parses topic strings by hand; they all come through here.
//! - [`pack`]: the columnar packing of samples inside a [`v1::Channel`] (delta-coded
//!   timestamps, values, quality), with the checks a receiver must run before trusting it.
//!
//! The crate knows nothing of MQTT connections or files: binaries wire it to those.

pub mod pack;
pub mod topic;

/// Generated types of the `loopline.v1` protobuf package.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/loopline.v1.rs"));

    /// The contract version this crate speaks, carried in every message's `schema_version`.
    pub const SCHEMA_VERSION: u32 = 1;
}

pub use prost::Message;
