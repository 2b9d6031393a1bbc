//! Progress and cancellation of a long attribution, shared between the thread that runs it and
//! the one that shows it (`ntv tui`). The engines count work units as they finish them
//! (integrated gradients: one per quadrature node; the other methods: one per target) and stop
//! at the next unit boundary once cancelled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::AttributionError;

#[derive(Debug, Default)]
struct Shared {
    cancelled: AtomicBool,
    done: AtomicU64,
    total: AtomicU64,
}

/// A cheap handle (clones share the state); the default one is never cancelled and reports to
/// nobody.
#[derive(Debug, Clone, Default)]
pub struct Watch(Arc<Shared>);

impl Watch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask the run to stop at its next unit boundary.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Relaxed)
    }

    /// `Err(Cancelled)` once [`Watch::cancel`] was called.
    pub fn check(&self) -> Result<(), AttributionError> {
        if self.is_cancelled() {
            Err(AttributionError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// More units to do (called as each target's work becomes known).
    pub fn add_total(&self, units: u64) {
        self.0.total.fetch_add(units, Ordering::Relaxed);
    }

    /// `units` more done.
    pub fn advance(&self, units: u64) {
        self.0.done.fetch_add(units, Ordering::Relaxed);
    }

    /// (done, total) so far; total 0 while the run is still preparing (loading the engine).
    pub fn progress(&self) -> (u64, u64) {
        (
            self.0.done.load(Ordering::Relaxed),
            self.0.total.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_progress_and_cancellation() {
        let w = Watch::new();
        let seen = w.clone();
        assert_eq!(seen.progress(), (0, 0));
        w.add_total(10);
        w.advance(3);
        assert_eq!(seen.progress(), (3, 10));
        assert!(seen.check().is_ok());
        seen.cancel();
        assert!(w.is_cancelled());
        assert!(matches!(w.check(), Err(AttributionError::Cancelled)));
        // A fresh default handle is independent.
        assert!(!Watch::default().is_cancelled());
    }
}
