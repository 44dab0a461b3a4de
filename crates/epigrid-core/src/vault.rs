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
    /// Says the I/O error itself (not as a `source`, so a chain of causes does not say it
    /// twice).
    #[error("key file {path}: {cause}")]
    KeyFile { path: String, cause: std::io::Error },
    #[error("a stored value could not be decrypted (wrong key or tampered data)")]
    Decrypt,
}

#[derive(Clone)]
pub struct Vault {
    cipher: XChaCha20Poly1305,
    /// HMAC keyed with the blind-index key, cloned per use (saves re-hashing the key pads).
    index_mac: HmacSha256,
    /// Recent ciphertexts and indexes by a key that fixes both the value and its binding (see
    /// [`Vault::memo`]): a returning person's numbers are not encrypted again.
    memo: std::sync::Arc<std::sync::Mutex<Memo>>,
}

type Memo = std::collections::HashMap<
    [u8; 32],
    Vec<u8>,
    std::hash::BuildHasherDefault<crate::trace::IdHasher>,
>;

/// Values kept by [`Vault::memo`] before it starts over.
const MEMO_MAX: usize = 100_000;

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
            index_mac: <HmacSha256 as Mac>::new_from_slice(&derive(
                master,
                "epigrid/v1/blind-index",
            ))
            .expect("HMAC takes any key length"),
            memo: Default::default(),
        }
    }

    /// Parses a 64-character hex key.
    pub fn from_hex(hex_key: &str) -> Result<Vault, VaultError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| VaultError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| VaultError::BadKey)?;
        // all zeros is a placeholder left in a configuration, not a secret
        if key.iter().all(|b| *b == 0) {
            return Err(VaultError::BadKey);
        }
        Ok(Vault::new(&key))
    }

    /// Reads the key file, creating it with a fresh random key (mode 0600) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Vault, VaultError> {
        let io = |cause| VaultError::KeyFile {
            path: path.display().to_string(),
            cause,
        };
        match std::fs::read_to_string(path) {
            Ok(s) => Vault::from_hex(&s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let mut key = [0u8; 32];
                getrandom::getrandom(&mut key)
                    .map_err(|e| io(std::io::Error::other(e.to_string())))?;
                write_private(path, &hex::encode(key)).map_err(io)?;
                Ok(Vault::new(&key))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// A value that tells this key from any other without revealing it (an HMAC of a fixed
    /// text), recorded in the database so that a server started with another key refuses to
    /// run instead of sealing new data with it and failing to read the old.
    pub fn key_check(&self) -> Vec<u8> {
        self.index_parts("key-check", &["epigrid"]).to_vec()
    }

    /// A blind index of `value` for `purpose` (e.g. `"doc:cn_id"`, `"phone"`): equal inputs give
    /// equal indexes, and without the key nothing about the value can be learnt from it.
    pub fn blind_index(&self, purpose: &str, value: &str) -> Vec<u8> {
        self.index_parts(purpose, &[value])[..INDEX_LEN].to_vec()
    }

    /// The full MAC behind [`Vault::blind_index`] of the concatenation of `parts`, without
    /// allocating (the hot path of list matching).
    pub fn index_parts(&self, purpose: &str, parts: &[&str]) -> [u8; 32] {
        let mut mac = self.index_mac.clone();
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        for p in parts {
            mac.update(p.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    /// Encrypts `plaintext`; `ad` binds the ciphertext to where it is stored
    /// (`"persons.doc:<id>"`), so a value copied to another row or column fails to decrypt.
    pub fn seal(&self, ad: &str, plaintext: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
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

    /// What `make(i)` makes for `keys[i]` (`None`: nothing wanted there), made once while
    /// the memo keeps it: a returning person's ciphertexts and indexes are not made again.
    /// The keys are looked up together, under one lock of the memo every worker shares. Only
    /// ciphertexts and blind indexes are kept, never a plaintext, and a key must determine
    /// what is made for it, value and binding alike (e.g. a person id and the value's blind
    /// index): a ciphertext handed back is then one this vault made for exactly that value,
    /// so nothing is encrypted twice under one nonce.
    pub fn memo<const N: usize>(
        &self,
        keys: [Option<[u8; 32]>; N],
        make: impl Fn(usize) -> Option<Vec<u8>>,
    ) -> [Option<Vec<u8>>; N] {
        let mut out: [Option<Vec<u8>>; N] = std::array::from_fn(|_| None);
        if let Ok(m) = self.memo.lock() {
            for (o, k) in out.iter_mut().zip(&keys) {
                *o = k.as_ref().and_then(|k| m.get(k).cloned());
            }
        }
        let mut made: [Option<([u8; 32], Vec<u8>)>; N] = std::array::from_fn(|_| None);
        for (i, ((o, k), m)) in out.iter_mut().zip(&keys).zip(&mut made).enumerate() {
            if let (None, Some(k)) = (&o, k) {
                if let Some(v) = make(i) {
                    *o = Some(v.clone());
                    *m = Some((*k, v));
                }
            }
        }
        if made.iter().any(Option::is_some) {
            if let Ok(mut m) = self.memo.lock() {
                for (k, v) in made.into_iter().flatten() {
                    if m.len() >= MEMO_MAX {
                        m.clear();
                    }
                    m.insert(k, v);
                }
            }
        }
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

/// Fills `buf` with bytes from the operating system's CSPRNG.
///
/// Bytes are read from the OS 4 KiB at a time into a per-thread buffer and each byte is handed
/// out once, so the registration path costs one `getrandom` system call per ~100 requests
/// instead of several per request. getrandom only fails if the OS has no entropy source at
/// all; refusing to go on (rather than using weak nonces) is the only safe choice then.
pub fn fill_random(buf: &mut [u8]) {
    use std::cell::RefCell;
    const POOL: usize = 4096;
    thread_local! {
        static BUF: RefCell<(Box<[u8; POOL]>, usize)> = RefCell::new((Box::new([0u8; POOL]), POOL));
    }
    if buf.len() > POOL / 4 {
        getrandom::getrandom(buf).expect("the operating system provides randomness");
        return;
    }
    BUF.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (pool, used) = &mut *guard;
        if *used + buf.len() > POOL {
            getrandom::getrandom(&mut pool[..]).expect("the operating system provides randomness");
            *used = 0;
        }
        buf.copy_from_slice(&pool[*used..*used + buf.len()]);
        // wipe what was handed out so it cannot be handed out again or read later
        pool[*used..*used + buf.len()].fill(0);
        *used += buf.len();
    });
}

/// A random URL-safe token with `bytes` bytes of entropy (hex encoded).
pub fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    fill_random(&mut b);
    hex::encode(b)
}

/// A random integer below `n` (for short verification codes), without modulo bias.
pub fn random_below(n: u32) -> u32 {
    let n = u64::from(n.max(1));
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let mut b = [0u8; 8];
        fill_random(&mut b);
        let v = u64::from_le_bytes(b);
        if v < zone {
            return (v % n) as u32;
        }
    }
}

/// A new time-ordered id (UUIDv7) whose random bits come from [`fill_random`].
pub fn new_id() -> uuid::Uuid {
    let mut r = [0u8; 10];
    fill_random(&mut r);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(ms, &r).into_uuid()
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
        assert_eq!(
            v.open("persons.doc:1", &sealed).unwrap(),
            "11010519491231002X"
        );
        assert!(v.open("persons.doc:2", &sealed).is_err());
        assert!(Vault::new(&[8u8; 32])
            .open("persons.doc:1", &sealed)
            .is_err());
        assert!(v.open("persons.doc:1", &sealed[..10]).is_err());
        // fresh nonce each time
        assert_ne!(sealed, v.seal("persons.doc:1", "11010519491231002X"));
    }

    #[test]
    fn memoised_seals_are_reused_only_for_their_key() {
        let v = vault();
        let seal_memo = |key: [u8; 32]| {
            let [sealed] = v.memo([Some(key)], |_| Some(v.seal("persons.doc:x", "secret")));
            sealed.unwrap()
        };
        let a = seal_memo([1; 32]);
        assert_eq!(a, seal_memo([1; 32]));
        assert_eq!(v.open("persons.doc:x", &a).unwrap(), "secret");
        let b = seal_memo([2; 32]);
        assert_ne!(a, b, "another key is sealed afresh");
        assert_eq!(v.open("persons.doc:x", &b).unwrap(), "secret");
    }

    #[test]
    fn memo_makes_only_what_is_missing_and_keeps_it() {
        let v = vault();
        let made = std::cell::Cell::new(0);
        let make = |i: usize| {
            made.set(made.get() + 1);
            (i != 2).then(|| vec![i as u8; 3])
        };
        let first = v.memo([Some([7; 32]), None, Some([8; 32])], make);
        // made for each key wanted and missing (none for `None`); what is not made is not kept
        assert_eq!(first, [Some(vec![0; 3]), None, None]);
        assert_eq!(made.get(), 1 + 1);
        let again = v.memo([Some([8; 32]), Some([7; 32])], |i| Some(vec![9 + i as u8]));
        assert_eq!(
            again,
            [Some(vec![9]), Some(vec![0; 3])],
            "a kept value is not made again"
        );
        assert_eq!(
            v.memo([Some([7; 32])], |_| Some(Vec::new())),
            [Some(vec![0; 3])]
        );
    }

    #[test]
    fn blind_index_is_deterministic_keyed_and_purpose_bound() {
        let v = vault();
        let a = v.blind_index("doc:cn_id", "11010519491231002X");
        assert_eq!(a.len(), INDEX_LEN);
        assert_eq!(a, v.blind_index("doc:cn_id", "11010519491231002X"));
        assert_ne!(a, v.blind_index("phone", "11010519491231002X"));
        assert_ne!(
            a,
            Vault::new(&[9u8; 32]).blind_index("doc:cn_id", "11010519491231002X")
        );
    }

    #[test]
    fn random_helpers_give_fresh_values() {
        let a: std::collections::HashSet<String> = (0..2000).map(|_| random_token(16)).collect();
        assert_eq!(a.len(), 2000);
        let ids: Vec<uuid::Uuid> = (0..100).map(|_| new_id()).collect();
        assert!(ids.iter().all(|i| i.get_version_num() == 7));
        assert!(ids.windows(2).all(|w| w[0] != w[1]));
        let mut counts = [0u32; 7];
        for _ in 0..7000 {
            counts[random_below(7) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
        let mut big = [0u8; 2000];
        fill_random(&mut big);
        assert!(big.iter().any(|b| *b != 0));
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("epigrid-vault-{}", random_token(6)));
        let path = dir.join("k.key");
        let v1 = Vault::load_or_create(&path).unwrap();
        let v2 = Vault::load_or_create(&path).unwrap();
        assert_eq!(v1.blind_index("x", "y"), v2.blind_index("x", "y"));
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(
            Vault::load_or_create(&path),
            Err(VaultError::BadKey)
        ));
        std::fs::write(&path, "00".repeat(32)).unwrap();
        assert!(
            matches!(Vault::load_or_create(&path), Err(VaultError::BadKey)),
            "an all-zero key is a placeholder"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
