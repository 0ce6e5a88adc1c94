//! Rate and concurrency limits per client address, for one farm on one member.
//!
//! Each rate is a GCRA token bucket: a request at `now` is allowed when its theoretical
//! arrival time (TAT) is no later than `now + burst × interval`, and then moves the TAT
//! one interval on. This allows `burst + 1` requests at once and `1 / interval` after,
//! as nginx's `limit_req ... burst=N nodelay` does.
//!
//! The table is bounded: an entry whose buckets have refilled (TAT in the past) and that
//! has nothing in flight is the same as no entry, so it is dropped by a sweep (every
//! [`SWEEP_EVERY`], and whenever the table is full). When the table is still full of
//! active clients after a sweep, a new address is refused: the limits hold for the
//! clients already tracked, and an attacker rotating addresses costs at most
//! [`MAX_CLIENTS`] entries.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use portcullis_crds::config::RateLimitConfig;

use crate::error::ProxyError;

/// Client addresses tracked per farm and member.
pub(crate) const MAX_CLIENTS: usize = 100_000;
/// How often idle entries are dropped when the table is not full.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// One bucket's parameters.
#[derive(Clone, Copy, Debug)]
struct Rate {
    /// Time between requests at the steady rate.
    interval: Duration,
    /// How far ahead of now the TAT may run: `burst × interval`.
    tolerance: Duration,
}

impl Rate {
    fn new(requests: u32, per: Duration, burst_multiplier: u32) -> Self {
        let interval = per / requests.max(1);
        Rate {
            interval,
            tolerance: interval * requests.saturating_mul(burst_multiplier).max(1),
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// TAT per rate (`None` when the bucket is full).
    tat: [Option<Instant>; 2],
    in_flight: u32,
}

impl Entry {
    fn idle(&self, now: Instant) -> bool {
        self.in_flight == 0 && self.tat.iter().all(|t| t.is_none_or(|t| t <= now))
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limited {
    /// Over a rate: retry after this long.
    Rate(Duration),
    /// Too many requests of this client in flight.
    Connections,
    /// The table is full of active clients.
    Full,
}

impl Limited {
    /// The proxy's error for it.
    pub(crate) fn error(self) -> ProxyError {
        match self {
            Limited::Rate(_) => ProxyError::RateLimit,
            Limited::Connections => ProxyError::ConnectionLimit,
            Limited::Full => ProxyError::RateLimitFull,
        }
    }
}

/// The limits of one farm, with their state.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rates: [Option<Rate>; 2],
    connections: Option<u32>,
    capacity: usize,
    state: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    clients: HashMap<IpAddr, Entry>,
    last_sweep: Instant,
}

impl RateLimiter {
    pub(crate) fn new(cfg: &RateLimitConfig) -> Self {
        Self::with_capacity(cfg, MAX_CLIENTS)
    }

    fn with_capacity(cfg: &RateLimitConfig, capacity: usize) -> Self {
        let m = cfg.burst_multiplier;
        RateLimiter {
            rates: [
                cfg.requests_per_second
                    .map(|r| Rate::new(r, Duration::from_secs(1), m)),
                cfg.requests_per_minute
                    .map(|r| Rate::new(r, Duration::from_secs(60), m)),
            ],
            connections: cfg.connections,
            capacity,
            state: Mutex::new(Table {
                clients: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// Takes a request of `client` at `now`; the returned guard holds its place among
    /// the client's requests in flight until dropped.
    pub(crate) fn take(
        self: &Arc<Self>,
        client: IpAddr,
        now: Instant,
    ) -> Result<InFlightGuard, Limited> {
        let mut table = self.state.lock();
        if !table.clients.contains_key(&client) {
            let full = table.clients.len() >= self.capacity;
            if full || now.saturating_duration_since(table.last_sweep) >= SWEEP_EVERY {
                table.clients.retain(|_, e| !e.idle(now));
                table.last_sweep = now;
            }
            if table.clients.len() >= self.capacity {
                return Err(Limited::Full);
            }
        }
        let entry = table.clients.entry(client).or_insert(Entry {
            tat: [None; 2],
            in_flight: 0,
        });
        if let Some(max) = self.connections
            && entry.in_flight >= max
        {
            return Err(Limited::Connections);
        }
        // Every bucket must allow the request before any is charged.
        let mut next = [None; 2];
        let mut wait = Duration::ZERO;
        for (i, rate) in self.rates.iter().enumerate() {
            let Some(rate) = rate else { continue };
            let tat = entry.tat[i].filter(|t| *t > now).unwrap_or(now);
            let allowed_at = tat.checked_sub(rate.tolerance).unwrap_or(now);
            if allowed_at > now {
                wait = wait.max(allowed_at - now);
            }
            next[i] = Some(tat + rate.interval);
        }
        if !wait.is_zero() {
            return Err(Limited::Rate(wait));
        }
        for (i, t) in next.into_iter().enumerate() {
            if t.is_some() {
                entry.tat[i] = t;
            }
        }
        entry.in_flight += 1;
        Ok(InFlightGuard {
            limiter: self.clone(),
            client,
        })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.state.lock().clients.len()
    }
}

/// A request of a client in flight; dropping it ends it.
#[derive(Debug)]
pub(crate) struct InFlightGuard {
    limiter: Arc<RateLimiter>,
    client: IpAddr,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Some(e) = self.limiter.state.lock().clients.get_mut(&self.client) {
            e.in_flight = e.in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rps: Option<u32>, rpm: Option<u32>, connections: Option<u32>) -> RateLimitConfig {
        RateLimitConfig {
            requests_per_second: rps,
            requests_per_minute: rpm,
            burst_multiplier: 5,
            connections,
            status_code: 429,
        }
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(n.into())
    }

    #[test]
    fn a_burst_of_rate_times_multiplier_then_the_rate() {
        let l = Arc::new(RateLimiter::new(&config(Some(2), None, None)));
        let t0 = Instant::now();
        // burst = 2 × 5 = 10, plus the request that starts the bucket.
        let passed = (0..20).filter(|_| l.take(ip(1), t0).is_ok()).count();
        assert_eq!(passed, 11);
        let Err(Limited::Rate(wait)) = l.take(ip(1), t0) else {
            panic!("over the burst")
        };
        assert_eq!(wait, Duration::from_millis(500));
        // Another client has its own bucket.
        assert!(l.take(ip(2), t0).is_ok());
        // Half a second later, one more.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.take(ip(1), t1).is_ok());
        assert!(l.take(ip(1), t1).is_err());
    }

    #[test]
    fn both_rates_apply() {
        let mut c = config(Some(100), Some(1), None);
        c.burst_multiplier = 1;
        let l = Arc::new(RateLimiter::new(&c));
        let t0 = Instant::now();
        assert!(l.take(ip(1), t0).is_ok());
        assert!(l.take(ip(1), t0).is_ok());
        // The per-minute bucket (burst 1) is spent; the per-second one is not.
        let Err(Limited::Rate(wait)) = l.take(ip(1), t0 + Duration::from_secs(1)) else {
            panic!("per minute")
        };
        assert_eq!(wait, Duration::from_secs(59));
    }

    #[test]
    fn connections_count_requests_in_flight() {
        let l = Arc::new(RateLimiter::new(&config(None, None, Some(2))));
        let t0 = Instant::now();
        let a = l.take(ip(1), t0).unwrap();
        let _b = l.take(ip(1), t0).unwrap();
        assert_eq!(l.take(ip(1), t0).unwrap_err(), Limited::Connections);
        drop(a);
        assert!(l.take(ip(1), t0).is_ok());
    }

    #[test]
    fn the_table_is_bounded_and_forgets_idle_clients() {
        let l = Arc::new(RateLimiter::with_capacity(
            &config(Some(1), None, None),
            100,
        ));
        let t0 = Instant::now();
        for n in 0..100 {
            assert!(l.take(ip(n), t0).is_ok());
        }
        // Full of clients whose buckets have not refilled: a new one is refused.
        assert_eq!(l.take(ip(1000), t0).unwrap_err(), Limited::Full);
        assert_eq!(l.tracked(), 100);
        // Once they refill they are forgotten, and the newcomer fits.
        let later = t0 + Duration::from_secs(2);
        assert!(l.take(ip(1000), later).is_ok());
        assert_eq!(l.tracked(), 1);
    }
}
