//! Secrets at rest: AES-256-GCM under a key ring. Each stored value names the key that sealed
//! it (`v1.<key id>.<nonce>.<ciphertext>`, base64), so keys can rotate: new writes use the
//! active key, old values stay readable while their key is in the ring. The tenant and the
//! field are bound in as associated data, so a sealed value cannot be moved to another row
//! or column.

use std::collections::HashMap;
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use secrecy::{ExposeSecret, SecretString};

/// The key ring.
#[derive(Clone)]
pub struct Cipher {
    active: String,
    keys: HashMap<String, Aes256Gcm>,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Cipher(active={}, keys={})",
            self.active,
            self.keys.len()
        )
    }
}

/// A development key ring (documented; never for production).
pub const DEV_KEYS: &str = "dev1:ZGV2LW9ubHktc2VjcmV0LWtleS0zMi1ieXRlcyEhISE=";

impl Cipher {
    /// Parses `kid:base64key` entries separated by `;` and picks the active key id.
    ///
    /// # Errors
    /// Names the setting and the entry (never the key material).
    pub fn from_settings(spec: &str, active: &str) -> Result<Self, String> {
        let mut keys = HashMap::new();
        for (i, entry) in spec
            .split(';')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let (kid, b64) = entry
                .split_once(':')
                .ok_or_else(|| format!("crypto.keys: entry {} must be key_id:base64_key", i + 1))?;
            if kid.is_empty()
                || !kid
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!(
                    "crypto.keys: entry {}: key id must be letters, digits, _ or -",
                    i + 1
                ));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .or_else(|_| B64.decode(b64.trim()))
                .map_err(|_| format!("crypto.keys: entry {} ({kid}): key is not base64", i + 1))?;
            if raw.len() != 32 {
                return Err(format!(
                    "crypto.keys: entry {} ({kid}): key must be 32 bytes, got {}",
                    i + 1,
                    raw.len()
                ));
            }
            let cipher = Aes256Gcm::new_from_slice(&raw)
                .map_err(|_| format!("crypto.keys: entry {}: bad key", i + 1))?;
            keys.insert(kid.to_owned(), cipher);
        }
        let active = if active.is_empty() {
            spec.split(';')
                .next()
                .and_then(|e| e.split_once(':'))
                .map(|(k, _)| k.trim().to_owned())
                .unwrap_or_default()
        } else {
            active.to_owned()
        };
        if !keys.contains_key(&active) {
            return Err(format!(
                "crypto.active_key_id: {active:?} is not in crypto.keys"
            ));
        }
        Ok(Self { active, keys })
    }

    /// The id of the key new values are sealed with.
    pub fn active_key_id(&self) -> &str {
        &self.active
    }

    /// Seals `plain` for (`tenant`, `field`).
    ///
    /// # Errors
    /// Only if encryption itself fails (it does not for AES-GCM with valid inputs).
    pub fn seal(&self, plain: &SecretString, tenant: &str, field: &str) -> Result<String, String> {
        let cipher = self.keys.get(&self.active).ok_or("active key missing")?;
        let nonce_bytes: [u8; 12] = rand::random();
        let aad = format!("{tenant}\u{1f}{field}");
        let ct = cipher
            .encrypt(
                &Nonce::from(nonce_bytes),
                Payload {
                    msg: plain.expose_secret().as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| "encryption failed".to_owned())?;
        Ok(format!(
            "v1.{}.{}.{}",
            self.active,
            B64.encode(nonce_bytes),
            B64.encode(ct)
        ))
    }

    /// Opens a value sealed for (`tenant`, `field`).
    ///
    /// # Errors
    /// When the format is wrong, the key id is unknown, or the value was tampered with or moved.
    pub fn open(&self, sealed: &str, tenant: &str, field: &str) -> Result<SecretString, String> {
        let mut parts = sealed.split('.');
        let (Some("v1"), Some(kid), Some(nonce), Some(ct), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(format!("{field}: stored secret has an unknown format"));
        };
        let cipher = self.keys.get(kid).ok_or_else(|| {
            format!("{field}: sealed with key {kid:?}, which is not in crypto.keys")
        })?;
        let nonce = B64
            .decode(nonce)
            .map_err(|_| format!("{field}: corrupt nonce"))?;
        let ct = B64
            .decode(ct)
            .map_err(|_| format!("{field}: corrupt ciphertext"))?;
        let nonce: [u8; 12] = nonce
            .try_into()
            .map_err(|_| format!("{field}: corrupt nonce"))?;
        let aad = format!("{tenant}\u{1f}{field}");
        let plain = cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| {
                format!("{field}: cannot decrypt (wrong key, tampered, or moved between rows)")
            })?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| format!("{field}: decrypted value is not UTF-8"))
    }

    /// The key id a sealed value names.
    pub fn key_id_of(sealed: &str) -> Option<&str> {
        sealed.split('.').nth(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K2: &str = "k2:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn seals_opens_and_binds_row_and_field() {
        let c = Cipher::from_settings(DEV_KEYS, "").expect("dev keys");
        let s = SecretString::from("0123456789abcdef0123456789abcdef");
        let sealed = c.seal(&s, "t1", "access_token").expect("seal");
        assert!(!sealed.contains("0123456789abcdef"));
        assert_eq!(
            c.open(&sealed, "t1", "access_token")
                .expect("open")
                .expose_secret(),
            s.expose_secret()
        );
        assert!(
            c.open(&sealed, "t2", "access_token").is_err(),
            "moved to another tenant"
        );
        assert!(
            c.open(&sealed, "t1", "access_key").is_err(),
            "moved to another field"
        );
        let mut tampered = sealed.clone();
        tampered.pop();
        assert!(c.open(&tampered, "t1", "access_token").is_err());
    }

    #[test]
    fn rotation_keeps_old_values_readable() {
        let old = Cipher::from_settings(DEV_KEYS, "dev1").expect("old");
        let sealed = old
            .seal(&SecretString::from("secret"), "t", "f")
            .expect("seal");
        let both = Cipher::from_settings(&format!("{DEV_KEYS};{K2}"), "k2").expect("ring");
        assert_eq!(
            both.open(&sealed, "t", "f")
                .expect("old key still works")
                .expose_secret(),
            "secret"
        );
        let resealed = both
            .seal(&SecretString::from("secret"), "t", "f")
            .expect("seal");
        assert_eq!(Cipher::key_id_of(&resealed), Some("k2"));
        assert!(old.open(&resealed, "t", "f").is_err());
    }

    #[test]
    fn bad_settings_name_the_setting() {
        assert!(
            Cipher::from_settings("nokey", "")
                .expect_err("format")
                .starts_with("crypto.keys")
        );
        assert!(
            Cipher::from_settings("a:c2hvcnQ", "")
                .expect_err("short")
                .contains("32 bytes")
        );
        assert!(
            Cipher::from_settings(DEV_KEYS, "zz")
                .expect_err("active")
                .starts_with("crypto.active_key_id")
        );
    }
}
