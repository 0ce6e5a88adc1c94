//! Load balancing over a farm's usable endpoints.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use parking_lot::Mutex;
use portcullis_crds::config::{FarmConfig, LoadBalancing};
use rustls::ClientConfig;

use crate::health::ProbeState;
use crate::pool::Endpoint;

/// One endpoint of a farm.
pub(crate) struct FarmEndpoint {
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) weight: u32,
    pub(crate) draining: bool,
    /// The verifier probe feeding this farm, when the farm has a verifier.
    pub(crate) probe: Option<Arc<ProbeState>>,
}

/// A farm, ready to pick endpoints.
pub(crate) struct FarmRt {
    pub(crate) cfg: FarmConfig,
    pub(crate) endpoints: Vec<FarmEndpoint>,
    pub(crate) tls: Option<Arc<ClientConfig>>,
    wrr: Mutex<Vec<i64>>,
    ring: Vec<(u64, usize)>,
}

fn hash_of(v: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

impl FarmRt {
    pub(crate) fn new(
        cfg: FarmConfig,
        endpoints: Vec<FarmEndpoint>,
        tls: Option<Arc<ClientConfig>>,
    ) -> Self {
        let mut ring = Vec::new();
        for (i, e) in endpoints.iter().enumerate() {
            let vnodes = (e.weight.min(1000) as usize * 16).clamp(16, 4096);
            for v in 0..vnodes {
                ring.push((hash_of(format!("{}#{v}", e.endpoint.key).as_bytes()), i));
            }
        }
        ring.sort_unstable();
        let n = endpoints.len();
        FarmRt {
            cfg,
            endpoints,
            tls,
            wrr: Mutex::new(vec![0; n]),
            ring,
        }
    }

    /// Whether endpoint `i` may take a new request.
    pub(crate) fn usable(&self, i: usize) -> bool {
        let e = &self.endpoints[i];
        if e.weight == 0 || e.draining {
            return false;
        }
        if let Some(p) = &e.probe
            && !p.healthy()
        {
            return false;
        }
        let ejected = *e.endpoint.ejected_at.lock();
        match ejected {
            None => true,
            // With a verifier, only the verifier brings it back.
            Some(_) if e.probe.is_some() => false,
            Some(at) => at.elapsed() >= self.cfg.passive.base_ejection_time.get(),
        }
    }

    /// Index of the endpoint with this identity key, if usable.
    pub(crate) fn find_usable(&self, key: &str) -> Option<usize> {
        self.endpoints
            .iter()
            .position(|e| e.endpoint.key == key)
            .filter(|i| self.usable(*i))
    }

    /// Picks an endpoint, avoiding `exclude` when another is usable.
    pub(crate) fn pick(&self, hash_key: Option<&[u8]>, exclude: Option<usize>) -> Option<usize> {
        let usable: Vec<usize> = (0..self.endpoints.len())
            .filter(|i| self.usable(*i) && Some(*i) != exclude)
            .collect();
        if usable.is_empty() {
            return None;
        }
        if usable.len() == 1 {
            return Some(usable[0]);
        }
        if let Some(key) = hash_key {
            return self.pick_hash(key, exclude);
        }
        match self.cfg.load_balancing {
            LoadBalancing::RoundRobin | LoadBalancing::ConsistentHash => {
                Some(self.pick_wrr(&usable))
            }
            LoadBalancing::LeastRequests => {
                let start = rand::random_range(0..usable.len());
                let mut best = usable[start];
                let score = |i: usize| {
                    let e = &self.endpoints[i];
                    (e.endpoint.in_flight.load(Ordering::Relaxed) as f64 + 1.0) / e.weight as f64
                };
                for k in 0..usable.len() {
                    let i = usable[(start + k) % usable.len()];
                    if score(i) < score(best) {
                        best = i;
                    }
                }
                Some(best)
            }
            LoadBalancing::PowerOfTwoEwma => {
                let a = usable[rand::random_range(0..usable.len())];
                let mut b = usable[rand::random_range(0..usable.len())];
                if a == b {
                    b = usable
                        [(usable.iter().position(|x| *x == a).unwrap_or(0) + 1) % usable.len()];
                }
                let cost = |i: usize| {
                    let e = &self.endpoints[i];
                    let lat = e.endpoint.ewma_us.load(Ordering::Relaxed).max(1) as f64;
                    lat * (e.endpoint.in_flight.load(Ordering::Relaxed) as f64 + 1.0)
                        / e.weight as f64
                };
                Some(if cost(a) <= cost(b) { a } else { b })
            }
        }
    }

    /// Smooth weighted round robin (nginx's algorithm).
    fn pick_wrr(&self, usable: &[usize]) -> usize {
        let mut cur = self.wrr.lock();
        let total: i64 = usable
            .iter()
            .map(|i| self.endpoints[*i].weight as i64)
            .sum();
        let mut best = usable[0];
        for &i in usable {
            cur[i] += self.endpoints[i].weight as i64;
            if cur[i] > cur[best] {
                best = i;
            }
        }
        cur[best] -= total;
        best
    }

    fn pick_hash(&self, key: &[u8], exclude: Option<usize>) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let h = hash_of(key);
        let start = self.ring.partition_point(|(x, _)| *x < h);
        (0..self.ring.len())
            .map(|k| self.ring[(start + k) % self.ring.len()].1)
            .find(|i| self.usable(*i) && Some(*i) != exclude)
    }

    /// How many endpoints other than `i` are out for passive health right now.
    fn ejected_others(&self, i: usize) -> usize {
        let base = self.cfg.passive.base_ejection_time.get();
        self.endpoints
            .iter()
            .enumerate()
            .filter(|(j, e)| {
                *j != i
                    && e.endpoint
                        .ejected_at
                        .lock()
                        .is_some_and(|at| e.probe.is_some() || at.elapsed() < base)
            })
            .count()
    }

    /// Whether one more endpoint may be ejected with `out` already ejected: at most
    /// `maxEjectedPercent` of the farm's serving endpoints, and never the last one.
    fn may_eject(&self, out: usize) -> bool {
        let serving = self
            .endpoints
            .iter()
            .filter(|e| e.weight > 0 && !e.draining)
            .count();
        let allowed = (serving * self.cfg.passive.max_ejected_percent as usize / 100)
            .min(serving.saturating_sub(1));
        out < allowed
    }

    /// Records a passive-health outcome for endpoint `i`.
    pub(crate) fn record(&self, i: usize, failed: bool) {
        let e = &self.endpoints[i].endpoint;
        if !failed {
            e.failures.store(0, Ordering::Relaxed);
            let mut ej = e.ejected_at.lock();
            if ej.is_some() && self.endpoints[i].probe.is_none() {
                *ej = None;
            }
            return;
        }
        let threshold = self.cfg.passive.consecutive_failures;
        if threshold == 0 {
            return;
        }
        let n = e.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= threshold {
            let out = self.ejected_others(i);
            let mut ej = e.ejected_at.lock();
            let renew = match *ej {
                None => true,
                Some(at) => at.elapsed() >= self.cfg.passive.base_ejection_time.get(),
            };
            if renew && !self.may_eject(out) {
                tracing::warn!(farm = %self.cfg.id, endpoint = %e.key, failures = n, ejected = out, "endpoint not ejected: the farm's ejection share is used up");
                return;
            }
            if renew {
                tracing::warn!(farm = %self.cfg.id, endpoint = %e.key, failures = n, "endpoint ejected");
                *ej = Some(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use portcullis_crds::config::{EndpointIdentity, UpstreamProtocol};

    use super::*;
    use crate::metrics::Metrics;
    use crate::pool::{Endpoints, PoolLimits};

    fn farm(lb: LoadBalancing, weights: &[u32]) -> FarmRt {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let endpoints = Endpoints::new(metrics);
        let limits = PoolLimits {
            max_idle: 1,
            max_connections: None,
            idle_timeout: std::time::Duration::from_secs(1),
        };
        let ids: Vec<EndpointIdentity> = (0..weights.len())
            .map(|i| {
                EndpointIdentity::new(
                    format!("10.0.0.{}:80", i + 1).parse().unwrap(),
                    None,
                    UpstreamProtocol::Http1,
                )
            })
            .collect();
        let wanted: HashMap<_, _> = ids.iter().map(|i| (i.clone(), limits)).collect();
        let reg = endpoints.sync(&wanted);
        let cfg_json = serde_json::json!({
            "id": "ns/f",
            "loadBalancing": lb,
            "members": [],
            "upstream": {"protocol": "HTTP1", "maxIdlePerEndpoint": 1, "poolIdleTimeout": "1s",
                "connectTimeout": "1s", "firstByteTimeout": "1s", "idleTimeout": "1s", "retries": 1},
            "affinity": {"mode": "None", "cookieName": "c", "maxSessionTime": "1h", "idleTimeout": "1h", "sameSite": "Lax"},
            "passive": {"consecutiveFailures": 2, "count5xx": true, "baseEjectionTime": "1h"},
            "cookieProtection": "Off"
        });
        let cfg: FarmConfig = serde_json::from_value(cfg_json).unwrap();
        let eps = ids
            .iter()
            .zip(weights)
            .map(|(id, w)| FarmEndpoint {
                endpoint: reg[id].clone(),
                weight: *w,
                draining: false,
                probe: None,
            })
            .collect();
        FarmRt::new(cfg, eps, None)
    }

    #[test]
    fn smooth_weighted_round_robin_follows_weights_and_interleaves() {
        let f = farm(LoadBalancing::RoundRobin, &[5, 1, 1]);
        let picks: Vec<usize> = (0..7).map(|_| f.pick(None, None).unwrap()).collect();
        assert_eq!(picks.iter().filter(|p| **p == 0).count(), 5);
        assert_eq!(picks.iter().filter(|p| **p == 1).count(), 1);
        // Smooth: the heavy endpoint never takes more than three in a row here.
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn zero_weight_and_ejected_endpoints_take_nothing() {
        let f = farm(LoadBalancing::RoundRobin, &[1, 0, 1]);
        for _ in 0..10 {
            assert_ne!(f.pick(None, None), Some(1));
        }
        f.record(0, true);
        f.record(0, true);
        for _ in 0..10 {
            assert_eq!(f.pick(None, None), Some(2), "ejected endpoint 0 was picked");
        }
        // The last endpoint in service is never ejected (issue 12, finding 3): a farm
        // does not lose every server to passive health.
        f.record(2, true);
        f.record(2, true);
        assert_eq!(f.pick(None, None), Some(2));
    }

    #[test]
    fn passive_health_ejects_at_most_the_configured_share() {
        // maxEjectedPercent defaults to 50: two of four endpoints may be out at once.
        let f = farm(LoadBalancing::RoundRobin, &[1, 1, 1, 1]);
        for i in 0..4 {
            f.record(i, true);
            f.record(i, true);
        }
        let mut picked: Vec<usize> = (0..8).map(|_| f.pick(None, None).unwrap()).collect();
        picked.sort_unstable();
        picked.dedup();
        assert_eq!(picked, vec![2, 3], "endpoints 0 and 1 out, 2 and 3 kept in");
        // Once one comes back, another may go.
        f.record(0, false);
        f.record(2, true);
        let mut picked: Vec<usize> = (0..8).map(|_| f.pick(None, None).unwrap()).collect();
        picked.sort_unstable();
        picked.dedup();
        assert_eq!(picked, vec![0, 3]);
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_only_the_lost_keys() {
        let f = farm(LoadBalancing::ConsistentHash, &[1, 1, 1, 1]);
        let keys: Vec<String> = (0..200).map(|i| format!("client-{i}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| f.pick(Some(k.as_bytes()), None).unwrap())
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|k| f.pick(Some(k.as_bytes()), None).unwrap())
            .collect();
        assert_eq!(before, again);
        for n in 0..4 {
            assert!(
                before.iter().filter(|p| **p == n).count() > 20,
                "endpoint {n} gets too few keys"
            );
        }
        // Eject endpoint 3: only its keys move.
        f.record(3, true);
        f.record(3, true);
        for (k, b) in keys.iter().zip(&before) {
            let now = f.pick(Some(k.as_bytes()), None).unwrap();
            if *b != 3 {
                assert_eq!(now, *b, "{k} moved although its endpoint stayed");
            } else {
                assert_ne!(now, 3);
            }
        }
    }

    #[test]
    fn least_requests_prefers_the_idle_endpoint() {
        let f = farm(LoadBalancing::LeastRequests, &[1, 1]);
        f.endpoints[0]
            .endpoint
            .in_flight
            .store(10, Ordering::Relaxed);
        for _ in 0..10 {
            assert_eq!(f.pick(None, None), Some(1));
        }
    }

    #[test]
    fn power_of_two_prefers_the_faster_endpoint() {
        let f = farm(LoadBalancing::PowerOfTwoEwma, &[1, 1]);
        f.endpoints[0]
            .endpoint
            .observe_latency(std::time::Duration::from_millis(50));
        f.endpoints[1]
            .endpoint
            .observe_latency(std::time::Duration::from_millis(1));
        for _ in 0..10 {
            assert_eq!(f.pick(None, None), Some(1));
        }
    }
}
