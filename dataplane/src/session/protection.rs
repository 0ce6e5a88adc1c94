//! Cookie protection: cookie names sealed per farm, and their values bound to them.

use super::RejectReason;
use super::keyring::Ring;
use super::seal::{self, NonceMode, Purpose};

/// Every sealed cookie name starts with this, so "protected-looking" is decidable
/// without a key. (`__pc_` is itself a valid cookie-name token, and so is the rest:
/// `v1.<key id>.<base64url>`.)
pub const SEALED_NAME_PREFIX: &str = "__pc_";

/// Whether a cookie name looks sealed.
pub(crate) fn is_sealed_name(name: &[u8]) -> bool {
    name.starts_with(SEALED_NAME_PREFIX.as_bytes())
}

/// Whether `name` is an RFC 6265 cookie-name token.
pub(crate) fn is_token(name: &[u8]) -> bool {
    !name.is_empty()
        && name.iter().all(|&b| {
            b.is_ascii_graphic()
                && !matches!(
                    b,
                    b'(' | b')'
                        | b'<'
                        | b'>'
                        | b'@'
                        | b','
                        | b';'
                        | b':'
                        | b'\\'
                        | b'"'
                        | b'/'
                        | b'['
                        | b']'
                        | b'?'
                        | b'='
                        | b'{'
                        | b'}'
                )
        })
}

fn plaintext(farm: &str, name: &[u8]) -> Vec<u8> {
    let mut pt = Vec::with_capacity(2 + farm.len() + name.len());
    pt.extend_from_slice(&(farm.len() as u16).to_be_bytes());
    pt.extend_from_slice(farm.as_bytes());
    pt.extend_from_slice(name);
    pt
}

/// The sealed name of cookie `name` of `farm` under the active key. Deterministic for a
/// given key, farm and name, so a browser replaces the cookie when the server sets it
/// again instead of keeping both. Refuses ([`RejectReason::TooLong`]) a name too long
/// to open again once sealed.
pub(crate) fn seal_name(ring: &Ring, farm: &str, name: &[u8]) -> Result<String, RejectReason> {
    let sealed = seal::seal(
        ring,
        Purpose::CookieName,
        "",
        &plaintext(farm, name),
        NonceMode::Synthetic,
    )?;
    let mut out = String::with_capacity(SEALED_NAME_PREFIX.len() + sealed.len());
    out.push_str(SEALED_NAME_PREFIX);
    out.push_str(&sealed);
    Ok(out)
}

/// An opened cookie name.
pub(crate) struct OpenedName {
    pub(crate) name: String,
    /// Sealed with the active key (rather than an `accept` one).
    pub(crate) active: bool,
}

/// Opens a sealed name for `farm`.
pub(crate) fn open_name(
    ring: &Ring,
    farm: &str,
    sealed: &[u8],
) -> Result<OpenedName, RejectReason> {
    let body = sealed
        .strip_prefix(SEALED_NAME_PREFIX.as_bytes())
        .ok_or(RejectReason::Malformed)?;
    let opened = seal::open(ring, Purpose::CookieName, "", body)?;
    let pt = opened.plaintext.as_slice();
    let (len, rest) = pt.split_first_chunk::<2>().ok_or(RejectReason::Malformed)?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < len {
        return Err(RejectReason::Malformed);
    }
    let (sealed_farm, name) = rest.split_at(len);
    if sealed_farm != farm.as_bytes() {
        return Err(RejectReason::OtherFarm);
    }
    if !is_token(name) {
        return Err(RejectReason::Malformed);
    }
    Ok(OpenedName {
        name: String::from_utf8(name.to_vec()).map_err(|_| RejectReason::Malformed)?,
        active: opened.key.active,
    })
}

/// Seals a cookie's value under the active key, bound to the sealed name it travels
/// under: a value moved to another cookie, farm or name does not open. The nonce is
/// random; values are not what the browser keys its jar by.
pub(crate) fn seal_value(
    ring: &Ring,
    sealed_name: &str,
    value: &[u8],
) -> Result<String, RejectReason> {
    seal::seal(
        ring,
        Purpose::CookieValue,
        sealed_name,
        value,
        NonceMode::Random,
    )
}

/// Opens the value of the cookie whose (already opened) sealed name is `sealed_name`.
pub(crate) fn open_value(
    ring: &Ring,
    sealed_name: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, RejectReason> {
    let name = std::str::from_utf8(sealed_name).map_err(|_| RejectReason::Malformed)?;
    Ok(seal::open(ring, Purpose::CookieValue, name, sealed)?.plaintext)
}
