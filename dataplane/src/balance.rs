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
            let mut ej = e.ejected_at.lock();
            let renew = match *ej {
                None => true,
                Some(at) => at.elapsed() >= self.cfg.passive.base_ejection_time.get(),
            };
            if renew {
                tracing::warn!(farm = %self.cfg.id, endpoint = %e.key, failures = n, "endpoint ejected");
                *ej = Some(Instant::now());
            }
        }
    }
}
