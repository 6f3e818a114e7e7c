//! WireGuard keys: 32 bytes, written as 44 characters of standard base64.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Why a string is not a WireGuard key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{0} characters long, a key has 44")]
    Length(usize),
    #[error("not base64")]
    NotBase64,
    #[error("decodes to {0} bytes, a key has 32")]
    Size(usize),
}

fn decode(s: &str) -> Result<[u8; 32], KeyError> {
    // Length first, so that a huge input is never decoded.
    if s.len() != 44 {
        return Err(KeyError::Length(s.chars().count()));
    }
    let bytes = STANDARD
        .decode(s.as_bytes())
        .map_err(|_| KeyError::NotBase64)?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Size(bytes.len()))
}

/// A key that may be secret (a private or a preshared key). Its `Debug`
/// never shows the material; `Display` does, since configurations need it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key([u8; 32]);

impl Key {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl FromStr for Key {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode(s).map(Self)
    }
}

/// A WireGuard public key: not secret, so `Debug` shows it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode(s).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

    #[test]
    fn round_trips_and_rejects() {
        let k: PublicKey = K.parse().unwrap();
        assert_eq!(k.to_string(), K);
        let s: Key = K.parse().unwrap();
        assert_eq!(s.to_string(), K);
        assert_eq!("xyz".parse::<Key>(), Err(KeyError::Length(3)));
        assert_eq!("".parse::<Key>(), Err(KeyError::Length(0)));
        // 44 characters of base64 without padding: 33 bytes.
        assert_eq!("A".repeat(44).parse::<Key>(), Err(KeyError::Size(33)));
        // 44 characters but not base64.
        assert_eq!("!".repeat(44).parse::<Key>(), Err(KeyError::NotBase64));
        // Non-canonical trailing bits are refused (wg refuses them too).
        assert!(
            "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmn="
                .parse::<Key>()
                .is_err()
        );
    }

    #[test]
    fn debug_hides_secret_material() {
        let s: Key = K.parse().unwrap();
        assert!(!format!("{s:?}").contains(&K[..8]));
        let p: PublicKey = K.parse().unwrap();
        assert!(format!("{p:?}").contains(K));
    }
}
