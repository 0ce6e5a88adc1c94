//! Metrics, all in one prometheus-client registry with the `portcullis` prefix.
//!
//! Labels carry farm ids, endpoint identity keys, config hashes and key ids: never a
//! header, a cookie, a client address or key material. The chart's dashboard and alert
//! rules name these metrics; `e2e/tests/monitoring.rs` fails when they name one that is
//! not exported here.

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

/// A farm and why the access phase refused a request of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FarmReason {
    pub(crate) farm: String,
    pub(crate) reason: &'static str,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HashLabel {
    pub(crate) hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KeyLabel {
    pub(crate) key_id: String,
    pub(crate) state: &'static str,
}

/// A farm's endpoints as one scrape sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FarmEndpointCounts {
    /// Endpoints in the farm's config.
    pub(crate) total: usize,
    /// Endpoints that may take a new request now.
    pub(crate) usable: usize,
    /// Endpoints passive health has taken out and not yet let back.
    pub(crate) ejected: usize,
}

/// What a member serves at the moment of a scrape.
#[derive(Clone, Debug, Default)]
pub(crate) struct Serving {
    /// Hash of the config loaded, once one is.
    pub(crate) config_hash: Option<String>,
    /// Key ids in the ring, with whether each is the active one.
    pub(crate) keys: Vec<(String, bool)>,
    /// Endpoint counts by farm id.
    pub(crate) farms: Vec<(String, FarmEndpointCounts)>,
    /// (farm id, endpoint identity, in service now) for every endpoint of every farm.
    pub(crate) in_service: Vec<(String, String, bool)>,
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
    pub(crate) connections_waiting: Gauge,
    pub(crate) farm_endpoints: Family<FarmLabel, Gauge>,
    pub(crate) farm_endpoints_usable: Family<FarmLabel, Gauge>,
    pub(crate) farm_endpoints_ejected: Family<FarmLabel, Gauge>,
    pub(crate) config_loaded: Family<HashLabel, Gauge>,
    pub(crate) session_keys: Family<KeyLabel, Gauge>,
    pub(crate) trace_spans: Family<OutcomeLabel, Counter>,
    pub(crate) access_refused: Family<FarmReason, Counter>,
    /// Held from setting the scrape-time gauges to encoding them, so two concurrent
    /// scrapes never encode each other's half-cleared families.
    pub(crate) scrape: parking_lot::Mutex<()>,
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
            connections_waiting: Gauge::default(),
            farm_endpoints: Family::default(),
            farm_endpoints_usable: Family::default(),
            farm_endpoints_ejected: Family::default(),
            config_loaded: Family::default(),
            session_keys: Family::default(),
            trace_spans: Family::default(),
            access_refused: Family::default(),
            scrape: parking_lot::Mutex::new(()),
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
            "1 when an endpoint is in service for a farm (verifier and passive health; set when scraped)",
            m.verifier_healthy.clone(),
        );
        registry.register(
            "client_connections_refused",
            "Client connections closed on accept, by reason (max-connections, per-client)",
            m.connections_refused.clone(),
        );
        registry.register(
            "client_connections_waiting",
            "HTTP/1 client connections waiting for a request, held without an HTTP server or its buffers",
            m.connections_waiting.clone(),
        );
        registry.register(
            "config_reloads",
            "Config loads, by outcome (success, failure)",
            m.reloads.clone(),
        );
        // Both outcomes exist from the start at 0: `increase()` cannot see a counter's
        // first step when its series is born at 1, so the first failed reload would
        // never reach the PortcullisConfigReloadFailed alert.
        for outcome in ["success", "failure"] {
            let _ = m.reloads.get_or_create(&OutcomeLabel { outcome });
        }
        registry.register(
            "access_refused",
            "Requests the access phase answered itself, by farm and reason (source-range, rate-limit, connection-limit, rate-limit-full, basic-auth, external-auth, external-auth-error, external-auth-timeout)",
            m.access_refused.clone(),
        );
        registry.register(
            "farm_endpoints",
            "Endpoints in a farm's config, by farm (set when scraped)",
            m.farm_endpoints.clone(),
        );
        registry.register(
            "farm_endpoints_usable",
            "Endpoints that may take a new request (not drained, verifier passing, not ejected), by farm (set when scraped)",
            m.farm_endpoints_usable.clone(),
        );
        registry.register(
            "farm_endpoints_ejected",
            "Endpoints passive health has ejected and not yet let back, by farm (set when scraped)",
            m.farm_endpoints_ejected.clone(),
        );
        registry.register(
            "config_loaded",
            "1 for the hash of the config this member serves (set when scraped)",
            m.config_loaded.clone(),
        );
        registry.register(
            "session_key_loaded",
            "1 for each key id in this member's keyring, with its state (active, accept) (set when scraped)",
            m.session_keys.clone(),
        );
        registry.register(
            "trace_spans",
            "Request spans finished while tracing is configured, by outcome (exported, dropped: the queue was full or the collector failed)",
            m.trace_spans.clone(),
        );
        m
    }

    /// Replaces the scrape-time gauges with what the member serves now. Farms, hashes
    /// and keys no longer served disappear. Call with [`Metrics::scrape`] held.
    pub(crate) fn set_serving(&self, now: &Serving) {
        self.config_loaded.clear();
        if let Some(hash) = &now.config_hash {
            self.config_loaded
                .get_or_create(&HashLabel { hash: hash.clone() })
                .set(1);
        }
        self.session_keys.clear();
        for (id, active) in &now.keys {
            let state = if *active { "active" } else { "accept" };
            self.session_keys
                .get_or_create(&KeyLabel {
                    key_id: id.clone(),
                    state,
                })
                .set(1);
        }
        // Rebuilt from the snapshot: passive ejection counts, and endpoints a reload
        // removed leave no series behind (issue 12, section 5).
        self.verifier_healthy.clear();
        for (farm, endpoint, up) in &now.in_service {
            self.verifier_healthy
                .get_or_create(&FarmEndpointLabel {
                    farm: farm.clone(),
                    endpoint: endpoint.clone(),
                })
                .set(i64::from(*up));
        }
        self.farm_endpoints.clear();
        self.farm_endpoints_usable.clear();
        self.farm_endpoints_ejected.clear();
        for (farm, counts) in &now.farms {
            let label = FarmLabel { farm: farm.clone() };
            let gauge = |family: &Family<FarmLabel, Gauge>, n: usize| {
                family
                    .get_or_create(&label)
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            };
            gauge(&self.farm_endpoints, counts.total);
            gauge(&self.farm_endpoints_usable, counts.usable);
            gauge(&self.farm_endpoints_ejected, counts.ejected);
        }
    }

    /// Gives every family one child, so an encoding shows each metric's sample names
    /// (the monitoring contract test reads them).
    pub(crate) fn record_one_of_each(&self) {
        self.requests
            .get_or_create(&FarmStatus {
                farm: "ns/farm".into(),
                status: 200,
            })
            .inc();
        self.upstream_latency
            .get_or_create(&FarmLabel {
                farm: "ns/farm".into(),
            })
            .observe(0.01);
        let endpoint = EndpointLabel {
            endpoint: "http1://127.0.0.1:80".into(),
        };
        self.pool_opened.get_or_create(&endpoint).inc();
        self.pool_reused.get_or_create(&endpoint).inc();
        self.pool_idle.get_or_create(&endpoint).set(1);
        self.verifier_healthy
            .get_or_create(&FarmEndpointLabel {
                farm: "ns/farm".into(),
                endpoint: endpoint.endpoint.clone(),
            })
            .set(1);
        self.reloads
            .get_or_create(&OutcomeLabel { outcome: "success" })
            .inc();
        self.connections_refused
            .get_or_create(&ReasonLabel {
                reason: "max-connections",
            })
            .inc();
        self.trace_spans
            .get_or_create(&OutcomeLabel {
                outcome: "exported",
            })
            .inc();
        self.access_refused
            .get_or_create(&FarmReason {
                farm: "ns/farm".into(),
                reason: "rate-limit",
            })
            .inc();
        self.set_serving(&Serving {
            in_service: vec![("ns/farm".into(), "http1://127.0.0.1:80".into(), true)],
            config_hash: Some("sha256:00".into()),
            keys: vec![("k1".into(), true)],
            farms: vec![(
                "ns/farm".into(),
                FarmEndpointCounts {
                    total: 1,
                    usable: 1,
                    ejected: 0,
                },
            )],
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn serving_gauges_follow_the_latest_scrape() {
        let mut registry = Registry::with_prefix("portcullis");
        let m = Metrics::register(&mut registry);
        let counts = |total, usable, ejected| FarmEndpointCounts {
            total,
            usable,
            ejected,
        };
        m.set_serving(&Serving {
            config_hash: Some("sha256:aa".into()),
            keys: vec![("k2".into(), true), ("k1".into(), false)],
            farms: vec![
                ("shop/web".into(), counts(3, 2, 1)),
                ("shop/old".into(), counts(1, 0, 0)),
            ],
            in_service: vec![
                ("shop/web".into(), "http1://10.0.0.1:80".into(), true),
                ("shop/web".into(), "http1://10.0.0.2:80".into(), false),
                ("shop/old".into(), "http1://10.0.0.3:80".into(), false),
            ],
        });
        let text = encode(&registry);
        for line in [
            "portcullis_config_loaded{hash=\"sha256:aa\"} 1",
            "portcullis_session_key_loaded{key_id=\"k2\",state=\"active\"} 1",
            "portcullis_session_key_loaded{key_id=\"k1\",state=\"accept\"} 1",
            "portcullis_farm_endpoints{farm=\"shop/web\"} 3",
            "portcullis_farm_endpoints_usable{farm=\"shop/web\"} 2",
            "portcullis_farm_endpoints_ejected{farm=\"shop/web\"} 1",
            "portcullis_farm_endpoints_usable{farm=\"shop/old\"} 0",
            "portcullis_verifier_healthy{farm=\"shop/web\",endpoint=\"http1://10.0.0.1:80\"} 1",
            "portcullis_verifier_healthy{farm=\"shop/web\",endpoint=\"http1://10.0.0.2:80\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // A reload to another config, a rotation and a removed farm: nothing stale stays.
        m.set_serving(&Serving {
            config_hash: Some("sha256:bb".into()),
            keys: vec![("k2".into(), true)],
            farms: vec![("shop/web".into(), counts(3, 3, 0))],
            in_service: vec![("shop/web".into(), "http1://10.0.0.1:80".into(), true)],
        });
        let text = encode(&registry);
        assert!(text.contains("portcullis_config_loaded{hash=\"sha256:bb\"} 1"));
        for gone in ["sha256:aa", "k1", "shop/old", "10.0.0.2", "10.0.0.3"] {
            assert!(!text.contains(gone), "{gone} still exported:\n{text}");
        }
    }
}
