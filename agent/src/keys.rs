//! WireGuard keys: the node's key pair, generated on first start and kept in
//! `<state-dir>/private.key` (base64, mode 0600, written atomically), and the
//! [`Key`] type used for public and preshared keys everywhere else.
//!
//! The private key is never logged: [`KeyPair`]'s `Debug` prints only the
//! public key, and [`PrivateKey`]'s prints nothing of the secret.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// File name of the private key inside the state directory.
pub const PRIVATE_KEY_FILE: &str = "private.key";

/// A 32-byte WireGuard key that may be shown: a public key, or a preshared
/// key in a context where it is configuration (never logged by this crate).
///
/// `Display` and `FromStr` use base64, as `wg` and Kilo's annotations do.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// The all-zero key, which WireGuard uses for "no preshared key".
    pub const ZERO: Key = Key([0; 32]);

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, the form of WireGuard's userspace API.
    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }

    pub fn from_hex(s: &str) -> Result<Key, KeyParseError> {
        hex_decode_32(s).map(Key)
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    pub fn from_base64(s: &str) -> Result<Key, KeyParseError> {
        decode_base64_32(s).map(Key)
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.to_base64())
    }
}

impl FromStr for Key {
    type Err = KeyParseError;
    fn from_str(s: &str) -> Result<Key, KeyParseError> {
        Key::from_base64(s)
    }
}

impl From<[u8; 32]> for Key {
    fn from(b: [u8; 32]) -> Key {
        Key(b)
    }
}

/// Why a key string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    #[error("invalid base64 in key: {0}")]
    Base64(String),
    #[error("invalid hex in key")]
    Hex,
    #[error("a WireGuard key is 32 bytes, got {0}")]
    Length(usize),
}

/// A WireGuard private key. Its `Debug` hides the secret; the bytes are wiped
/// on drop (x25519-dalek's `zeroize`).
#[derive(Clone)]
pub struct PrivateKey(StaticSecret);

impl PrivateKey {
    /// A fresh random key, clamped as `wg genkey` does.
    pub fn generate() -> PrivateKey {
        let mut bytes = StaticSecret::random().to_bytes();
        clamp(&mut bytes);
        PrivateKey(StaticSecret::from(bytes))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> PrivateKey {
        PrivateKey(StaticSecret::from(bytes))
    }

    pub fn from_base64(s: &str) -> Result<PrivateKey, KeyParseError> {
        decode_base64_32(s).map(PrivateKey::from_bytes)
    }

    pub fn public_key(&self) -> Key {
        Key(PublicKey::from(&self.0).to_bytes())
    }

    /// The secret bytes, for handing to WireGuard only.
    pub fn secret_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// The secret in base64 (as `wg genkey` prints it), for writing the key
    /// file or a configuration the user asked for. Never log this.
    pub fn to_base64_secret(&self) -> String {
        BASE64.encode(self.0.as_bytes())
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        // Not constant time; keys are compared only against the device's.
        self.0.as_bytes() == other.0.as_bytes()
    }
}
impl Eq for PrivateKey {}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public {})", self.public_key())
    }
}

/// The node's key pair.
#[derive(Clone)]
pub struct KeyPair {
    private: PrivateKey,
    public: Key,
}

impl KeyPair {
    pub fn generate() -> KeyPair {
        KeyPair::from_private(PrivateKey::generate())
    }

    pub fn from_private(private: PrivateKey) -> KeyPair {
        let public = private.public_key();
        KeyPair { private, public }
    }

    pub fn public_key(&self) -> Key {
        self.public
    }

    pub fn private_key(&self) -> &PrivateKey {
        &self.private
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// Why the key file could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} does not hold a WireGuard private key: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: KeyParseError,
    },
    #[error(
        "{path} is readable or writable by group or others (mode {mode:03o}); \
         refusing to use it: run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
}

/// Loads `<state_dir>/private.key`, or generates a key pair and stores it
/// there (creating `state_dir` with mode 0700 if missing). Returns the pair
/// and whether it was newly generated.
pub fn load_or_generate(state_dir: &Path) -> Result<(KeyPair, bool), KeyFileError> {
    let path = state_dir.join(PRIVATE_KEY_FILE);
    match fs::symlink_metadata(&path) {
        Ok(_) => {
            let pair = load(&path)?;
            tracing::info!(path = %path.display(), public_key = %pair.public_key(), "loaded WireGuard key");
            Ok((pair, false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let pair = KeyPair::generate();
            store(state_dir, pair.private_key())?;
            tracing::info!(path = %path.display(), public_key = %pair.public_key(), "generated WireGuard key");
            Ok((pair, true))
        }
        Err(source) => Err(KeyFileError::Io {
            action: "inspecting",
            path,
            source,
        }),
    }
}

/// Reads a private key file (base64, surrounding whitespace allowed). Refuses
/// a file that group or others may read or write.
pub fn load(path: &Path) -> Result<KeyPair, KeyFileError> {
    let io_err = |action, source| KeyFileError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(|e| io_err("inspecting", e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| io_err("reading", e))?);
    let private = PrivateKey::from_base64(text.trim()).map_err(|source| KeyFileError::Parse {
        path: path.to_owned(),
        source,
    })?;
    Ok(KeyPair::from_private(private))
}

/// Writes `key` to `<state_dir>/private.key` atomically: a temporary file
/// created with mode 0600 in the same directory, synced, then renamed over.
pub fn store(state_dir: &Path, key: &PrivateKey) -> Result<(), KeyFileError> {
    let io_err = |action, path: &Path, source| KeyFileError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|e| io_err("creating directory", state_dir, e))?;
    let path = state_dir.join(PRIVATE_KEY_FILE);
    let tmp = state_dir.join(format!(".{PRIVATE_KEY_FILE}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let write = || -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask cannot widen 0600, but make sure of it anyway.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        let mut line = Zeroizing::new(key.to_base64_secret());
        line.push('\n');
        f.write_all(line.as_bytes())?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("writing", &tmp, e));
    }
    if let Err(e) = fs::rename(&tmp, &path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("renaming into place", &path, e));
    }
    // Make the rename durable.
    if let Ok(dir) = fs::File::open(state_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Clamps a Curve25519 secret as WireGuard (and `wg genkey`) does.
fn clamp(b: &mut [u8; 32]) {
    b[0] &= 248;
    b[31] &= 127;
    b[31] |= 64;
}

fn decode_base64_32(s: &str) -> Result<[u8; 32], KeyParseError> {
    let v = Zeroizing::new(
        BASE64
            .decode(s.trim())
            .map_err(|e| KeyParseError::Base64(e.to_string()))?,
    );
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| KeyParseError::Length(v.len()))
}

pub(crate) fn hex_encode(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(HEX[(x >> 4) as usize] as char);
        s.push(HEX[(x & 15) as usize] as char);
    }
    s
}

fn hex_decode_32(s: &str) -> Result<[u8; 32], KeyParseError> {
    let s = s.trim().as_bytes();
    if s.len() != 64 {
        return Err(if s.len().is_multiple_of(2) {
            KeyParseError::Length(s.len() / 2)
        } else {
            KeyParseError::Hex
        });
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(KeyParseError::Hex),
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(s[2 * i])? << 4) | nib(s[2 * i + 1])?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_then_loads_the_same_key_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (first, created) = load_or_generate(&state).unwrap();
        assert!(created);
        let path = state.join(PRIVATE_KEY_FILE);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let (second, created) = load_or_generate(&state).unwrap();
        assert!(!created);
        assert_eq!(first.public_key(), second.public_key());
        assert_eq!(first.private_key(), second.private_key());
        // No temporary file left behind.
        let names: Vec<_> = fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(PRIVATE_KEY_FILE)]);
    }

    #[test]
    fn generated_keys_are_clamped_and_distinct() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        assert_ne!(a, b);
        let s = a.secret_bytes();
        assert_eq!(s[0] & 7, 0);
        assert_eq!(s[31] & 0xc0, 0x40);
    }

    #[test]
    fn public_key_matches_wg_pubkey() {
        // Vector from RFC 7748 section 6.1 (Alice), the same computation as
        // `wg pubkey`.
        let private = PrivateKey::from_bytes(
            hex_decode_32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap(),
        );
        assert_eq!(
            private.public_key().to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn refuses_a_world_readable_key_file() {
        let dir = tempfile::tempdir().unwrap();
        load_or_generate(dir.path()).unwrap();
        let path = dir.path().join(PRIVATE_KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        match load_or_generate(dir.path()) {
            Err(KeyFileError::Permissions { mode, .. }) => assert_eq!(mode, 0o644),
            other => panic!("expected a permissions error, got {other:?}"),
        }
    }

    #[test]
    fn rejects_garbage_and_accepts_wg_genkey_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PRIVATE_KEY_FILE);
        let write = |text: &str| {
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        };
        write("not a key\n");
        assert!(matches!(
            load_or_generate(dir.path()),
            Err(KeyFileError::Parse { .. })
        ));
        write("AAAA\n");
        assert!(matches!(
            load(&path),
            Err(KeyFileError::Parse {
                source: KeyParseError::Length(3),
                ..
            })
        ));
        // `wg genkey` output: base64 with a trailing newline.
        write("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n");
        let pair = load(&path).unwrap();
        assert_eq!(
            pair.private_key().to_base64_secret(),
            "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
        );
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let pair = KeyPair::generate();
        let secret = pair.private_key().to_base64_secret();
        let shown = format!("{pair:?} {:?}", pair.private_key());
        assert!(!shown.contains(&secret), "{shown}");
        assert!(shown.contains(&pair.public_key().to_base64()));
    }

    #[test]
    fn key_text_round_trips() {
        let k = PrivateKey::generate().public_key();
        assert_eq!(Key::from_base64(&k.to_base64()).unwrap(), k);
        assert_eq!(Key::from_hex(&k.to_hex()).unwrap(), k);
        assert_eq!(k.to_string().parse::<Key>().unwrap(), k);
        assert!(Key::from_hex("zz").is_err());
    }
}
