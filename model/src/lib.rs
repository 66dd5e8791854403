//! Loopline's anomaly model: window features, int8 quantisation, integer-only inference and the
//! signed safetensors artifact.

pub mod release;
