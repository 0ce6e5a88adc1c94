//! The access phase: what a request must pass before the proxy picks a server.
//!
//! A refused request is answered by the proxy itself (403 for a source range), so it
//! never reaches a server and never counts in passive health. The state of each farm's
//! checks lives in the snapshot ([`AccessMap`]), built on every config load from the
//! previous one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, Request, Response, StatusCode};
use portcullis_crds::config::{AccessConfig, DataplaneConfig, IpRange};

use crate::proxy::{ConnInfo, RespBody, error_response};
use crate::source::SourceError;

/// The access state of every farm that checks something, by farm id.
pub(crate) type AccessMap = HashMap<String, Arc<FarmAccess>>;

/// One farm's access checks and their state.
#[derive(Debug)]
pub(crate) struct FarmAccess {
    cfg: AccessConfig,
}

/// Builds the access state of `config`'s farms. Farms that check nothing get no entry.
pub(crate) fn build(
    config: &DataplaneConfig,
    _certs_dir: &Path,
    _previous: Option<&AccessMap>,
) -> Result<AccessMap, SourceError> {
    let mut out = AccessMap::new();
    for (id, farm) in &config.farms {
        if farm.access.is_empty() {
            continue;
        }
        out.insert(
            id.clone(),
            Arc::new(FarmAccess {
                cfg: farm.access.clone(),
            }),
        );
    }
    Ok(out)
}

/// A request let through: what must live as long as its response.
#[derive(Debug, Default)]
pub(crate) struct Admitted {}

impl Admitted {
    /// The response to send, with whatever the access phase adds to it.
    pub(crate) fn respond(self, resp: Response<RespBody>) -> Response<RespBody> {
        resp
    }
}

/// The access phase of `farm` for `req`: `Ok` lets it through, `Err` is the proxy's
/// answer (not yet counted).
pub(crate) async fn admit<B>(
    access: Option<&Arc<FarmAccess>>,
    trusted: &[IpRange],
    conn: ConnInfo,
    req: &mut Request<B>,
) -> Result<Admitted, Response<RespBody>> {
    let Some(access) = access else {
        return Ok(Admitted::default());
    };
    let client = client_ip(conn.client.ip(), req.headers(), trusted);
    if let Some(ranges) = &access.cfg.source_ranges
        && !ranges.admits(client)
    {
        return Err(error_response(StatusCode::FORBIDDEN, "source-range"));
    }
    Ok(Admitted::default())
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the last
/// address of `X-Forwarded-For` that is not one (the first that a trusted proxy did not
/// write). IPv4-mapped IPv6 addresses are IPv4.
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpRange]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|r| r.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(client) {
        return client;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // Whatever wrote this is not trusted: the last good address stands.
            return client;
        };
        client = ip.to_canonical();
        if !is_trusted(client) {
            return client;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_forwarded_it() {
        let trusted: Vec<IpRange> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.1.1.1".parse().unwrap());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // An untrusted peer's header is not believed.
        assert_eq!(client_ip(ip("192.0.2.1"), &h, &trusted), ip("192.0.2.1"));
        // A trusted peer's is, skipping the trusted hops.
        assert_eq!(client_ip(ip("10.2.2.2"), &h, &trusted), ip("203.0.113.9"));
        assert_eq!(
            client_ip(ip("::ffff:10.2.2.2"), &h, &trusted),
            ip("203.0.113.9")
        );
        h.insert("x-forwarded-for", "junk, 10.1.1.1".parse().unwrap());
        assert_eq!(client_ip(ip("10.2.2.2"), &h, &trusted), ip("10.1.1.1"));
        assert_eq!(
            client_ip(ip("10.2.2.2"), &HeaderMap::new(), &trusted),
            ip("10.2.2.2")
        );
    }
}
