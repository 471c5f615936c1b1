//! Rate limiting of a plugin's fault lines: at most one per second per plugin, carrying the count
//! of the ones left out, so a plugin faulting on every request cannot flood the proxy's log (or
//! slow it down writing one).

use std::sync::atomic::{AtomicU64, Ordering};

/// The fault lines of one plugin.
#[derive(Default)]
pub(crate) struct QuietLog {
    /// The second (of the runtime's clock) of the last line written, plus one; 0 for none yet.
    last: AtomicU64,
    /// Lines left out since then.
    suppressed: AtomicU64,
}

impl QuietLog {
    /// Whether a line may be written at second `now_sec`: `Some(n)` with the number of lines
    /// left out before it, or `None` when this one is left out too.
    pub(crate) fn admit(&self, now_sec: u64) -> Option<u64> {
        let stamp = now_sec + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last < stamp
            && self
                .last
                .compare_exchange(last, stamp, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_second_with_the_count_left_out() {
        let q = QuietLog::default();
        assert_eq!(q.admit(0), Some(0));
        for _ in 0..999 {
            assert_eq!(q.admit(0), None);
        }
        assert_eq!(q.admit(1), Some(999));
        assert_eq!(q.admit(1), None);
        assert_eq!(q.admit(5), Some(1));
        // A clock read late on another thread does not reopen an earlier second.
        assert_eq!(q.admit(4), None);
    }
}
