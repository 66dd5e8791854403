//! Loopline's physical production-line simulator: machines, sensors, faults and ground-truth labels, deterministic per seed.
