//! The session manager: the keyring in an `ArcSwap`, and the request/response hooks the
//! proxy calls for every request of a farm.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};
use portcullis_crds::config::{
    AffinityMode, CookieProtection, EndpointIdentity, FarmConfig, SameSite,
};
use portcullis_crds::keyring::KeyringDoc;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};

use super::RejectReason;
use super::affinity::{Claim, unix_secs};
use super::keyring::{KeyringLoadError, Ring};
use super::protection::{
    SEALED_NAME_PREFIX, is_sealed_name, is_token, open_name, open_value, seal_name, seal_value,
};
use super::seal::{self, NonceMode, Purpose, key_id_of};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    farm: String,
    reason: &'static str,
}

/// Seals and opens the array's session cookies with the shared keyring.
///
/// Shared behind an `Arc` by every connection; the keyring is swapped atomically, so a
/// new keyring takes effect for the next request without dropping any connection.
pub struct SessionManager {
    ring: ArcSwapOption<Ring>,
    rejected: Family<RejectLabels, Counter>,
}

/// What [`SessionManager::on_request`] learned, handed back to
/// [`SessionManager::on_response`].
#[derive(Debug, Default, Clone)]
pub struct RequestSession {
    /// The endpoint identity key a valid affinity cookie points to.
    pub sticky: Option<String>,
    claim: Option<Claim>,
    claim_key_active: bool,
    /// Cookies this request carried under names sealed with an older key: their
    /// original name and the old sealed name.
    stale: Vec<(String, String)>,
}

impl SessionManager {
    /// A manager with no keyring yet, registering
    /// `session_cookie_rejected{farm,reason}` (a counter) in `registry`.
    pub fn new(registry: &mut Registry) -> Arc<Self> {
        let rejected = Family::<RejectLabels, Counter>::default();
        registry.register(
            "session_cookie_rejected",
            "Session cookies (affinity or protected) dropped because they did not open, by farm and reason",
            rejected.clone(),
        );
        Arc::new(SessionManager {
            ring: ArcSwapOption::empty(),
            rejected,
        })
    }

    /// Loads the keyring file. A file that cannot be read or is not a valid keyring is
    /// refused whole and the last good keyring stays in use.
    pub fn load_keyring_file(&self, path: &Path) -> Result<(), KeyringLoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyringLoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.set_keyring_text(&text).map_err(|e| e.in_file(path))
    }

    /// Loads keyring text (YAML or JSON, see [`portcullis_crds::keyring`]). Invalid text
    /// is refused whole and the last good keyring stays in use.
    pub fn set_keyring_text(&self, text: &str) -> Result<(), KeyringLoadError> {
        let keys = KeyringDoc::load(text)
            .map_err(|source| KeyringLoadError::Invalid { path: None, source })?;
        let ring = Ring::from_keys(&keys);
        tracing::info!(keys = ?ring.ids(), active = %ring.active().id, "loaded session keyring");
        self.ring.store(Some(Arc::new(ring)));
        Ok(())
    }

    /// Ids of the keys in use (empty until a keyring is loaded or generated).
    pub fn key_ids(&self) -> Vec<String> {
        self.ring
            .load()
            .as_ref()
            .map(|r| r.ids())
            .unwrap_or_default()
    }

    /// Id of the key new cookies are sealed with, once there is a keyring.
    pub fn active_key_id(&self) -> Option<String> {
        self.ring.load().as_ref().map(|r| r.active().id.clone())
    }

    /// How many cookies of `farm` were dropped for `reason` so far.
    pub fn rejected_total(&self, farm: &str, reason: RejectReason) -> u64 {
        self.rejected
            .get_or_create(&RejectLabels {
                farm: farm.to_owned(),
                reason: reason.as_str(),
            })
            .get()
    }

    /// Watches `path`, loading it whenever its content changes (checked every `every`).
    /// Bad content is logged and refused; the last good keyring stays. Runs until the
    /// returned task is aborted. Needs a Tokio runtime.
    pub fn watch_keyring_file(
        self: &Arc<Self>,
        path: PathBuf,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            // A digest, not the text: the text holds key material.
            let mut last: Option<[u8; 32]> = None;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Ok(text) = tokio::fs::read_to_string(&path).await else {
                    continue;
                };
                let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
                if last == Some(digest) {
                    continue;
                }
                last = Some(digest);
                if let Err(e) = manager.set_keyring_text(&text) {
                    let e = e.in_file(&path);
                    tracing::warn!(error = %e, cause = %std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default(), "keeping the last good keyring");
                }
            }
        })
    }

    fn ring(&self) -> Arc<Ring> {
        if let Some(ring) = self.ring.load_full() {
            return ring;
        }
        let fresh = Arc::new(Ring::generate());
        let previous = self
            .ring
            .compare_and_swap(&None::<Arc<Ring>>, Some(Arc::clone(&fresh)));
        match &*previous {
            Some(existing) => Arc::clone(existing),
            None => {
                tracing::warn!(
                    key = %fresh.active().id,
                    "no session keyring loaded: generated an in-memory key; sessions will not survive on other array members or restarts"
                );
                fresh
            }
        }
    }

    fn reject(&self, farm: &FarmConfig, reason: RejectReason, sealed: &[u8]) {
        self.rejected
            .get_or_create(&RejectLabels {
                farm: farm.id.clone(),
                reason: reason.as_str(),
            })
            .inc();
        tracing::debug!(
            farm = %farm.id,
            key_id = key_id_of(sealed).unwrap_or("-"),
            reason = reason.as_str(),
            "dropped a session cookie that does not open"
        );
    }

    /// Reads the request's `Cookie` headers before the request goes upstream.
    ///
    /// Removes the farm's affinity cookie and every protected-looking (`__pc_`) cookie.
    /// A valid affinity cookie (this farm, this name, a known key, not expired, not idle
    /// too long) yields its endpoint identity key as [`RequestSession::sticky`]. Cookies
    /// sealed for this farm (name and value) go upstream under their original names and
    /// values; those sealed for other farms are withheld. With `cookieProtection:
    /// Encrypt`, nothing else goes upstream: an unsealed cookie is one the farm's servers
    /// did not set through this array (a forgery, or a script's), so it is dropped and
    /// counted as `unsealed`. Anything that does not open is dropped, counted in
    /// `portcullis_session_cookie_rejected_total{farm,reason}` and logged at debug with
    /// its key id and reason only. A server never receives a sealed or garbled cookie.
    pub fn on_request(
        &self,
        farm: &FarmConfig,
        headers: &mut HeaderMap,
        now: SystemTime,
    ) -> RequestSession {
        let mut session = RequestSession::default();
        if !headers.contains_key(COOKIE) {
            return session;
        }
        let affinity = (farm.affinity.mode == AffinityMode::Cookie)
            .then_some(farm.affinity.cookie_name.as_bytes());
        let protect = farm.cookie_protection == CookieProtection::Encrypt;
        let ours = |p: &Pair<'_>| p.looks_sealed() || Some(p.name) == affinity;
        if !protect
            && !headers
                .get_all(COOKIE)
                .iter()
                .any(|v| pairs(v.as_bytes()).any(|p| ours(&p)))
        {
            return session;
        }

        enum Kept<'a> {
            Plain(&'a [u8]),
            Unsealed {
                name: String,
                value: Vec<u8>,
                active: bool,
                sealed: &'a [u8],
            },
        }
        let ring = self.ring();
        let now_s = unix_secs(now);
        let values: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
        let mut kept = Vec::new();
        for v in &values {
            for p in pairs(v.as_bytes()) {
                if Some(p.name) == affinity {
                    match self.open_affinity(&ring, farm, p.value, now_s) {
                        Ok((claim, active)) => {
                            if session.claim.is_none() {
                                session.sticky = Some(claim.endpoint.clone());
                                session.claim = Some(claim);
                                session.claim_key_active = active;
                            }
                        }
                        Err(reason) => self.reject(farm, reason, p.value),
                    }
                } else if is_sealed_name(p.name) {
                    let opened = open_name(&ring, &farm.id, p.name)
                        .map_err(|reason| (reason, &p.name[SEALED_NAME_PREFIX.len()..]))
                        .and_then(|opened| {
                            let value = open_value(&ring, p.name, p.value)
                                .map_err(|reason| (reason, p.value))?;
                            Ok((opened, value))
                        });
                    match opened {
                        Ok((opened, value)) => kept.push(Kept::Unsealed {
                            name: opened.name,
                            value,
                            active: opened.active,
                            sealed: p.name,
                        }),
                        Err((reason, sealed)) => self.reject(farm, reason, sealed),
                    }
                } else if p.looks_sealed() {
                    // A sealed-looking piece without a name (`__pc_...` with no `=`):
                    // garbled, and ours all the same.
                    self.reject(farm, RejectReason::Malformed, p.value);
                } else if protect {
                    self.reject(farm, RejectReason::Unsealed, b"");
                } else {
                    kept.push(Kept::Plain(p.raw));
                }
            }
        }

        // A name the server set again after a key rotation is in the jar twice; the
        // copy sealed with the active key wins, the older one is expired on the response.
        let fresh: HashSet<&str> = kept
            .iter()
            .filter_map(|k| match k {
                Kept::Unsealed {
                    name, active: true, ..
                } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let mut out: Vec<u8> = Vec::with_capacity(values.iter().map(|v| v.len() + 2).sum());
        let push = |out: &mut Vec<u8>, parts: &[&[u8]]| {
            if !out.is_empty() {
                out.extend_from_slice(b"; ");
            }
            for part in parts {
                out.extend_from_slice(part);
            }
        };
        for k in &kept {
            match k {
                Kept::Plain(raw) => push(&mut out, &[raw]),
                Kept::Unsealed {
                    name,
                    value,
                    active,
                    sealed,
                } => {
                    if !active {
                        session
                            .stale
                            .push((name.clone(), String::from_utf8_lossy(sealed).into_owned()));
                        if fresh.contains(name.as_str()) {
                            continue;
                        }
                    }
                    push(&mut out, &[name.as_bytes(), b"=", value.as_slice()]);
                }
            }
        }
        headers.remove(COOKIE);
        if !out.is_empty() {
            match HeaderValue::from_bytes(&out) {
                Ok(v) => {
                    headers.insert(COOKIE, v);
                }
                Err(_) => {
                    tracing::debug!(farm = %farm.id, "dropped a Cookie header that could not be rebuilt")
                }
            }
        }
        session
    }

    fn open_affinity(
        &self,
        ring: &Ring,
        farm: &FarmConfig,
        value: &[u8],
        now: u64,
    ) -> Result<(Claim, bool), RejectReason> {
        let opened = seal::open(ring, Purpose::Affinity, &farm.affinity.cookie_name, value)?;
        let claim = Claim::decode(&opened.plaintext).ok_or(RejectReason::Malformed)?;
        if claim.farm != farm.id {
            return Err(RejectReason::OtherFarm);
        }
        // The farm's current limit applies too, should it have been shortened since.
        let max = farm.affinity.max_session_time.get();
        let limit_now = !max.is_zero() && now >= claim.issued.saturating_add(max.as_secs().max(1));
        if limit_now || claim.is_over(now, farm.affinity.idle_timeout.get()) {
            return Err(RejectReason::Expired);
        }
        Ok((claim, opened.key.active))
    }

    /// Rewrites the response head before it goes to the client.
    ///
    /// With `cookieProtection: Encrypt`, every `Set-Cookie` name is sealed for the farm
    /// and its value sealed and bound to that sealed name (the attributes are kept).
    /// With `affinity: Cookie`, a `Set-Cookie` for `chosen` is appended when the request
    /// had no valid cookie, when it pointed elsewhere, when the idle timer needs
    /// refreshing (every tenth of the idle timeout), or when it was sealed with a key
    /// that is no longer active: `HttpOnly`,
    /// `Secure` when `secure`, `SameSite` from the farm, `Path=route_path`, `Max-Age`
    /// up to the session's expiry.
    #[allow(clippy::too_many_arguments)]
    pub fn on_response(
        &self,
        farm: &FarmConfig,
        session: &RequestSession,
        chosen: &EndpointIdentity,
        secure: bool,
        route_path: &str,
        headers: &mut HeaderMap,
        now: SystemTime,
    ) {
        let protect =
            farm.cookie_protection == CookieProtection::Encrypt && headers.contains_key(SET_COOKIE);
        let affinity = farm.affinity.mode == AffinityMode::Cookie;
        if !protect && !affinity {
            return;
        }
        let ring = self.ring();
        if protect {
            self.seal_set_cookies(&ring, farm, session, headers);
        }
        if affinity {
            self.issue_affinity(
                &ring, farm, session, chosen, secure, route_path, headers, now,
            );
        }
    }

    fn seal_set_cookies(
        &self,
        ring: &Ring,
        farm: &FarmConfig,
        session: &RequestSession,
        headers: &mut HeaderMap,
    ) {
        let originals: Vec<HeaderValue> = headers.get_all(SET_COOKIE).iter().cloned().collect();
        headers.remove(SET_COOKIE);
        for v in originals {
            let bytes = v.as_bytes();
            let Some(eq) = bytes.iter().position(|&b| b == b'=') else {
                tracing::debug!(farm = %farm.id, "dropped a Set-Cookie without a name");
                continue;
            };
            let name = bytes[..eq].trim_ascii();
            if !is_token(name) {
                tracing::debug!(farm = %farm.id, "dropped a Set-Cookie whose name is not a cookie token");
                continue;
            }
            let rest = &bytes[eq + 1..];
            let value_end = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
            let (value, attributes) = rest.split_at(value_end);
            let sealed = seal_name(ring, &farm.id, name).and_then(|sealed| {
                let value = seal_value(ring, &sealed, value.trim_ascii())?;
                Ok((sealed, value))
            });
            let (sealed, sealed_value) = match sealed {
                Ok(sealed) => sealed,
                Err(reason) => {
                    // Never set a cookie no member could open again.
                    self.reject(farm, reason, b"");
                    continue;
                }
            };
            let mut out =
                Vec::with_capacity(sealed.len() + 1 + sealed_value.len() + attributes.len());
            out.extend_from_slice(sealed.as_bytes());
            out.push(b'=');
            out.extend_from_slice(sealed_value.as_bytes());
            out.extend_from_slice(attributes);
            append(headers, SET_COOKIE, &out);
            for (_, old) in session
                .stale
                .iter()
                .filter(|(original, old)| original.as_bytes() == name && *old != sealed)
            {
                // The copy sealed with an older key: expire it where it was set.
                let mut expire = format!("{old}=; Max-Age=0").into_bytes();
                for attr in bytes[eq..].split(|&b| b == b';').skip(1) {
                    let attr = attr.trim_ascii();
                    let lower = attr.to_ascii_lowercase();
                    if lower.starts_with(b"path=") || lower.starts_with(b"domain=") {
                        expire.extend_from_slice(b"; ");
                        expire.extend_from_slice(attr);
                    }
                }
                append(headers, SET_COOKIE, &expire);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn issue_affinity(
        &self,
        ring: &Ring,
        farm: &FarmConfig,
        session: &RequestSession,
        chosen: &EndpointIdentity,
        secure: bool,
        route_path: &str,
        headers: &mut HeaderMap,
        now: SystemTime,
    ) {
        let now_s = unix_secs(now);
        let endpoint = chosen.key();
        let idle = farm.affinity.idle_timeout.get();
        let claim = match &session.claim {
            Some(c) if c.endpoint == endpoint && c.farm == farm.id => {
                let refresh_every = (idle.as_secs() / 10).max(1);
                let idle_refresh =
                    !idle.is_zero() && now_s.saturating_sub(c.last_seen) >= refresh_every;
                if !idle_refresh && session.claim_key_active {
                    return;
                }
                Claim {
                    last_seen: now_s,
                    ..c.clone()
                }
            }
            _ => Claim::new(
                &farm.id,
                endpoint,
                now_s,
                farm.affinity.max_session_time.get(),
            ),
        };
        let sealed = match seal::seal(
            ring,
            Purpose::Affinity,
            &farm.affinity.cookie_name,
            &claim.encode(),
            NonceMode::Random,
        ) {
            Ok(sealed) => sealed,
            Err(reason) => {
                self.reject(farm, reason, b"");
                return;
            }
        };
        let path = if route_path.starts_with('/')
            && route_path
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b';')
        {
            route_path
        } else {
            "/"
        };
        let mut cookie = format!("{}={sealed}; Path={path}", farm.affinity.cookie_name);
        if claim.expires != u64::MAX {
            cookie.push_str(&format!(
                "; Max-Age={}",
                claim.expires.saturating_sub(now_s)
            ));
        }
        cookie.push_str("; HttpOnly");
        if secure {
            cookie.push_str("; Secure");
        }
        cookie.push_str(match farm.affinity.same_site {
            SameSite::Lax => "; SameSite=Lax",
            SameSite::Strict => "; SameSite=Strict",
            SameSite::None => "; SameSite=None",
        });
        append(headers, SET_COOKIE, cookie.as_bytes());
    }
}

fn append(headers: &mut HeaderMap, name: http::HeaderName, value: &[u8]) {
    match HeaderValue::from_bytes(value) {
        Ok(v) => {
            headers.append(name, v);
        }
        Err(_) => tracing::debug!(header = %name, "dropped a header value that is not valid"),
    }
}

/// One `name=value` of a `Cookie` header.
struct Pair<'a> {
    name: &'a [u8],
    value: &'a [u8],
    raw: &'a [u8],
}

impl Pair<'_> {
    /// Whether the piece is a sealed name, or a piece with no name whose text is one:
    /// either way it is ours and never goes upstream as it is.
    fn looks_sealed(&self) -> bool {
        is_sealed_name(self.name) || (self.name.is_empty() && is_sealed_name(self.value))
    }
}

fn pairs(header: &[u8]) -> impl Iterator<Item = Pair<'_>> {
    header
        .split(|&b| b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|raw| !raw.is_empty())
        .map(|raw| match raw.iter().position(|&b| b == b'=') {
            Some(eq) => Pair {
                name: raw[..eq].trim_ascii(),
                value: raw[eq + 1..].trim_ascii(),
                raw,
            },
            None => Pair {
                name: b"",
                value: raw,
                raw,
            },
        })
}
