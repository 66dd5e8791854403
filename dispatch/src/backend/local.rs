//! Child processes on this machine.
