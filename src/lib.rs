//! `loopline`: the umbrella command. It ties the agent and ingest libraries together into
//! `loopline demo` (a whole factory in one process) and runs the embedded broker
//! (`loopline broker`, from `loopline_common::embedded_broker`) for machines without
//! Mosquitto.
//!
//! How this crate is laid out:
//! - [`demo`]: the demo's orchestration, live progress, read-back verification and summary.
//! - [`closed_loop`]: dispatch in the demo, and the loop's figures measured from the lake.
//! - [`report`]: the demo's self-contained HTML report (inline SVG plots and tables).
//!
//! End-to-end tests of the real binaries live in `tests/`.

pub mod closed_loop;
pub mod demo;
pub mod report;
