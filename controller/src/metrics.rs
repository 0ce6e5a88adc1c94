//! Controller metrics (prefix `portcullis_controller`): reconciles, errors by reason,
//! reconcile durations and key rotation steps. Labels carry stable reasons and step
//! names, never resource contents.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A stable error label (see `Error::label`).
    pub reason: String,
}

/// Label of the rotation counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    /// `generated`, `added`, `promoted` or `removed`.
    pub step: String,
}

/// The controller's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Reconciles started.
    pub reconciles: Counter,
    /// Failed reconciles by reason.
    pub errors: Family<ReasonLabel, Counter>,
    /// Reconcile duration.
    pub duration: Histogram,
    /// Keyring steps taken.
    pub key_steps: Family<StepLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Counter::default(),
            errors: Family::default(),
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            key_steps: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric in `registry` (which carries the prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register("reconciles", "Reconciles started", self.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by reason",
            self.errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration in seconds",
            self.duration.clone(),
        );
        registry.register(
            "key_rotation_steps",
            "Keyring steps taken (generated, added, promoted, removed)",
            self.key_steps.clone(),
        );
    }

    /// A registry with the `portcullis_controller` prefix and these metrics.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("portcullis_controller");
        self.register(&mut registry);
        registry
    }

    /// Counts a failure.
    pub fn error(&self, reason: &str) {
        self.errors
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records a finished reconcile.
    pub fn observe(&self, took: Duration) {
        self.duration.observe(took.as_secs_f64());
    }

    /// Counts a keyring step.
    pub fn key_step(&self, step: &str) {
        self.key_steps
            .get_or_create(&StepLabel {
                step: step.to_owned(),
            })
            .inc();
    }
}

/// The text exposition of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_prefixed_metrics() {
        let m = Metrics::default();
        m.reconciles.inc();
        m.error("apply");
        m.observe(Duration::from_millis(20));
        m.key_step("added");
        let text = encode(&m.registry());
        assert!(
            text.contains("portcullis_controller_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("portcullis_controller_reconcile_errors_total{reason=\"apply\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("portcullis_controller_reconcile_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("portcullis_controller_key_rotation_steps_total{step=\"added\"} 1"),
            "{text}"
        );
    }
}
