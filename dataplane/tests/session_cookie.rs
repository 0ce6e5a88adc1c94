//! The session manager as the proxy drives it: affinity cookies, rejections and their
//! metric, cookie protection on a shared host, rotation, and keyring loading.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::TempDir;
use http::HeaderMap;
use http::header::{COOKIE, SET_COOKIE};
use portcullis_crds::config::{
    AffinityMode, CookieProtection, EndpointIdentity, FarmConfig, SameSite, UpstreamProtocol,
};
use portcullis_crds::keyring::KeyState;
use portcullis_dataplane::session::{
    KeyringLoadError, RejectReason, RequestSession, SEALED_NAME_PREFIX, SessionManager,
};
use portcullis_testkit::session::{IDLE, MAX_SESSION, farm, keyring};
use prometheus_client::registry::Registry;

fn web() -> FarmConfig {
    farm("shop/web", AffinityMode::Cookie, CookieProtection::Off)
}

fn endpoint(addr: &str) -> EndpointIdentity {
    EndpointIdentity::new(addr.parse().unwrap(), None, UpstreamProtocol::Http1)
}

/// A member holding key `k1`, the `web` farm, one of its endpoints and the time now.
fn one_member() -> (Member, FarmConfig, EndpointIdentity, SystemTime) {
    let m = Member::new(&[("k1", 1, KeyState::Active)]);
    (m, web(), endpoint("10.1.2.3:8080"), SystemTime::now())
}

struct Member {
    manager: Arc<SessionManager>,
    registry: Registry,
}

impl Member {
    fn new(keys: &[(&str, u8, KeyState)]) -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let manager = SessionManager::new(&mut registry);
        manager.set_keyring_text(&keyring(keys)).unwrap();
        Member { manager, registry }
    }

    fn metrics(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }

    /// A request carrying `cookie`; returns the session and the Cookie header the
    /// server would get.
    fn request(
        &self,
        farm: &FarmConfig,
        cookie: &str,
        now: SystemTime,
    ) -> (RequestSession, Option<String>) {
        let mut headers = HeaderMap::new();
        if !cookie.is_empty() {
            headers.insert(COOKIE, cookie.parse().unwrap());
        }
        let s = self.manager.on_request(farm, &mut headers, now);
        let forwarded: Vec<String> = headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert!(
            forwarded.len() <= 1,
            "one Cookie header at most: {forwarded:?}"
        );
        (s, forwarded.into_iter().next())
    }

    /// The Set-Cookie headers of a response that went to `chosen`.
    fn respond(
        &self,
        farm: &FarmConfig,
        s: &RequestSession,
        chosen: &EndpointIdentity,
        server_sets: &[&str],
        now: SystemTime,
    ) -> Vec<String> {
        let mut headers = HeaderMap::new();
        for set in server_sets {
            headers.append(SET_COOKIE, set.parse().unwrap());
        }
        self.manager
            .on_response(farm, s, chosen, true, "/shop", &mut headers, now);
        headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// A new session's cookie pair (`name=value`) for `chosen`.
    fn new_session(&self, farm: &FarmConfig, chosen: &EndpointIdentity, now: SystemTime) -> String {
        let (s, _) = self.request(farm, "", now);
        assert_eq!(s.sticky, None);
        let set = self.respond(farm, &s, chosen, &[], now);
        assert_eq!(set.len(), 1, "{set:?}");
        pair_of(&set[0])
    }
}

/// The Set-Cookie that starts a session on `chosen` for a plain-HTTP request to `/`.
fn plain_http_set_cookie(
    manager: &SessionManager,
    farm: &FarmConfig,
    chosen: &EndpointIdentity,
    now: SystemTime,
) -> String {
    let mut headers = HeaderMap::new();
    let none = RequestSession::default();
    manager.on_response(farm, &none, chosen, false, "/", &mut headers, now);
    headers[SET_COOKIE].to_str().unwrap().to_owned()
}

fn pair_of(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().trim().to_owned()
}

fn value_of(pair: &str) -> &str {
    pair.split_once('=').unwrap().1
}

fn assert_rejected(m: &Member, farm: &str, reason: RejectReason, expected: u64) {
    assert_eq!(
        m.manager.rejected_total(farm, reason),
        expected,
        "{reason:?}"
    );
    let line = format!(
        "portcullis_session_cookie_rejected_total{{farm=\"{farm}\",reason=\"{}\"}} {expected}",
        reason.as_str()
    );
    assert!(
        m.metrics().contains(&line),
        "missing {line}\n{}",
        m.metrics()
    );
}

#[test]
fn affinity_cookie_round_trips_and_hides_the_endpoint() {
    let (m, farm, a, now) = one_member();

    let (s, _) = m.request(&farm, "", now);
    let set = m.respond(&farm, &s, &a, &[], now);
    assert_eq!(set.len(), 1);
    let set = &set[0];
    assert!(set.starts_with("portcullis-affinity=v1.k1."), "{set}");
    for attr in [
        "; Path=/shop",
        "; HttpOnly",
        "; Secure",
        "; SameSite=Lax",
        "; Max-Age=3600",
    ] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    for leak in ["10.1.2.3", "8080", "http1", "shop/web"] {
        assert!(!set.contains(leak), "{leak} visible in {set}");
    }

    let pair = pair_of(set);
    let (s, forwarded) = m.request(&farm, &format!("theme=dark; {pair}; lang=en"), now);
    assert_eq!(s.sticky.as_deref(), Some(a.key().as_str()));
    assert_eq!(forwarded.as_deref(), Some("theme=dark; lang=en"));

    // Same endpoint, fresh cookie: nothing to set.
    assert!(m.respond(&farm, &s, &a, &[], now).is_empty());
    // The endpoint moved: a new cookie for the new one.
    let b = endpoint("10.1.2.4:8080");
    let set = m.respond(&farm, &s, &b, &[], now);
    assert_eq!(set.len(), 1);
    let (s2, _) = m.request(&farm, &pair_of(&set[0]), now);
    assert_eq!(s2.sticky, Some(b.key()));

    // Past a tenth of the idle timeout the cookie is reissued to slide the idle timer,
    // keeping its original expiry.
    let later = now + IDLE / 5;
    let (s3, _) = m.request(&farm, &pair, later);
    assert_eq!(s3.sticky, Some(a.key()));
    let set = m.respond(&farm, &s3, &a, &[], later);
    assert_eq!(set.len(), 1);
    let remaining = MAX_SESSION - IDLE / 5;
    assert!(
        set[0].contains(&format!("; Max-Age={}", remaining.as_secs())),
        "{}",
        set[0]
    );
    let (s4, _) = m.request(
        &farm,
        &pair_of(&set[0]),
        later + IDLE - Duration::from_secs(1),
    );
    assert_eq!(
        s4.sticky,
        Some(a.key()),
        "the refreshed cookie restarts the idle timer"
    );

    // Not secure, SameSite from the farm.
    let mut strict = web();
    strict.affinity.same_site = SameSite::Strict;
    let set = plain_http_set_cookie(&m.manager, &strict, &a, now);
    assert!(
        set.contains("; SameSite=Strict") && !set.contains("Secure"),
        "{set}"
    );
    assert_eq!(
        m.metrics().matches("reason=").count(),
        0,
        "nothing rejected"
    );
}

#[test]
fn cookies_that_do_not_open_are_dropped_and_counted_by_reason() {
    let (m, farm, a, now) = one_member();
    let pair = m.new_session(&farm, &a, now);
    let value = value_of(&pair).to_owned();
    let name = "portcullis-affinity";

    let expect = |cookie_value: &str, at: SystemTime, reason: RejectReason, n: u64| {
        let (s, forwarded) = m.request(&farm, &format!("keep=1; {name}={cookie_value}"), at);
        assert_eq!(s.sticky, None, "{reason:?}");
        assert_eq!(
            forwarded.as_deref(),
            Some("keep=1"),
            "never forwarded: {reason:?}"
        );
        assert_rejected(&m, "shop/web", reason, n);
        // The response starts a new session.
        let set = m.respond(&farm, &s, &a, &[], at);
        assert_eq!(set.len(), 1);
    };

    // Tampered: one character of the body changed.
    let mut chars: Vec<char> = value.chars().collect();
    let i = chars.len() - 10;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    expect(
        &chars.iter().collect::<String>(),
        now,
        RejectReason::Tampered,
        1,
    );
    // Truncated: still long enough to hold a nonce and a tag, so the tag fails...
    let (head, body) = value.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(body).unwrap();
    bytes.truncate(bytes.len() - 3);
    let truncated = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&bytes));
    expect(&truncated, now, RejectReason::Tampered, 2);
    // ...or too short to be a sealed value at all.
    expect(&value[..12], now, RejectReason::Malformed, 1);
    expect("hello", now, RejectReason::Malformed, 2);
    // Expired: past the session's expiry, or idle too long.
    expect(
        &value,
        now + MAX_SESSION + IDLE / 2,
        RejectReason::Expired,
        1,
    );
    expect(
        &value,
        now + IDLE + Duration::from_secs(2),
        RejectReason::Expired,
        2,
    );
    // Unknown key: a key id this member does not have.
    let foreign = Member::new(&[("k9", 1, KeyState::Active)]);
    let foreign_pair = foreign.new_session(&farm, &a, now);
    expect(value_of(&foreign_pair), now, RejectReason::UnknownKey, 1);
    // Same id, different secret (another array that also calls its key k1).
    let twin = Member::new(&[("k1", 2, KeyState::Active)]);
    expect(
        value_of(&twin.new_session(&farm, &a, now)),
        now,
        RejectReason::Tampered,
        3,
    );
    // Other farm: a cookie of another farm that uses the same cookie name.
    let other = farm_with_id("shop/admin");
    let other_pair = m.new_session(&other, &a, now);
    expect(value_of(&other_pair), now, RejectReason::OtherFarm, 1);
    // Other cookie name: a valid cookie presented under another name.
    let mut renamed = web();
    renamed.affinity.cookie_name = "sticky".into();
    let (s, forwarded) = m.request(&renamed, &format!("sticky={value}"), now);
    assert_eq!((s.sticky, forwarded), (None, None));
    assert_rejected(&m, "shop/web", RejectReason::Tampered, 4);

    // The valid cookie still works, and only key ids ever reach the metrics.
    let (s, _) = m.request(&farm, &pair, now);
    assert_eq!(s.sticky, Some(a.key()));
    assert!(!m.metrics().contains(&value[6..20]));
}

fn farm_with_id(id: &str) -> FarmConfig {
    farm(id, AffinityMode::Cookie, CookieProtection::Off)
}

#[test]
fn protected_farms_on_a_shared_host_never_see_each_others_cookies() {
    let m = Member::new(&[("k1", 1, KeyState::Active)]);
    let shop = farm("shop/web", AffinityMode::None, CookieProtection::Encrypt);
    let admin = farm("shop/admin", AffinityMode::None, CookieProtection::Encrypt);
    let plain = farm("shop/legacy", AffinityMode::None, CookieProtection::Off);
    let a = endpoint("10.1.2.3:8080");
    let now = SystemTime::now();

    let (none, _) = m.request(&shop, "", now);
    let shop_sets = m.respond(
        &shop,
        &none,
        &a,
        &["SESSION=shop1; Path=/; HttpOnly", "csrf=t1"],
        now,
    );
    let admin_sets = m.respond(&admin, &none, &a, &["SESSION=admin1; Path=/"], now);
    assert_eq!(shop_sets.len(), 2);
    for set in shop_sets.iter().chain(&admin_sets) {
        assert!(set.starts_with(SEALED_NAME_PREFIX), "{set}");
        assert!(
            !pair_of(set).contains("SESSION") && !set.contains("csrf"),
            "{set}"
        );
        // Values are sealed too.
        assert!(value_of(&pair_of(set)).starts_with("v1.k1."), "{set}");
    }
    assert!(
        shop_sets[0].ends_with("; Path=/; HttpOnly"),
        "attributes kept: {}",
        shop_sets[0]
    );
    // Sealing is deterministic, so the browser replaces rather than duplicates.
    let again = m.respond(&shop, &none, &a, &["SESSION=shop2"], now);
    assert_eq!(
        pair_of(&again[0]).split('=').next(),
        pair_of(&shop_sets[0]).split('=').next()
    );

    // The browser sends every cookie of the host to every farm on it.
    let jar = format!(
        "{}; {}; {}; theme=dark",
        pair_of(&shop_sets[0]),
        pair_of(&shop_sets[1]),
        pair_of(&admin_sets[0])
    );
    // A protected farm gets only what its servers set; a plain cookie (`theme`, which a
    // script may have written) is dropped and counted.
    let (_, to_shop) = m.request(&shop, &jar, now);
    assert_eq!(to_shop.as_deref(), Some("SESSION=shop1; csrf=t1"));
    let (_, to_admin) = m.request(&admin, &jar, now);
    assert_eq!(to_admin.as_deref(), Some("SESSION=admin1"));
    assert_rejected(&m, "shop/web", RejectReason::Unsealed, 1);
    // A farm without protection gets no sealed cookie, and the plain ones.
    let (_, to_plain) = m.request(&plain, &jar, now);
    assert_eq!(to_plain.as_deref(), Some("theme=dark"));
    assert_rejected(&m, "shop/web", RejectReason::OtherFarm, 1);
    assert_rejected(&m, "shop/admin", RejectReason::OtherFarm, 2);
    assert_rejected(&m, "shop/legacy", RejectReason::OtherFarm, 3);

    // Garbled protected-looking names are dropped: the server gets nothing of them.
    let garbled = pair_of(&shop_sets[0]).replacen(".k1.", ".k1.A", 1);
    let (_, fwd) = m.request(&shop, &format!("{garbled}; __pc_junk=1"), now);
    assert_eq!(fwd, None);
    assert_eq!(
        m.manager.rejected_total("shop/web", RejectReason::Tampered)
            + m.manager
                .rejected_total("shop/web", RejectReason::Malformed),
        2
    );
    // A Set-Cookie whose name is not a token is not passed through unprotected.
    assert!(m.respond(&shop, &none, &a, &["bad name=1"], now).is_empty());
}

#[test]
fn rotation_keeps_every_session_open() {
    let m = Member::new(&[("k1", 1, KeyState::Active)]);
    let farm = farm("shop/web", AffinityMode::Cookie, CookieProtection::Encrypt);
    let a = endpoint("10.1.2.3:8080");
    let now = SystemTime::now();
    let old = m.new_session(&farm, &a, now);
    assert!(value_of(&old).starts_with("v1.k1."));
    let (s, _) = m.request(&farm, "", now);
    let old_name = pair_of(&m.respond(&farm, &s, &a, &["SESSION=s1"], now)[0]);

    // Phase 1: the new key is added as accept. Old cookies open, new ones still use k1.
    m.manager
        .set_keyring_text(&keyring(&[
            ("k1", 1, KeyState::Active),
            ("k2", 2, KeyState::Accept),
        ]))
        .unwrap();
    assert_eq!(m.manager.key_ids(), ["k1", "k2"]);
    let (s, fwd) = m.request(&farm, &format!("{old}; {old_name}"), now);
    assert_eq!(s.sticky, Some(a.key()));
    assert_eq!(fwd.as_deref(), Some("SESSION=s1"));
    assert!(value_of(&m.new_session(&farm, &a, now)).starts_with("v1.k1."));

    // Phase 2: promoted. New cookies use k2; old ones still open and are reissued
    // under k2 on their next response, so live sessions migrate.
    m.manager
        .set_keyring_text(&keyring(&[
            ("k1", 1, KeyState::Accept),
            ("k2", 2, KeyState::Active),
        ]))
        .unwrap();
    assert_eq!(m.manager.active_key_id().as_deref(), Some("k2"));
    assert!(value_of(&m.new_session(&farm, &a, now)).starts_with("v1.k2."));
    let (s, fwd) = m.request(&farm, &format!("{old}; {old_name}"), now);
    assert_eq!(s.sticky, Some(a.key()));
    assert_eq!(fwd.as_deref(), Some("SESSION=s1"));
    let sets = m.respond(&farm, &s, &a, &["SESSION=s2; Path=/"], now);
    // The server's cookie under its k2 name, the k1 copy expired, the migrated affinity.
    assert_eq!(sets.len(), 3, "{sets:?}");
    let new_name = pair_of(&sets[0]);
    assert!(
        new_name.starts_with("__pc_v1.k2.") && value_of(&new_name).starts_with("v1.k2."),
        "{sets:?}"
    );
    let old_sealed = old_name.split('=').next().unwrap();
    assert_eq!(sets[1], format!("{old_sealed}=; Max-Age=0; Path=/"));
    let migrated = pair_of(&sets[2]);
    assert!(
        migrated.starts_with("portcullis-affinity=v1.k2."),
        "{sets:?}"
    );
    // While both copies are in the jar, only the active one reaches the server.
    let (_, fwd) = m.request(&farm, &format!("{old_name}; {new_name}"), now);
    assert_eq!(fwd.as_deref(), Some("SESSION=s2"));

    // Phase 3: the old key is removed. Cookies sealed with it no longer open.
    m.manager
        .set_keyring_text(&keyring(&[("k2", 2, KeyState::Active)]))
        .unwrap();
    let (s, _) = m.request(&farm, &migrated, now);
    assert_eq!(s.sticky, Some(a.key()));
    let (s, fwd) = m.request(&farm, &format!("{old}; {old_name}"), now);
    assert_eq!((s.sticky, fwd), (None, None));
    assert_rejected(&m, "shop/web", RejectReason::UnknownKey, 2);
}

#[test]
fn a_bad_keyring_is_refused_whole_and_the_last_good_one_kept() {
    let (m, farm, a, now) = one_member();
    let pair = m.new_session(&farm, &a, now);

    let dir = TempDir::new("keyring");
    let good = dir.write(
        "good.yaml",
        &keyring(&[("k1", 1, KeyState::Active), ("k2", 2, KeyState::Accept)]),
    );
    m.manager.load_keyring_file(&good).unwrap();
    assert_eq!(m.manager.key_ids(), ["k1", "k2"]);

    let secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0cw==";
    let two_active = format!(
        "keys:\n- id: a\n  secret: {secret}\n  created: x\n  state: active\n- id: b\n  secret: {secret}\n  created: x\n  state: active\n"
    );
    let cases = [
        two_active,
        "keys: [".to_owned(),
        format!("keys:\n- id: a\n  secret: {secret}\n  state: bogus\n"),
    ];
    for text in &cases {
        let bad = dir.write("bad.yaml", text);
        let err = m.manager.load_keyring_file(&bad).unwrap_err();
        assert!(matches!(err, KeyringLoadError::Invalid { .. }), "{err:?}");
        let mut shown = format!("{err} {err:?}");
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            shown.push_str(&s.to_string());
            source = s.source();
        }
        assert!(shown.contains("failed to load keyring from"), "{shown}");
        assert!(
            !shown.contains(secret) && !shown.contains("c2VjcmV0"),
            "{shown}"
        );
    }
    let missing = good.with_extension("missing");
    assert!(matches!(
        m.manager.load_keyring_file(&missing),
        Err(KeyringLoadError::Read { .. })
    ));
    assert_eq!(m.manager.key_ids(), ["k1", "k2"], "last good keyring kept");
    assert_eq!(m.request(&farm, &pair, now).0.sticky, Some(a.key()));
}

#[test]
fn without_a_keyring_a_member_makes_up_its_own() {
    let mut registry = Registry::with_prefix("portcullis");
    let manager = SessionManager::new(&mut registry);
    assert!(manager.key_ids().is_empty());
    let farm = web();
    let a = endpoint("10.1.2.3:8080");
    let now = SystemTime::now();
    let set = plain_http_set_cookie(&manager, &farm, &a, now);
    let ids = manager.key_ids();
    assert_eq!(ids.len(), 1);
    assert!(ids[0].starts_with("local-"));
    let pair = pair_of(&set);
    let mut req = HeaderMap::new();
    req.insert(COOKIE, pair.parse().unwrap());
    assert_eq!(
        manager.on_request(&farm, &mut req, now).sticky,
        Some(a.key())
    );
    // Another member without a keyring cannot read it.
    let other = SessionManager::new(&mut Registry::default());
    let mut req = HeaderMap::new();
    req.insert(COOKIE, pair.parse().unwrap());
    assert_eq!(other.on_request(&farm, &mut req, now).sticky, None);
    assert_eq!(
        other.rejected_total("shop/web", RejectReason::UnknownKey),
        1
    );
}

/// Issue 17, finding 4: a Cookie segment without `=` that looks sealed is ours too.
#[test]
fn bare_sealed_looking_cookie_tokens_never_reach_a_server() {
    let m = Member::new(&[("k1", 1, KeyState::Active)]);
    // Without protection, so the plain cookies next to them go through.
    let shop = farm("shop/web", AffinityMode::Cookie, CookieProtection::Off);
    let now = SystemTime::now();
    let (_, fwd) = m.request(&shop, "__pc_", now);
    assert_eq!(fwd, None);
    let (_, fwd) = m.request(&shop, "portcullis-affinity=zz; __pc_v1.k1.abc; sid=1", now);
    assert_eq!(fwd.as_deref(), Some("sid=1"));
    let (_, fwd) = m.request(&shop, "a=1; =__pc_v1.k1.abc; b=2", now);
    assert_eq!(fwd.as_deref(), Some("a=1; b=2"));
    // Each dropped piece is counted (the affinity value `zz` too).
    assert_rejected(&m, "shop/web", RejectReason::Malformed, 4);
    // Nor without affinity.
    let plain = farm("shop/legacy", AffinityMode::None, CookieProtection::Off);
    let (_, fwd) = m.request(&plain, "__pc_v1.k1.abc; sid=1", now);
    assert_eq!(fwd.as_deref(), Some("sid=1"));
}

/// Issue 17, finding 5: a name too long to seal within what opening accepts is refused
/// (and counted) when the server sets it, instead of becoming a cookie that never opens.
#[test]
fn names_too_long_to_open_are_refused_when_sealed() {
    let m = Member::new(&[("k1", 1, KeyState::Active)]);
    let shop = farm("shop/web", AffinityMode::None, CookieProtection::Encrypt);
    let a = endpoint("10.1.2.3:8080");
    let now = SystemTime::now();
    let (none, _) = m.request(&shop, "", now);
    let mut longest_ok = 0;
    for len in [100usize, 2000, 2900, 2950, 3000, 3100, 4096, 10_000] {
        let name = "n".repeat(len);
        let sets = m.respond(&shop, &none, &a, &[&format!("{name}=v; Path=/")], now);
        let Some(set) = sets.first() else {
            continue;
        };
        longest_ok = len;
        // Whatever is set opens again, under its original name.
        let (_, fwd) = m.request(&shop, &pair_of(set), now);
        assert_eq!(fwd, Some(format!("{name}=v")), "len {len}");
    }
    assert!((2000..4096).contains(&longest_ok), "{longest_ok}");
    assert_rejected(&m, "shop/web", RejectReason::TooLong, 3);
    assert_eq!(
        m.manager
            .rejected_total("shop/web", RejectReason::Malformed),
        0
    );
}
