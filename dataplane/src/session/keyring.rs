//! The keyring as the dataplane holds it: one ready cipher per key, the active one marked.
//!
//! The text format is [`portcullis_crds::keyring`]; this file only turns validated keys
//! into ciphers and says why a keyring could not be loaded.

use std::path::{Path, PathBuf};

use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use portcullis_crds::keyring::{Key, KeyState, KeyringError, MAX_KEY_ID_LEN};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Why a keyring was not loaded. The last good keyring stays in use. Messages name
/// files and key ids, never key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyringLoadError {
    /// The file could not be read.
    #[error("failed to read keyring file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not a valid keyring.
    #[error("failed to load keyring{}", .path.as_ref().map(|p| format!(" from {}", p.display())).unwrap_or_default())]
    Invalid {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// What is wrong with it (ids and positions only).
        #[source]
        source: KeyringError,
    },
}

impl KeyringLoadError {
    /// A stable label for metrics and events.
    pub fn label(&self) -> &'static str {
        match self {
            KeyringLoadError::Read { .. } => "read",
            KeyringLoadError::Invalid { .. } => "invalid",
        }
    }

    pub(crate) fn in_file(self, file: &Path) -> Self {
        match self {
            KeyringLoadError::Invalid { path: None, source } => KeyringLoadError::Invalid {
                path: Some(file.to_owned()),
                source,
            },
            other => other,
        }
    }
}

/// One key ready to seal and open. Its material never leaves this type.
pub(crate) struct SealKey {
    pub(crate) id: String,
    pub(crate) active: bool,
    pub(crate) aead: XChaCha20Poly1305,
    /// Keys the synthetic nonces of sealed cookie names (see the module docs).
    pub(crate) nonce_key: [u8; 32],
}

impl SealKey {
    fn new(id: String, active: bool, secret: &[u8; 32]) -> Self {
        // Separate subkeys for the AEAD and for the synthetic nonces, so the secret as
        // written is used for exactly one thing: deriving them.
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(b"portcullis/session/v1/");
            h.update(label);
            h.update([0]);
            h.update(secret);
            h.finalize().into()
        };
        let aead_key = derive(b"aead");
        SealKey {
            id,
            active,
            aead: XChaCha20Poly1305::new(&aead_key.into()),
            nonce_key: derive(b"name-nonce"),
        }
    }
}

/// A loaded keyring: every key, exactly one active.
pub(crate) struct Ring {
    keys: Vec<SealKey>,
    active: usize,
}

impl Ring {
    /// Builds from keys the crds format validated (exactly one active, ids unique).
    pub(crate) fn from_keys(keys: &[Key]) -> Self {
        let keys: Vec<SealKey> = keys
            .iter()
            .map(|k| SealKey::new(k.id.clone(), k.state == KeyState::Active, &k.secret))
            .collect();
        let active = keys.iter().position(|k| k.active).unwrap_or(0);
        Ring { keys, active }
    }

    /// A single random active key, for a member that was given no keyring.
    pub(crate) fn generate() -> Self {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let mut tag = [0u8; 6];
        rand::rng().fill_bytes(&mut tag);
        let id = format!(
            "local-{}",
            tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        debug_assert!(id.len() <= MAX_KEY_ID_LEN);
        Ring {
            keys: vec![SealKey::new(id, true, &secret)],
            active: 0,
        }
    }

    pub(crate) fn active(&self) -> &SealKey {
        &self.keys[self.active]
    }

    pub(crate) fn get(&self, id: &str) -> Option<&SealKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }
}
