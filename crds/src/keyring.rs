//! The keyring format shared by the controller (which writes it into the array's Secret)
//! and the dataplane (which reads it from that Secret, or from `--keyring FILE` in local
//! mode).
//!
//! ```yaml
//! keys:
//! - id: k-2026-11-21
//!   secret: <base64 of 32 random bytes>
//!   created: 2026-11-21T00:00:00Z
//!   state: active        # encrypts and decrypts; exactly one key is active
//! - id: k-2026-11-14
//!   secret: <base64>
//!   created: 2026-11-14T00:00:00Z
//!   state: accept        # decrypts only
//! ```
//!
//! JSON is YAML, so the same parser reads either. Key material never leaves this type
//! through `Debug` or `Display`: only ids do.

use std::collections::BTreeSet;
use std::fmt;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// The key of the array Secret (and the local file content) that holds the keyring.
pub const KEYRING_SECRET_KEY: &str = "keyring.yaml";

/// Length of a key's secret in bytes (256 bits).
pub const KEY_LEN: usize = 32;

/// Longest key id; ids travel in every cookie, so they stay short.
pub const MAX_KEY_ID_LEN: usize = 32;

/// A set of keys, exactly one of them active.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyringDoc {
    /// The keys, in any order.
    pub keys: Vec<KeyEntry>,
}

/// One key as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyEntry {
    /// Short id, carried in the clear in every cookie: `[A-Za-z0-9_-]{1,32}`.
    pub id: String,
    /// Standard base64 of exactly 32 bytes.
    pub secret: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// `active` or `accept`.
    pub state: KeyState,
    /// RFC 3339 time the key stopped being active (set by the controller on rotation);
    /// the key is removed once `acceptRetiredFor` has passed since then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<String>,
}

/// What a key may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
pub enum KeyState {
    /// Encrypts and decrypts.
    Active,
    /// Decrypts only.
    Accept,
}

/// Why a keyring was refused. Messages name key ids and positions, never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// Not YAML/JSON of the expected shape.
    #[error("failed to parse keyring: {0}")]
    Parse(String),
    /// No key at all.
    #[error("keyring has no keys")]
    Empty,
    /// Zero or several active keys.
    #[error("keyring must have exactly one active key, found {0}")]
    ActiveCount(usize),
    /// A bad id. The id is not quoted: an id that is not an id may be a misplaced
    /// secret.
    #[error("keyring key #{index}: the id must be 1-32 characters of A-Z a-z 0-9 _ -")]
    BadId {
        /// Position in the list.
        index: usize,
    },
    /// Two keys share an id.
    #[error("keyring key id {0:?} appears twice")]
    DuplicateId(String),
    /// The secret is not base64 of 32 bytes.
    #[error("keyring key {id:?}: secret must be base64 of exactly 32 bytes")]
    BadSecret {
        /// The key id.
        id: String,
    },
}

/// A validated key: id, state and the 32 secret bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    /// The id.
    pub id: String,
    /// Active or accept.
    pub state: KeyState,
    /// The secret.
    pub secret: [u8; KEY_LEN],
    /// Creation time as written.
    pub created: String,
    /// Retirement time as written.
    pub retired: Option<String>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for KeyringDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (&k.id, k.state)))
            .finish()
    }
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEntry")
            .field("id", &self.id)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Checks a key id.
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl KeyringDoc {
    /// Parses YAML or JSON text. Errors never quote the text (it holds secrets).
    pub fn parse(text: &str) -> Result<Self, KeyringError> {
        serde_yaml::from_str::<KeyringDoc>(text).map_err(|e| {
            // serde_yaml errors can quote input; keep only the location.
            let at = e
                .location()
                .map(|l| format!(" at line {} column {}", l.line(), l.column()))
                .unwrap_or_default();
            KeyringError::Parse(format!(
                "not a keyring document{at} (expected `keys:` with id, secret, created, state)"
            ))
        })
    }

    /// Validates every key; a keyring with any bad key is refused whole.
    pub fn validate(&self) -> Result<Vec<Key>, KeyringError> {
        if self.keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        let mut seen = BTreeSet::new();
        let mut keys = Vec::with_capacity(self.keys.len());
        for (index, k) in self.keys.iter().enumerate() {
            if !valid_key_id(&k.id) {
                return Err(KeyringError::BadId { index });
            }
            if !seen.insert(k.id.clone()) {
                return Err(KeyringError::DuplicateId(k.id.clone()));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(k.secret.trim())
                .map_err(|_| KeyringError::BadSecret { id: k.id.clone() })?;
            let secret: [u8; KEY_LEN] = bytes
                .try_into()
                .map_err(|_| KeyringError::BadSecret { id: k.id.clone() })?;
            keys.push(Key {
                id: k.id.clone(),
                state: k.state,
                secret,
                created: k.created.clone(),
                retired: k.retired.clone(),
            });
        }
        let active = keys.iter().filter(|k| k.state == KeyState::Active).count();
        if active != 1 {
            return Err(KeyringError::ActiveCount(active));
        }
        Ok(keys)
    }

    /// Parses and validates.
    pub fn load(text: &str) -> Result<Vec<Key>, KeyringError> {
        Self::parse(text)?.validate()
    }

    /// The YAML text, as stored in the Secret.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a keyring always serializes")
    }

    /// A new entry for `secret`.
    pub fn entry(id: &str, secret: &[u8; KEY_LEN], created: &str, state: KeyState) -> KeyEntry {
        KeyEntry {
            id: id.to_owned(),
            secret: base64::engine::general_purpose::STANDARD.encode(secret),
            created: created.to_owned(),
            state,
            retired: None,
        }
    }

    /// Ids of every key.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// The active key's id, when there is exactly one.
    pub fn active_id(&self) -> Option<&str> {
        let mut active = self.keys.iter().filter(|k| k.state == KeyState::Active);
        match (active.next(), active.next()) {
            (Some(k), None) => Some(&k.id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> KeyringDoc {
        KeyringDoc {
            keys: vec![
                KeyringDoc::entry("k2", &[2; 32], "2026-11-21T00:00:00Z", KeyState::Active),
                KeyringDoc::entry("k1", &[1; 32], "2026-11-14T00:00:00Z", KeyState::Accept),
            ],
        }
    }

    #[test]
    fn round_trips_through_yaml_and_json() {
        let d = doc();
        let keys = KeyringDoc::load(&d.to_yaml()).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].secret, [2; 32]);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(KeyringDoc::load(&json).unwrap(), keys);
        assert_eq!(d.active_id(), Some("k2"));
    }

    #[test]
    fn refuses_bad_keyrings_whole_without_quoting_secrets() {
        let mut two_active = doc();
        two_active.keys[1].state = KeyState::Active;
        assert_eq!(two_active.validate(), Err(KeyringError::ActiveCount(2)));

        let mut none_active = doc();
        none_active.keys[0].state = KeyState::Accept;
        assert_eq!(none_active.validate(), Err(KeyringError::ActiveCount(0)));

        let mut short = doc();
        short.keys[1].secret = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        assert_eq!(
            short.validate(),
            Err(KeyringError::BadSecret { id: "k1".into() })
        );

        let mut dup = doc();
        dup.keys[1].id = "k2".into();
        assert_eq!(dup.validate(), Err(KeyringError::DuplicateId("k2".into())));

        let mut bad_id = doc();
        bad_id.keys[0].id = "k 2".into();
        assert!(matches!(bad_id.validate(), Err(KeyringError::BadId { .. })));

        assert_eq!(KeyringDoc::default().validate(), Err(KeyringError::Empty));

        let secret_text =
            "keys:\n- id: k1\n  secret: SUPERSECRETVALUE\n  created: x\n  state: bogus\n";
        let err = KeyringDoc::load(secret_text).unwrap_err().to_string();
        assert!(!err.contains("SUPERSECRETVALUE"), "{err}");
    }

    #[test]
    fn debug_never_shows_key_material() {
        let d = doc();
        let keys = d.validate().unwrap();
        for shown in [
            format!("{d:?}"),
            format!("{keys:?}"),
            format!("{:?}", d.keys[0]),
        ] {
            assert!(!shown.contains(&d.keys[0].secret), "{shown}");
            assert!(!shown.contains("2, 2, 2"), "{shown}");
        }
    }
}
