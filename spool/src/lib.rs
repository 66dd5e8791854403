//! Loopline's on-disk spool: append-only, checksummed segment files holding telemetry batches until the broker acknowledges them.
