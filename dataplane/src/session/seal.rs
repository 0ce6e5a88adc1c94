//! Sealing and opening short values: `v1.<key id>.<base64url(nonce || ciphertext)>`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::XNonce;
use chacha20poly1305::aead::{Aead, Payload};
use portcullis_crds::keyring::valid_key_id;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::RejectReason;
use super::keyring::{Ring, SealKey};

/// Format version, the first dot-separated field of every sealed value.
pub(crate) const VERSION: &str = "v1";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Longest sealed text accepted; cookies are far shorter, this bounds the work. Sealing
/// refuses what would be longer, so everything sealed opens again.
pub(crate) const MAX_SEALED_LEN: usize = 4096;

/// What a sealed value is for; part of the associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The value of the affinity cookie.
    Affinity,
    /// A cookie name sealed by cookie protection.
    CookieName,
    /// A cookie value sealed by cookie protection, bound to its sealed name.
    CookieValue,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Affinity => b"affinity",
            Purpose::CookieName => b"cookie-name",
            Purpose::CookieValue => b"cookie-value",
        }
    }
}

/// The associated data: format version, purpose, key id and the name the sealed text
/// travels under (the affinity cookie's name; empty for sealed names; the sealed name
/// for sealed values). Each part is length-prefixed so no two different tuples encode
/// alike.
fn associated_data(purpose: Purpose, key_id: &str, name: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(32 + key_id.len() + name.len());
    for part in [
        b"portcullis-session".as_slice(),
        VERSION.as_bytes(),
        purpose.label(),
        key_id.as_bytes(),
        name.as_bytes(),
    ] {
        ad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        ad.extend_from_slice(part);
    }
    ad
}

/// How the nonce is chosen.
#[derive(Clone, Copy, Debug)]
pub(crate) enum NonceMode {
    /// 192 random bits: safe for any number of members sealing with one key.
    Random,
    /// Derived from the key and the plaintext, so equal plaintexts seal to equal text
    /// (needed for cookie names, which the browser keys its jar by).
    Synthetic,
}

/// The length of the sealed text of a `plaintext_len`-byte plaintext under key `key_id`.
fn sealed_len(key_id: &str, plaintext_len: usize) -> usize {
    let body = NONCE_LEN + plaintext_len + TAG_LEN;
    // Unpadded base64: four characters per three bytes, rounded up.
    VERSION.len() + 1 + key_id.len() + 1 + (body * 4).div_ceil(3)
}

/// Seals `plaintext` with the ring's active key; refuses ([`RejectReason::TooLong`]) a
/// plaintext whose sealed text [`open`] would refuse as too long.
pub(crate) fn seal(
    ring: &Ring,
    purpose: Purpose,
    name: &str,
    plaintext: &[u8],
    mode: NonceMode,
) -> Result<String, RejectReason> {
    seal_with(ring.active(), purpose, name, plaintext, mode)
}

pub(crate) fn seal_with(
    key: &SealKey,
    purpose: Purpose,
    name: &str,
    plaintext: &[u8],
    mode: NonceMode,
) -> Result<String, RejectReason> {
    if sealed_len(&key.id, plaintext.len()) > MAX_SEALED_LEN {
        return Err(RejectReason::TooLong);
    }
    let mut nonce = [0u8; NONCE_LEN];
    match mode {
        NonceMode::Random => rand::rng().fill_bytes(&mut nonce),
        NonceMode::Synthetic => {
            let mut h = Sha256::new();
            h.update(key.nonce_key);
            h.update(purpose.label());
            h.update([0]);
            h.update((name.len() as u32).to_be_bytes());
            h.update(name.as_bytes());
            h.update(plaintext);
            nonce.copy_from_slice(&h.finalize()[..NONCE_LEN]);
        }
    }
    let ad = associated_data(purpose, &key.id, name);
    let ciphertext = key
        .aead
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &ad,
            },
        )
        .expect("XChaCha20-Poly1305 seals any cookie-sized input");
    let mut body = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    body.extend_from_slice(&nonce);
    body.extend_from_slice(&ciphertext);
    let mut out = String::with_capacity(VERSION.len() + key.id.len() + 2 + body.len() * 4 / 3 + 4);
    out.push_str(VERSION);
    out.push('.');
    out.push_str(&key.id);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(&body, &mut out);
    debug_assert_eq!(out.len(), sealed_len(&key.id, plaintext.len()));
    Ok(out)
}

/// What opening gave.
pub(crate) struct Opened<'r> {
    pub(crate) plaintext: Vec<u8>,
    pub(crate) key: &'r SealKey,
}

/// The key id of a sealed text, when it has the shape of one (for logs).
pub(crate) fn key_id_of(sealed: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(sealed).ok()?;
    let mut parts = text.splitn(3, '.');
    let (_, id) = (parts.next()?, parts.next()?);
    valid_key_id(id).then_some(id)
}

/// Opens a sealed text with whichever key of the ring its id names.
pub(crate) fn open<'r>(
    ring: &'r Ring,
    purpose: Purpose,
    name: &str,
    sealed: &[u8],
) -> Result<Opened<'r>, RejectReason> {
    if sealed.len() > MAX_SEALED_LEN {
        return Err(RejectReason::Malformed);
    }
    let text = std::str::from_utf8(sealed).map_err(|_| RejectReason::Malformed)?;
    let mut parts = text.splitn(3, '.');
    let (Some(version), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(RejectReason::Malformed);
    };
    if version != VERSION || !valid_key_id(id) {
        return Err(RejectReason::Malformed);
    }
    let body = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| RejectReason::Malformed)?;
    if body.len() < NONCE_LEN + TAG_LEN {
        return Err(RejectReason::Malformed);
    }
    let key = ring.get(id).ok_or(RejectReason::UnknownKey)?;
    let (nonce, ciphertext) = body.split_at(NONCE_LEN);
    let ad = associated_data(purpose, id, name);
    let plaintext = key
        .aead
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &ad,
            },
        )
        .map_err(|_| RejectReason::Tampered)?;
    Ok(Opened { plaintext, key })
}
