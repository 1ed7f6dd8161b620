//! Small helpers with no knowledge of specs or networks, below every other module: the seeded
//! generator, atomic file writes and number formatting.

pub mod atomic;
pub mod rng;

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
