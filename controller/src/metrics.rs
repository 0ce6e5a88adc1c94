//! Controller metrics (prefix `portcullis_controller`): reconciles, errors by reason,
//! reconcile durations, key rotation steps, and how many of each array's members serve
//! its config and keyring. Labels carry stable reasons, step names and array names,
//! never resource contents. The chart's dashboard and alert rules name these metrics;
//! `e2e/tests/monitoring.rs` fails when they name one that is not exported here.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

/// Labels of the per-array gauges. `array_namespace`, not `namespace`: a scrape's own
/// `namespace` label (the controller's) would otherwise overwrite it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ArrayLabel {
    /// The GatewayArray's namespace.
    pub array_namespace: String,
    /// The GatewayArray's name.
    pub array: String,
}

/// Labels of the members-behind gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ArrayKindLabel {
    /// The GatewayArray's namespace.
    pub array_namespace: String,
    /// The GatewayArray's name.
    pub array: String,
    /// `config` or `keyring`.
    pub kind: &'static str,
}

/// How far an array's ready members are from what the controller wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Convergence {
    /// Ready members.
    pub ready: usize,
    /// Ready members not serving the config in the array's ConfigMap.
    pub behind_config: usize,
    /// Ready members whose loaded key ids differ from the keyring in the array's Secret.
    pub behind_keyring: usize,
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
    /// Ready members per array.
    pub members_ready: Family<ArrayLabel, Gauge>,
    /// Ready members behind the array's config or keyring.
    pub members_behind: Family<ArrayKindLabel, Gauge>,
    /// Arrays with gauges, so those of deleted arrays can be dropped.
    arrays: Arc<parking_lot::Mutex<BTreeSet<ArrayLabel>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Counter::default(),
            errors: Family::default(),
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            key_steps: Family::default(),
            members_ready: Family::default(),
            members_behind: Family::default(),
            arrays: Arc::default(),
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
        registry.register(
            "array_members_ready",
            "Ready members of each GatewayArray, as of its last reconcile",
            self.members_ready.clone(),
        );
        registry.register(
            "array_members_behind",
            "Ready members not serving the array's config (kind=config) or keyring (kind=keyring), as of its last reconcile",
            self.members_behind.clone(),
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

impl Metrics {
    /// Records array `namespace/name`'s members after a reconcile.
    pub fn array_members(&self, namespace: &str, name: &str, c: Convergence) {
        let array = ArrayLabel {
            array_namespace: namespace.to_owned(),
            array: name.to_owned(),
        };
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.members_ready.get_or_create(&array).set(n(c.ready));
        for (kind, behind) in [("config", c.behind_config), ("keyring", c.behind_keyring)] {
            self.members_behind
                .get_or_create(&Self::kind_label(&array, kind))
                .set(n(behind));
        }
        self.arrays.lock().insert(array);
    }

    /// Drops the gauges of every array `exists` says is gone, so a deleted array leaves
    /// no series (and no firing alert) behind.
    pub fn retain_arrays(&self, exists: impl Fn(&str, &str) -> bool) {
        self.arrays.lock().retain(|a| {
            let keep = exists(&a.array_namespace, &a.array);
            if !keep {
                self.members_ready.remove(a);
                for kind in ["config", "keyring"] {
                    self.members_behind.remove(&Self::kind_label(a, kind));
                }
            }
            keep
        });
    }

    fn kind_label(array: &ArrayLabel, kind: &'static str) -> ArrayKindLabel {
        ArrayKindLabel {
            array_namespace: array.array_namespace.clone(),
            array: array.array.clone(),
            kind,
        }
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

    #[test]
    fn array_gauges_are_set_and_dropped_with_the_array() {
        let m = Metrics::default();
        let registry = m.registry();
        let c = |ready, behind_config, behind_keyring| Convergence {
            ready,
            behind_config,
            behind_keyring,
        };
        m.array_members("shop", "edge", c(3, 1, 0));
        m.array_members("blog", "edge", c(2, 0, 2));
        let text = encode(&registry);
        for line in [
            "portcullis_controller_array_members_ready{array_namespace=\"shop\",array=\"edge\"} 3",
            "portcullis_controller_array_members_behind{array_namespace=\"shop\",array=\"edge\",kind=\"config\"} 1",
            "portcullis_controller_array_members_behind{array_namespace=\"shop\",array=\"edge\",kind=\"keyring\"} 0",
            "portcullis_controller_array_members_behind{array_namespace=\"blog\",array=\"edge\",kind=\"keyring\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        m.retain_arrays(|ns, name| (ns, name) != ("blog", "edge"));
        let text = encode(&registry);
        assert!(!text.contains("\"blog\""), "{text}");
        assert!(text.contains("array_namespace=\"shop\""), "{text}");
    }
}
