//! A pull's progress from its per-layer events. Pure.
//!
//! - Layers: every layer seen counts; one is done once downloaded (extracting counts as done)
//!   or when it was already present.
//! - Bytes: over the layers whose size the registry gave; a done layer counts whole.
//! - Percent: by bytes while every layer still to download has a known size, else by layers;
//!   layers that were already present are not work and are left out of both. It never goes
//!   down, and is 100 once the pull completes.

use std::collections::BTreeMap;

use crate::orchestrator::runtime::{LayerStep, PullEvent};
use crate::wire::prepull::PrepullProgress;

#[derive(Debug, Default, Clone, Copy)]
struct Layer {
    current: u64,
    total: Option<u64>,
    done: bool,
    present: bool,
}

/// The progress of one pull.
#[derive(Debug, Default)]
pub struct Progress {
    layers: BTreeMap<String, Layer>,
    percent: f64,
}

impl Progress {
    /// Takes one event into account.
    pub fn apply(&mut self, event: &PullEvent) {
        let layer = self.layers.entry(event.layer.clone()).or_default();
        match event.step {
            LayerStep::Known => {}
            LayerStep::Downloading { current, total } => {
                layer.current = current;
                if total.is_some() {
                    layer.total = total;
                }
            }
            LayerStep::Done => layer.done = true,
            LayerStep::Present => {
                layer.done = true;
                layer.present = true;
            }
        }
        self.percent = self.percent.max(self.computed());
    }

    /// Marks the pull complete: every layer done, 100 %.
    pub fn complete(&mut self) {
        for layer in self.layers.values_mut() {
            layer.done = true;
        }
        self.percent = 100.0;
    }

    /// The wire view.
    pub fn snapshot(&self) -> PrepullProgress {
        let (bytes_total, bytes_done) = self.bytes(|_| true);
        PrepullProgress {
            layers_total: count(self.layers.len()),
            layers_done: count(self.layers.values().filter(|l| l.done).count()),
            bytes_total,
            bytes_done,
            percent: (self.percent * 10.0).round() / 10.0,
        }
    }

    /// (total, done) bytes over the layers `which` selects that have a known size.
    fn bytes(&self, which: impl Fn(&Layer) -> bool) -> (u64, u64) {
        self.layers
            .values()
            .filter(|l| which(l))
            .filter_map(|l| {
                let total = l.total?;
                Some((total, if l.done { total } else { l.current.min(total) }))
            })
            .fold((0, 0), |(t, d), (lt, ld)| {
                (t.saturating_add(lt), d.saturating_add(ld))
            })
    }

    fn computed(&self) -> f64 {
        let work: Vec<&Layer> = self.layers.values().filter(|l| !l.present).collect();
        if work.is_empty() {
            return 0.0;
        }
        let sized = work.iter().all(|l| l.done || l.total.is_some());
        let (total, done) = self.bytes(|l| !l.present);
        let percent = if sized && total > 0 {
            done as f64 * 100.0 / total as f64
        } else {
            work.iter().filter(|l| l.done).count() as f64 * 100.0 / work.len() as f64
        };
        percent.clamp(0.0, 100.0)
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(layer: &str, step: LayerStep) -> PullEvent {
        PullEvent {
            layer: layer.into(),
            step,
        }
    }

    fn downloading(current: u64, total: Option<u64>) -> LayerStep {
        LayerStep::Downloading { current, total }
    }

    #[test]
    fn bytes_decide_once_every_layer_to_download_has_a_size() {
        let mut p = Progress::default();
        p.apply(&event("base", LayerStep::Present));
        p.apply(&event("a", LayerStep::Known));
        p.apply(&event("b", LayerStep::Known));
        let s = p.snapshot();
        assert_eq!((s.layers_total, s.layers_done, s.percent), (3, 1, 0.0));
        // One size known, one not: by layers (0 of the 2 to download).
        p.apply(&event("a", downloading(30, Some(100))));
        assert_eq!(p.snapshot().percent, 0.0);
        // Both known: by bytes.
        p.apply(&event("b", downloading(0, Some(300))));
        let s = p.snapshot();
        assert_eq!((s.bytes_total, s.bytes_done, s.percent), (400, 30, 7.5));
        p.apply(&event("a", LayerStep::Done));
        let s = p.snapshot();
        assert_eq!((s.layers_done, s.bytes_done, s.percent), (2, 100, 25.0));
        p.apply(&event("b", downloading(150, Some(300))));
        assert_eq!(p.snapshot().percent, 62.5);
        p.apply(&event("b", LayerStep::Done));
        let s = p.snapshot();
        assert_eq!((s.layers_done, s.bytes_done, s.percent), (3, 400, 100.0));
    }

    #[test]
    fn percent_never_goes_down_and_completion_is_100() {
        let mut p = Progress::default();
        p.apply(&event("a", LayerStep::Known));
        p.apply(&event("b", LayerStep::Done));
        // By layers: 1 of 2.
        assert_eq!(p.snapshot().percent, 50.0);
        // Now by bytes (b has no size, so it counts nothing): 10 %, but shown stays 50.
        p.apply(&event("a", downloading(10, Some(100))));
        assert_eq!(p.snapshot().percent, 50.0);
        p.apply(&event("a", downloading(80, Some(100))));
        assert_eq!(p.snapshot().percent, 80.0);
        p.complete();
        let s = p.snapshot();
        assert_eq!((s.layers_done, s.layers_total, s.percent), (2, 2, 100.0));
    }

    #[test]
    fn odd_events_stay_in_range() {
        let mut p = Progress::default();
        assert_eq!(p.snapshot(), PrepullProgress::default());
        // A current beyond the total, a total that disappears, a size of u64::MAX.
        p.apply(&event("a", downloading(500, Some(100))));
        assert_eq!(p.snapshot().bytes_done, 100);
        p.apply(&event("a", downloading(60, None)));
        assert_eq!(p.snapshot().bytes_total, 100, "a known size is kept");
        p.apply(&event("b", downloading(u64::MAX, Some(u64::MAX))));
        let s = p.snapshot();
        assert!((0.0..=100.0).contains(&s.percent), "{s:?}");
        assert_eq!(s.bytes_total, u64::MAX);
        // Only layers that were present: nothing to do, nothing claimed until completion.
        let mut present = Progress::default();
        present.apply(&event("a", LayerStep::Present));
        assert_eq!(present.snapshot().percent, 0.0);
    }
}
