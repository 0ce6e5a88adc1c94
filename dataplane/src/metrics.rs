//! Metrics, all in one prometheus-client registry with the `portcullis` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FarmStatus {
    pub(crate) farm: String,
    pub(crate) status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FarmLabel {
    pub(crate) farm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointLabel {
    pub(crate) endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FarmEndpointLabel {
    pub(crate) farm: String,
    pub(crate) endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub(crate) outcome: &'static str,
}

type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every dataplane metric.
pub(crate) struct Metrics {
    pub(crate) requests: Family<FarmStatus, Counter>,
    pub(crate) upstream_latency: HistFamily<FarmLabel>,
    pub(crate) pool_opened: Family<EndpointLabel, Counter>,
    pub(crate) pool_reused: Family<EndpointLabel, Counter>,
    pub(crate) pool_idle: Family<EndpointLabel, Gauge>,
    pub(crate) verifier_healthy: Family<FarmEndpointLabel, Gauge>,
    pub(crate) reloads: Family<OutcomeLabel, Counter>,
    pub(crate) connections_refused: Family<ReasonLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub(crate) reason: &'static str,
}

impl Metrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            requests: Family::default(),
            upstream_latency: Family::new_with_constructor(latency_histogram),
            pool_opened: Family::default(),
            pool_reused: Family::default(),
            pool_idle: Family::default(),
            verifier_healthy: Family::default(),
            reloads: Family::default(),
            connections_refused: Family::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by farm and status",
            m.requests.clone(),
        );
        registry.register(
            "upstream_latency_seconds",
            "Time from sending a request upstream to its response head, by farm",
            m.upstream_latency.clone(),
        );
        registry.register(
            "pool_connections_opened",
            "Upstream connections opened, by endpoint identity",
            m.pool_opened.clone(),
        );
        registry.register(
            "pool_connections_reused",
            "Requests sent on an already open upstream connection, by endpoint identity",
            m.pool_reused.clone(),
        );
        registry.register(
            "pool_connections_idle",
            "Idle upstream connections, by endpoint identity",
            m.pool_idle.clone(),
        );
        registry.register(
            "verifier_healthy",
            "1 when an endpoint is in service for a farm (verifier and passive health)",
            m.verifier_healthy.clone(),
        );
        registry.register(
            "client_connections_refused",
            "Client connections closed on accept, by reason (max-connections, per-client)",
            m.connections_refused.clone(),
        );
        registry.register(
            "config_reloads",
            "Config loads, by outcome (success, failure)",
            m.reloads.clone(),
        );
        m
    }
}
