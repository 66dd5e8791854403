//! Loopline's NPU device simulator: latency, power, thermal throttling and faults of real edge accelerators.
