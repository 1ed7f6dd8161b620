//! A simulated allocator: the engines' allocation rules are replayed against it (`cpu`,
//! `torch`), and it keeps the current and peak bytes and where the peak was reached.

use std::cell::RefCell;
use std::rc::Rc;

#[derive(Default)]
struct State {
    cur: u64,
    peak: u64,
    /// What was running when the peak was reached.
    peak_at: String,
    at: String,
}

/// Shared by every block it hands out; a block frees its bytes when dropped.
#[derive(Clone, Default)]
pub struct Heap(Rc<RefCell<State>>);

/// An allocation: its bytes are freed when the last handle (`Buf`) on it is dropped.
pub struct Block {
    bytes: u64,
    heap: Heap,
}

/// A block shared by several holders, as the CPU network shares `Arc<Vec<f32>>` values.
pub type Buf = Rc<Block>;

impl Heap {
    pub fn new() -> Heap {
        Heap::default()
    }
    /// Names what runs from now on, for `peak_at`.
    pub fn at(&self, what: impl Into<String>) {
        self.0.borrow_mut().at = what.into();
    }
    fn grow(&self, bytes: u64) {
        let mut s = self.0.borrow_mut();
        s.cur += bytes;
        if s.cur > s.peak {
            s.peak = s.cur;
            s.peak_at = s.at.clone();
        }
    }
    pub fn alloc(&self, bytes: usize) -> Block {
        self.grow(bytes as u64);
        Block {
            bytes: bytes as u64,
            heap: self.clone(),
        }
    }
    pub fn shared(&self, bytes: usize) -> Buf {
        Rc::new(self.alloc(bytes))
    }
    /// `bytes` allocated and freed again (a workspace), on top of what is live.
    pub fn transient(&self, bytes: usize) {
        drop(self.alloc(bytes));
    }
    pub fn current(&self) -> u64 {
        self.0.borrow().cur
    }
    pub fn peak(&self) -> u64 {
        self.0.borrow().peak
    }
    pub fn peak_at(&self) -> String {
        self.0.borrow().peak_at.clone()
    }
    /// Starts a new peak from what is live now.
    pub fn reset_peak(&self) {
        let mut s = self.0.borrow_mut();
        s.peak = s.cur;
        s.peak_at = s.at.clone();
    }
}

impl Block {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.heap.0.borrow_mut().cur -= self.bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_the_most_live_at_once_not_the_sum() {
        let h = Heap::new();
        h.at("a");
        let a = h.shared(100);
        let b = a.clone();
        h.at("c");
        let c = h.alloc(50);
        drop(a);
        assert_eq!(h.current(), 150, "a is still held by b");
        drop(b);
        h.at("d");
        h.transient(120);
        assert_eq!((h.current(), h.peak()), (50, 170));
        assert_eq!(h.peak_at(), "d");
        drop(c);
        assert_eq!(h.current(), 0);
    }
}
