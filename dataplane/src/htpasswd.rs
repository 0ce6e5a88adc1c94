//! htpasswd files (ingress-nginx's `auth-file`): one `user:hash` per line, checked with
//! the hash's own scheme. bcrypt (`$2y$`, `$2b$`, `$2a$`) through the `bcrypt` crate;
//! apr1-MD5 (`$apr1$`), MD5-crypt (`$1$`) and SHA-1 (`{SHA}`) here, on the RustCrypto
//! digests. Other lines (comments, blank lines, DES crypt, plain text) are skipped:
//! nobody logs in with them.

use std::collections::HashMap;

use base64::Engine;
use md5::{Digest, Md5};
use sha1::Sha1;

/// A stored hash.
#[derive(Clone, PartialEq, Eq)]
enum Hash {
    Bcrypt(String),
    /// `$apr1$` or `$1$`: the magic, the salt and the encoded digest.
    Md5Crypt {
        magic: &'static str,
        salt: String,
        digest: String,
    },
    /// The SHA-1 digest.
    Sha1(Vec<u8>),
}

/// The users of one htpasswd file. Debug never shows a hash.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Htpasswd {
    users: HashMap<String, Hash>,
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Htpasswd")
            .field("users", &self.users.len())
            .finish()
    }
}

impl Htpasswd {
    /// Parses a file; returns the users and the numbers (from 1) of lines skipped because
    /// their hash scheme is not supported.
    pub(crate) fn parse(text: &str) -> (Htpasswd, Vec<usize>) {
        let mut users = HashMap::new();
        let mut skipped = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                skipped.push(i + 1);
                continue;
            };
            match parse_hash(hash) {
                // The first line of a user wins, as Apache's and nginx's lookups do.
                Some(h) => {
                    users.entry(user.to_owned()).or_insert(h);
                }
                None => skipped.push(i + 1),
            }
        }
        (Htpasswd { users }, skipped)
    }

    /// Whether `user` exists with a hash that is slow to check (bcrypt).
    pub(crate) fn is_slow(&self, user: &str) -> bool {
        matches!(self.users.get(user), Some(Hash::Bcrypt(_)))
    }

    /// Whether `password` is `user`'s. bcrypt takes tens of milliseconds by design: call
    /// it off the request threads for [`Htpasswd::is_slow`] users.
    pub(crate) fn check(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            None => false,
            Some(Hash::Bcrypt(h)) => bcrypt::verify(password, h).unwrap_or(false),
            Some(Hash::Md5Crypt {
                magic,
                salt,
                digest,
            }) => constant_time_eq(
                md5_crypt(password.as_bytes(), salt.as_bytes(), magic.as_bytes()).as_bytes(),
                digest.as_bytes(),
            ),
            Some(Hash::Sha1(d)) => constant_time_eq(&Sha1::digest(password.as_bytes()), d),
        }
    }
}

fn parse_hash(hash: &str) -> Option<Hash> {
    if ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
        return Some(Hash::Bcrypt(hash.to_owned()));
    }
    if let Some(b64) = hash.strip_prefix("{SHA}") {
        let d = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        return (d.len() == 20).then_some(Hash::Sha1(d));
    }
    for magic in ["$apr1$", "$1$"] {
        if let Some(rest) = hash.strip_prefix(magic) {
            let (salt, digest) = rest.split_once('$')?;
            return (salt.len() <= 8 && digest.len() == 22).then(|| Hash::Md5Crypt {
                magic,
                salt: salt.to_owned(),
                digest: digest.to_owned(),
            });
        }
    }
    None
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Poul-Henning Kamp's MD5-crypt, with Apache's `$apr1$` magic or the original `$1$`:
/// the encoded 22-character digest.
fn md5_crypt(pw: &[u8], salt: &[u8], magic: &[u8]) -> String {
    let alt = Md5::new()
        .chain_update(pw)
        .chain_update(salt)
        .chain_update(pw)
        .finalize();
    let mut ctx = Md5::new()
        .chain_update(pw)
        .chain_update(magic)
        .chain_update(salt);
    let mut left = pw.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = pw.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&pw[..1]);
        }
        i >>= 1;
    }
    let mut fin = ctx.finalize();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(pw);
        } else {
            c.update(fin);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(pw);
        }
        if round & 1 == 1 {
            c.update(fin);
        } else {
            c.update(pw);
        }
        fin = c.finalize();
    }
    const ITOA64: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(22);
    let mut put = |v: u32, n: usize| {
        let mut v = v;
        for _ in 0..n {
            out.push(ITOA64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let f = |i: usize| u32::from(fin[i]);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put((f(a) << 16) | (f(b) << 8) | f(c), 4);
    }
    put(f(11), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apr1_md5_crypt_and_sha1_hashes_check() {
        let (h, skipped) = Htpasswd::parse(
            "# users\nuser:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\nsalted:$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/\nsha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n\nplain:password\nbroken\n",
        );
        assert_eq!(skipped, [6, 7]);
        assert!(h.check("user", "password"));
        assert!(!h.check("user", "Password"));
        assert!(h.check("salted", "password"));
        assert!(h.check("sha", "password"));
        assert!(!h.check("sha", ""));
        assert!(!h.check("plain", "password"), "plain text never logs in");
        assert!(!h.check("nobody", "password"));
        assert!(!h.is_slow("user"));
        // MD5-crypt with the original magic, from `openssl passwd -1 -salt saltsalt`.
        let (h, _) = Htpasswd::parse("u:$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/\n");
        assert!(h.check("u", "password"));
    }

    #[test]
    fn bcrypt_hashes_check() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let (h, skipped) = Htpasswd::parse(&format!("admin:{hash}\n"));
        assert!(skipped.is_empty());
        assert!(h.is_slow("admin"));
        assert!(h.check("admin", "s3cret"));
        assert!(!h.check("admin", "s3cret "));
        assert!(!format!("{h:?}").contains("$2"), "Debug shows no hash");
    }
}
