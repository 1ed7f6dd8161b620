//! Small helpers with no knowledge of specs or networks, below every other module: the seeded
//! generator and atomic file writes.

pub mod atomic;
pub mod rng;
