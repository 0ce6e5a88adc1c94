//! Array sessions: the shared keyring, sealed affinity cookies and cookie protection.
//!
//! Any member of a GatewayArray can continue a session another member started, because
//! every member seals and opens cookies with the same keyring (the array's Secret, or
//! `--keyring FILE` in local mode; format in [`portcullis_crds::keyring`]).
//!
//! # Sealing
//!
//! - AEAD: XChaCha20-Poly1305 (`chacha20poly1305` 0.10). Each key's 256-bit secret is
//!   used only to derive two subkeys with SHA-256 under distinct labels: the AEAD key,
//!   and the key of the synthetic nonces below.
//! - A sealed text is `v1.<key id>.<base64url(nonce || ciphertext || tag)>` (no padding;
//!   the decoder refuses non-canonical base64, so any change to the text changes the
//!   bytes the AEAD checks). The key id is in the clear so a member picks the right key.
//! - Associated data: the format version, the purpose (`affinity` or `cookie-name`), the
//!   key id and the cookie name the text travels under, each length-prefixed.
//! - The farm id is bound too, *inside* the authenticated plaintext rather than in the
//!   associated data: the binding is as strong (a changed farm id fails the tag like any
//!   other change), and a member can then tell a cookie sealed for another farm
//!   (`other_farm`) from a forged one (`tampered`) instead of reporting both alike.
//! - New cookies are sealed with the active key only; cookies open with any key in the
//!   ring (`active` or `accept`).
//!
//! # Affinity cookie (`affinity: Cookie`)
//!
//! Value: a sealed text with a random 192-bit nonce (random nonces of that length are safe
//! for any number of members writing with one key). Plaintext: farm id, issue time,
//! expiry (issue + the farm's `maxSessionTime`), last-seen time, and the endpoint
//! identity key. Expiry and idle timeout are checked here, whatever the browser keeps.
//! Pod addresses exist only inside the ciphertext. Attributes: `HttpOnly`, `Secure` on
//! HTTPS listeners, `SameSite` from the farm (default `Lax`), `Path` of the route,
//! `Max-Age` up to the expiry. The cookie is reissued when the session moves, every
//! tenth of the idle timeout (to slide the idle timer), and when it was sealed with a
//! key that is no longer active (so rotation migrates live sessions).
//!
//! # Cookie protection (`cookieProtection: Encrypt`)
//!
//! `Set-Cookie` names from the farm's servers become `__pc_v1.<key id>.<base64url>`: the
//! sealed farm id and original name. The nonce is synthetic (SHA-256 of the nonce subkey,
//! purpose and plaintext), so a name seals to the same text every time under one key and
//! the browser replaces the cookie instead of keeping copies; equal names reveal only that
//! they are equal. The value is sealed too (purpose `cookie-value`, random nonce), with
//! the sealed name as the name in its associated data: a value opens only under the
//! cookie it was set with, so it cannot be changed, forged, or moved to another cookie,
//! farm or name. Attributes pass unchanged. On requests every member removes every
//! `__pc_` cookie, and forwards only those whose name and value open for the farm being
//! requested, under their original names (which must be cookie tokens) and values. A
//! protected farm gets no unsealed cookie at all: every cookie its servers set arrives
//! sealed, so an unsealed one was set by someone else (a client forging `sid=...`, a
//! page script, another application on the host) and is dropped and counted as
//! `unsealed`. Deciding by the cookie alone, rather than by a list of names learned from
//! `Set-Cookie` headers, gives the same answer on every member from its first request,
//! with no state to lose at a restart. When a name was set again after a rotation, the
//! copy under the active key wins and the old copy is expired on that response. A
//! protected cookie lives as long as the key that sealed it stays in the ring, unless the
//! server sets it again.
//!
//! # Rejections
//!
//! A cookie that does not open is treated as absent: removed from the request, counted
//! in `portcullis_session_cookie_rejected_total{farm,reason}` ([`RejectReason`]), and
//! logged at debug with its key id and reason only. Keys never appear in logs, errors or
//! metrics. A cookie name too long to seal into a text that opens again (the sealed text
//! is capped at 4096 bytes, so names over about 3 KB) is refused when the server sets it
//! and counted as `too_long`: nothing is sealed that could not be opened.
//!
//! # No keyring
//!
//! A member given no keyring makes up one random key at first use and warns: its cookies
//! open on that member only, and not after a restart. That suits a single local member.

mod affinity;
mod keyring;
mod manager;
mod protection;
mod seal;

pub use keyring::KeyringLoadError;
pub use manager::{RequestSession, SessionManager};
pub use protection::SEALED_NAME_PREFIX;

/// Why a cookie was dropped: the `reason` label of
/// `portcullis_session_cookie_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Sealed with a key id that is not in the ring (another array, or a removed key).
    UnknownKey,
    /// The authentication tag does not verify: changed, truncated, or moved to another
    /// cookie name.
    Tampered,
    /// The session is past its expiry or was idle too long.
    Expired,
    /// Sealed for another farm.
    OtherFarm,
    /// Not the shape of a sealed cookie.
    Malformed,
    /// Too long to seal into a text that opens again: a `Set-Cookie` refused on the
    /// response (never set), or an affinity cookie not issued.
    TooLong,
    /// Not sealed at all, sent to a farm with cookie protection: its servers did not set
    /// it through the array (a forgery, or a cookie a script wrote).
    Unsealed,
}

impl RejectReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::UnknownKey => "unknown_key",
            RejectReason::Tampered => "tampered",
            RejectReason::Expired => "expired",
            RejectReason::OtherFarm => "other_farm",
            RejectReason::Malformed => "malformed",
            RejectReason::TooLong => "too_long",
            RejectReason::Unsealed => "unsealed",
        }
    }
}

/// The cookie-open fuzz target's body (see `crate::fuzz::cookie_open`): `data` as a
/// sealed text or a sealed cookie value must not open (no forgery); as a change to a
/// sealed text, must not open once it changed anything (no malleability); as a
/// plaintext, a cookie name and a cookie value, seals (or is refused as too long) and
/// opens again only for its own purpose, farm and sealed name.
pub(crate) fn fuzz_seal_open(data: &[u8]) {
    use portcullis_crds::keyring::{KeyState, KeyringDoc};
    // The ring is built once: its derivation is setup, not what the target exercises.
    thread_local! {
        static RING: keyring::Ring = keyring::Ring::from_keys(
            &KeyringDoc {
                keys: vec![
                    KeyringDoc::entry("k0", &[7; 32], "2026-01-01T00:00:00Z", KeyState::Accept),
                    KeyringDoc::entry("k1", &[9; 32], "2026-01-02T00:00:00Z", KeyState::Active),
                ],
            }
            .validate()
            .expect("the fixed keyring is valid"),
        );
    }
    RING.with(|ring| seal_open_with(ring, data));
}

fn seal_open_with(ring: &keyring::Ring, data: &[u8]) {
    use seal::{NonceMode, Purpose};
    // Arbitrary bytes never open, under either purpose.
    for purpose in [Purpose::Affinity, Purpose::CookieName] {
        assert!(seal::open(ring, purpose, "aff", data).is_err());
        assert!(seal::open(ring, purpose, "", data).is_err());
    }
    assert!(protection::open_name(ring, "ns/a", data).is_err());
    let sid = protection::seal_name(ring, "ns/a", b"sid").expect("a short name seals");
    let csrf = protection::seal_name(ring, "ns/a", b"csrf").expect("a short name seals");
    assert!(protection::open_value(ring, sid.as_bytes(), data).is_err());
    // A sealed text changed by `data` (xor) opens only if unchanged.
    let sealed = seal::seal(ring, Purpose::Affinity, "aff", b"claim", NonceMode::Random)
        .expect("a short plaintext seals");
    let mut changed = sealed.clone().into_bytes();
    for (i, b) in data.iter().enumerate() {
        let at = i % changed.len();
        changed[at] ^= b;
    }
    if changed != sealed.as_bytes() {
        assert!(seal::open(ring, Purpose::Affinity, "aff", &changed).is_err());
    }
    // `data` as a plaintext: what seals opens to it, for its own purpose and name only.
    match seal::seal(ring, Purpose::Affinity, "aff", data, NonceMode::Random) {
        Ok(text) => {
            let opened = seal::open(ring, Purpose::Affinity, "aff", text.as_bytes())
                .expect("what seals opens");
            assert_eq!(opened.plaintext, data);
            assert!(seal::open(ring, Purpose::Affinity, "other", text.as_bytes()).is_err());
            assert!(seal::open(ring, Purpose::CookieName, "aff", text.as_bytes()).is_err());
        }
        Err(reason) => assert_eq!(reason, RejectReason::TooLong),
    }
    // `data` as a cookie value: opens under the sealed name it was set with, and only
    // as a value.
    match protection::seal_value(ring, &sid, data) {
        Ok(value) => {
            let opened = protection::open_value(ring, sid.as_bytes(), value.as_bytes())
                .expect("a sealed value opens");
            assert_eq!(opened, data);
            assert!(protection::open_value(ring, csrf.as_bytes(), value.as_bytes()).is_err());
            assert!(seal::open(ring, Purpose::CookieName, "", value.as_bytes()).is_err());
            assert!(seal::open(ring, Purpose::Affinity, &sid, value.as_bytes()).is_err());
        }
        Err(reason) => assert_eq!(reason, RejectReason::TooLong),
    }
    // `data` as a cookie name.
    if protection::is_token(data) {
        match protection::seal_name(ring, "ns/a", data) {
            Ok(name) => {
                let opened = protection::open_name(ring, "ns/a", name.as_bytes())
                    .expect("a sealed name opens");
                assert_eq!(opened.name.as_bytes(), data);
                assert!(matches!(
                    protection::open_name(ring, "ns/b", name.as_bytes()),
                    Err(RejectReason::OtherFarm)
                ));
            }
            Err(reason) => assert_eq!(reason, RejectReason::TooLong),
        }
    }
}

#[cfg(test)]
mod tests;
