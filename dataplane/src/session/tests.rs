//! Properties of the sealing layer itself (the public behaviour is tested in
//! `dataplane/tests/session_cookie.rs`).

use portcullis_crds::keyring::{KeyState, KeyringDoc};
use proptest::prelude::*;

use super::RejectReason;
use super::keyring::Ring;
use super::protection::{open_name, seal_name};
use super::seal::{NonceMode, Purpose, open, seal};

fn ring(keys: &[(&str, u8, KeyState)]) -> Ring {
    let doc = KeyringDoc {
        keys: keys
            .iter()
            .map(|(id, b, state)| KeyringDoc::entry(id, &[*b; 32], "2026-11-21T00:00:00Z", *state))
            .collect(),
    };
    Ring::from_keys(&doc.validate().unwrap())
}

fn flip(text: &str, index: usize, bit: u8) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    let i = index % bytes.len();
    bytes[i] ^= 1 << (bit % 8);
    bytes
}

proptest! {
    #[test]
    fn seal_open_round_trips(plaintext in proptest::collection::vec(any::<u8>(), 0..512),
                             name in "[A-Za-z0-9_-]{0,40}",
                             random in any::<bool>()) {
        let r = ring(&[("k1", 1, KeyState::Active), ("k0", 9, KeyState::Accept)]);
        let mode = if random { NonceMode::Random } else { NonceMode::Synthetic };
        let sealed = seal(&r, Purpose::Affinity, &name, &plaintext, mode).unwrap();
        prop_assert!(sealed.starts_with("v1.k1."));
        let opened = open(&r, Purpose::Affinity, &name, sealed.as_bytes()).unwrap();
        prop_assert_eq!(opened.plaintext, plaintext);
        prop_assert_eq!(opened.key.id.as_str(), "k1");
    }

    #[test]
    fn any_single_bit_flip_is_rejected(plaintext in proptest::collection::vec(any::<u8>(), 0..128),
                                       index in any::<usize>(), bit in 0u8..8) {
        let r = ring(&[("k1", 1, KeyState::Active), ("k2", 2, KeyState::Accept)]);
        let sealed = seal(&r, Purpose::Affinity, "aff", &plaintext, NonceMode::Random).unwrap();
        let flipped = flip(&sealed, index, bit);
        prop_assert!(open(&r, Purpose::Affinity, "aff", &flipped).is_err());
    }

    #[test]
    fn any_single_bit_flip_of_a_sealed_name_is_rejected(name in "[A-Za-z0-9_-]{1,40}",
                                                        index in any::<usize>(), bit in 0u8..8) {
        let r = ring(&[("k1", 1, KeyState::Active)]);
        let sealed = seal_name(&r, "ns/farm", name.as_bytes()).unwrap();
        prop_assert_eq!(&open_name(&r, "ns/farm", sealed.as_bytes()).unwrap().name, &name);
        let flipped = flip(&sealed, index, bit);
        prop_assert!(open_name(&r, "ns/farm", &flipped).is_err());
    }
}

#[test]
fn purpose_name_and_key_are_bound() {
    let r = ring(&[("k1", 1, KeyState::Active), ("k2", 2, KeyState::Accept)]);
    let sealed = seal(&r, Purpose::Affinity, "aff", b"x", NonceMode::Random).unwrap();
    assert!(open(&r, Purpose::Affinity, "aff", sealed.as_bytes()).is_ok());
    assert_eq!(
        open(&r, Purpose::CookieName, "aff", sealed.as_bytes()).err(),
        Some(RejectReason::Tampered)
    );
    assert_eq!(
        open(&r, Purpose::Affinity, "other", sealed.as_bytes()).err(),
        Some(RejectReason::Tampered)
    );
    // The same body presented under the other key's id.
    let moved = sealed.replacen("v1.k1.", "v1.k2.", 1);
    assert_eq!(
        open(&r, Purpose::Affinity, "aff", moved.as_bytes()).err(),
        Some(RejectReason::Tampered)
    );
    let unknown = sealed.replacen("v1.k1.", "v1.k9.", 1);
    assert_eq!(
        open(&r, Purpose::Affinity, "aff", unknown.as_bytes()).err(),
        Some(RejectReason::UnknownKey)
    );
    for bad in [
        "",
        "v1",
        "v1.k1",
        "v2.k1.AAAA",
        "v1.k 1.AAAA",
        "v1.k1.AAAA",
        "v1.k1.!!!",
    ] {
        assert_eq!(
            open(&r, Purpose::Affinity, "aff", bad.as_bytes()).err(),
            Some(RejectReason::Malformed),
            "{bad:?}"
        );
    }
}

#[test]
fn sealed_names_are_deterministic_per_key_and_farm() {
    let r = ring(&[("k1", 1, KeyState::Active)]);
    let a = seal_name(&r, "ns/a", b"SESSION").unwrap();
    assert_eq!(a, seal_name(&r, "ns/a", b"SESSION").unwrap());
    assert_ne!(a, seal_name(&r, "ns/b", b"SESSION").unwrap());
    assert_ne!(a, seal_name(&r, "ns/a", b"SESSION2").unwrap());
    assert!(a.starts_with("__pc_v1.k1."));
    assert!(super::protection::is_token(a.as_bytes()));
    assert_eq!(
        open_name(&r, "ns/b", a.as_bytes()).err(),
        Some(RejectReason::OtherFarm)
    );
    let other = ring(&[("k1", 2, KeyState::Active)]);
    assert_ne!(
        a,
        seal_name(&other, "ns/a", b"SESSION").unwrap(),
        "the nonce depends on the key"
    );
}

#[test]
fn seal_refuses_exactly_what_open_would_refuse() {
    // Issue 17, finding 5: everything sealed opens again; the rest is refused up front.
    for id in ["k", "a-much-longer-key-id-0123456789"] {
        let r = ring(&[(id, 1, KeyState::Active)]);
        let (mut sealed_some, mut refused_some) = (false, false);
        for len in 2900..3100 {
            let pt = vec![b'n'; len];
            match seal(&r, Purpose::CookieName, "", &pt, NonceMode::Synthetic) {
                Ok(sealed) => {
                    sealed_some = true;
                    assert!(sealed.len() <= super::seal::MAX_SEALED_LEN);
                    let opened = open(&r, Purpose::CookieName, "", sealed.as_bytes()).unwrap();
                    assert_eq!(opened.plaintext, pt);
                }
                Err(reason) => {
                    refused_some = true;
                    assert_eq!(reason, RejectReason::TooLong);
                }
            }
        }
        assert!(
            sealed_some && refused_some,
            "the limit lies in 2900..3100 for {id}"
        );
    }
}
