//! Personal data at rest: XChaCha20-Poly1305 encryption bound to table/column/row, and HMAC
//! blind indexes for exact lookup without storing the value.
//!
//! One 32-byte master key (a key file or `EPIGRID_KEY`) derives independent keys for encryption,
//! for the blind indexes and for hashing bearer tokens, so no key is used for two purposes.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// Length in bytes of a stored blind index (HMAC-SHA256 truncated to 128 bits).
pub const INDEX_LEN: usize = 16;
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the key must be 64 hexadecimal characters (32 bytes)")]
    BadKey,
    #[error("key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("a stored value could not be decrypted (wrong key or tampered data)")]
    Decrypt,
}

#[derive(Clone)]
pub struct Vault {
    cipher: XChaCha20Poly1305,
    index_key: [u8; 32],
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(..)")
    }
}

fn derive(master: &[u8; 32], label: &str) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(master).expect("HMAC takes any key length");
    mac.update(label.as_bytes());
    mac.finalize().into_bytes().into()
}

impl Vault {
    pub fn new(master: &[u8; 32]) -> Vault {
        let enc = derive(master, "epigrid/v1/encryption");
        Vault {
            cipher: XChaCha20Poly1305::new(&enc.into()),
            index_key: derive(master, "epigrid/v1/blind-index"),
        }
    }

    /// Parses a 64-character hex key.
    pub fn from_hex(hex_key: &str) -> Result<Vault, VaultError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| VaultError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| VaultError::BadKey)?;
        Ok(Vault::new(&key))
    }

    /// Reads the key file, creating it with a fresh random key (mode 0600) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Vault, VaultError> {
        let io = |source| VaultError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(s) => Vault::from_hex(&s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let mut key = [0u8; 32];
                getrandom::getrandom(&mut key).map_err(|e| io(std::io::Error::other(e.to_string())))?;
                write_private(path, &hex::encode(key)).map_err(io)?;
                Ok(Vault::new(&key))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// A blind index of `value` for `purpose` (e.g. `"doc:cn_id"`, `"phone"`): equal inputs give
    /// equal indexes, and without the key nothing about the value can be learnt from it.
    pub fn blind_index(&self, purpose: &str, value: &str) -> Vec<u8> {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.index_key).expect("HMAC takes any key");
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        mac.finalize().into_bytes()[..INDEX_LEN].to_vec()
    }

    /// Encrypts `plaintext`; `ad` binds the ciphertext to where it is stored
    /// (`"persons.doc:<id>"`), so a value copied to another row or column fails to decrypt.
    pub fn seal(&self, ad: &str, plaintext: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        // getrandom only fails if the OS has no entropy source at all, which we cannot work
        // around; refusing to encrypt with a zero nonce is the safe choice.
        getrandom::getrandom(&mut nonce).expect("the operating system provides randomness");
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: ad.as_bytes(),
                },
            )
            .expect("encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    pub fn open(&self, ad: &str, sealed: &[u8]) -> Result<String, VaultError> {
        if sealed.len() < NONCE_LEN {
            return Err(VaultError::Decrypt);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let pt = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: ad.as_bytes(),
                },
            )
            .map_err(|_| VaultError::Decrypt)?;
        String::from_utf8(pt).map_err(|_| VaultError::Decrypt)
    }
}

/// SHA-256 of a bearer/session token: only this is stored, so a database leak yields no sessions.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A random URL-safe token with `bytes` bytes of entropy (hex encoded).
pub fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).expect("the operating system provides randomness");
    hex::encode(b)
}

/// A random integer below `n` (for short verification codes).
pub fn random_below(n: u32) -> u32 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("the operating system provides randomness");
    (u64::from_le_bytes(b) % u64::from(n.max(1))) as u32
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> Vault {
        Vault::new(&[7u8; 32])
    }

    #[test]
    fn sealed_values_open_only_with_the_same_binding() {
        let v = vault();
        let sealed = v.seal("persons.doc:1", "11010519491231002X");
        assert!(!sealed
            .windows(18)
            .any(|w| w == b"11010519491231002X".as_slice()));
        assert_eq!(v.open("persons.doc:1", &sealed).unwrap(), "11010519491231002X");
        assert!(v.open("persons.doc:2", &sealed).is_err());
        assert!(Vault::new(&[8u8; 32]).open("persons.doc:1", &sealed).is_err());
        assert!(v.open("persons.doc:1", &sealed[..10]).is_err());
        // fresh nonce each time
        assert_ne!(sealed, v.seal("persons.doc:1", "11010519491231002X"));
    }

    #[test]
    fn blind_index_is_deterministic_keyed_and_purpose_bound() {
        let v = vault();
        let a = v.blind_index("doc:cn_id", "11010519491231002X");
        assert_eq!(a.len(), INDEX_LEN);
        assert_eq!(a, v.blind_index("doc:cn_id", "11010519491231002X"));
        assert_ne!(a, v.blind_index("phone", "11010519491231002X"));
        assert_ne!(a, Vault::new(&[9u8; 32]).blind_index("doc:cn_id", "11010519491231002X"));
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("epigrid-vault-{}", random_token(6)));
        let path = dir.join("k.key");
        let v1 = Vault::load_or_create(&path).unwrap();
        let v2 = Vault::load_or_create(&path).unwrap();
        assert_eq!(v1.blind_index("x", "y"), v2.blind_index("x", "y"));
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(Vault::load_or_create(&path), Err(VaultError::BadKey)));
        let _ = std::fs::remove_dir_all(dir);
    }
}
