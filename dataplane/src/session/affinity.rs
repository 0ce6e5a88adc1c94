//! The affinity claim: what the sealed affinity cookie says.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The plaintext of an affinity cookie. Times are whole seconds since the Unix epoch.
///
/// Layout: farm id length (u16, big endian), farm id, issued (u64), expires (u64),
/// last seen (u64), then the endpoint identity key (UTF-8) to the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Claim {
    pub(crate) farm: String,
    pub(crate) issued: u64,
    pub(crate) expires: u64,
    pub(crate) last_seen: u64,
    pub(crate) endpoint: String,
}

pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Claim {
    /// A new session for `endpoint` starting at `now` and lasting at most `max`
    /// (zero: no limit).
    pub(crate) fn new(farm: &str, endpoint: String, now: u64, max: Duration) -> Self {
        let expires = if max.is_zero() {
            u64::MAX
        } else {
            now.saturating_add(max.as_secs().max(1))
        };
        Claim {
            farm: farm.to_owned(),
            issued: now,
            expires,
            last_seen: now,
            endpoint,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let farm = self.farm.as_bytes();
        let mut out = Vec::with_capacity(2 + farm.len() + 24 + self.endpoint.len());
        out.extend_from_slice(&(farm.len() as u16).to_be_bytes());
        out.extend_from_slice(farm);
        out.extend_from_slice(&self.issued.to_be_bytes());
        out.extend_from_slice(&self.expires.to_be_bytes());
        out.extend_from_slice(&self.last_seen.to_be_bytes());
        out.extend_from_slice(self.endpoint.as_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let (len, rest) = bytes.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        if rest.len() < len {
            return None;
        }
        let (farm, rest) = rest.split_at(len);
        let (issued, rest) = rest.split_first_chunk::<8>()?;
        let (expires, rest) = rest.split_first_chunk::<8>()?;
        let (last_seen, endpoint) = rest.split_first_chunk::<8>()?;
        let endpoint = std::str::from_utf8(endpoint).ok()?;
        if endpoint.is_empty() {
            return None;
        }
        Some(Claim {
            farm: std::str::from_utf8(farm).ok()?.to_owned(),
            issued: u64::from_be_bytes(*issued),
            expires: u64::from_be_bytes(*expires),
            last_seen: u64::from_be_bytes(*last_seen),
            endpoint: endpoint.to_owned(),
        })
    }

    /// Whether the session is over at `now`: past its expiry, or idle longer than
    /// `idle` (zero: no idle limit).
    pub(crate) fn is_over(&self, now: u64, idle: Duration) -> bool {
        now >= self.expires
            || (!idle.is_zero() && now.saturating_sub(self.last_seen) > idle.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes() {
        let c = Claim::new(
            "ns/web",
            "http1://10.0.0.1:80".into(),
            1000,
            Duration::from_secs(3600),
        );
        assert_eq!(c.expires, 4600);
        assert_eq!(Claim::decode(&c.encode()), Some(c.clone()));
        let bytes = c.encode();
        for cut in 0..bytes.len() - "http1://10.0.0.1:80".len() {
            assert_eq!(Claim::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        assert!(!c.is_over(4599, Duration::ZERO));
        assert!(c.is_over(4600, Duration::ZERO));
        assert!(c.is_over(1000 + 61, Duration::from_secs(60)));
        assert!(!c.is_over(1000 + 60, Duration::from_secs(60)));
    }
}
