//! Trust in a suite: the OpenPGP signature on its `InRelease` (or on `Release`, by
//! `Release.gpg`), checked against an archive keyring before any hash the Release lists is
//! believed.
//!
//! A key is usable when it is not revoked and not expired; a subkey also needs a valid
//! binding signature from its primary key. A signature counts when it verifies with a
//! usable key, is not expired and was not made in the future. Keys a keyring holds that this
//! implementation cannot read (an old v3 key, an unknown algorithm) are skipped, as gpgv
//! does; a keyring with no readable key is an error.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use pgp::composed::{CleartextSignedMessage, Deserializable, DetachedSignature, SignedPublicKey};
use pgp::packet::{PublicSubkey, Signature};
use pgp::types::KeyDetails;
use serde::Serialize;

use super::DebianError;

/// A keyring larger than this is refused unread (Debian's whole archive keyring is 100 KiB).
const MAX_KEYRING_BYTES: usize = 8 << 20;
/// How far in the future a signature's creation time may lie (clocks drift).
const CLOCK_SKEW_SECS: u64 = 24 * 3600;

/// The OpenPGP public keys trusted to sign a suite's Release, and where they came from.
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
    origin: String,
}

/// Who signed a Release: the key that made the signature and the keyring that holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Signer {
    /// Fingerprint of the key (or subkey) that made the signature, upper-case hex.
    pub fingerprint: String,
    /// The first user id of its primary key.
    pub user_id: String,
    /// Where the keyring came from.
    pub keyring: String,
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}), from {}",
            self.fingerprint, self.user_id, self.keyring
        )
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `created + lifetime` has passed (a lifetime of zero means none).
fn lapsed(created: u32, lifetime: Option<pgp::types::Duration>, now: u64) -> bool {
    let secs = lifetime.map_or(0, |d| std::time::Duration::from(d).as_secs());
    secs != 0 && u64::from(created) + secs < now
}

/// The newest of `sigs` (by creation time) that says something about the key's lifetime.
fn newest(sigs: &[Signature]) -> Option<&Signature> {
    sigs.iter()
        .max_by_key(|s| s.created().map_or(0, |t| t.as_secs()))
}

impl Keyring {
    /// Reads a keyring: binary OpenPGP (a `.gpg` file) or ASCII-armored (`.asc`).
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Keyring, DebianError> {
        let bad = |message: String| DebianError::Keyring {
            origin: origin.to_string(),
            message,
        };
        if bytes.len() > MAX_KEYRING_BYTES {
            return Err(bad(format!(
                "{} bytes is more than a keyring may hold ({MAX_KEYRING_BYTES})",
                bytes.len()
            )));
        }
        let armored = bytes.starts_with(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
            || std::str::from_utf8(bytes)
                .is_ok_and(|t| t.contains("\n-----BEGIN PGP PUBLIC KEY BLOCK-----"));
        let parsed: Vec<_> = if armored {
            SignedPublicKey::from_armor_many(bytes)
                .map_err(|e| bad(e.to_string()))?
                .0
                .collect()
        } else {
            SignedPublicKey::from_bytes_many(bytes)
                .map_err(|e| bad(e.to_string()))?
                .collect()
        };
        let mut keys = Vec::new();
        for k in parsed {
            match k {
                Ok(k) => keys.push(k),
                Err(e) => log::debug!("{origin}: skipping a key that cannot be read: {e}"),
            }
        }
        if keys.is_empty() {
            return Err(bad("holds no OpenPGP public key".into()));
        }
        Ok(Keyring {
            keys,
            origin: origin.to_string(),
        })
    }

    /// Reads key files and trusts them all alike; the origin names every file.
    pub fn read_files(paths: &[&Path]) -> Result<Keyring, DebianError> {
        let origin = paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut keys = Vec::new();
        for p in paths {
            let bytes = std::fs::read(p).map_err(|e| DebianError::Keyring {
                origin: p.display().to_string(),
                message: e.to_string(),
            })?;
            keys.extend(Keyring::parse(&bytes, &p.display().to_string())?.keys);
        }
        Ok(Keyring { keys, origin })
    }

    /// Where the keys came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Fingerprints of the primary keys, upper-case hex.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| format!("{:X}", k.fingerprint()))
            .collect()
    }

    /// Verifies a clear-signed `InRelease` (`file` names it in errors) and returns the text
    /// that was signed, with `\n` line ends, and who signed it.
    pub fn verify_clearsigned(
        &self,
        text: &str,
        file: &str,
        now: SystemTime,
    ) -> Result<(String, Signer), DebianError> {
        let (msg, _) =
            CleartextSignedMessage::from_string(text).map_err(|e| DebianError::Unsigned {
                file: file.to_string(),
                message: format!("not a clear-signed OpenPGP message: {e}"),
            })?;
        let signed = msg.signed_text();
        let signer = self.check(msg.signatures(), signed.as_bytes(), file, now)?;
        Ok((signed.replace("\r\n", "\n"), signer))
    }

    /// Verifies `Release` bytes against its detached `Release.gpg` (armored or binary).
    pub fn verify_detached(
        &self,
        data: &[u8],
        signature: &[u8],
        file: &str,
        now: SystemTime,
    ) -> Result<Signer, DebianError> {
        let unsigned = |e: pgp::errors::Error| DebianError::Unsigned {
            file: file.to_string(),
            message: format!("its detached signature cannot be read: {e}"),
        };
        let sig = if signature.starts_with(b"-----BEGIN PGP SIGNATURE-----") {
            DetachedSignature::from_armor_single(signature)
                .map_err(unsigned)?
                .0
        } else {
            DetachedSignature::from_bytes(signature).map_err(unsigned)?
        };
        self.check(std::slice::from_ref(&sig.signature), data, file, now)
    }

    /// The first signature that verifies with a usable key of the keyring.
    fn check(
        &self,
        sigs: &[Signature],
        data: &[u8],
        file: &str,
        now: SystemTime,
    ) -> Result<Signer, DebianError> {
        let now = unix(now);
        let mut why = Vec::new();
        for sig in sigs {
            let created = sig.created().map_or(0, |t| t.as_secs());
            let issuer = sig
                .issuer_fingerprint()
                .first()
                .map(|f| format!("{f:X}"))
                .or_else(|| {
                    sig.issuer_key_id()
                        .first()
                        .map(|k| hex::encode_upper(k.as_ref()))
                })
                .unwrap_or_else(|| "an unnamed key".into());
            if u64::from(created) > now + CLOCK_SKEW_SECS {
                why.push(format!("{issuer}: made in the future"));
                continue;
            }
            if lapsed(created, sig.signature_expiration_time(), now) {
                why.push(format!("{issuer}: the signature has expired"));
                continue;
            }
            match self.key_for(sig, data, now) {
                Ok(signer) => return Ok(signer),
                Err(reason) => why.push(format!("{issuer}: {reason}")),
            }
        }
        if why.is_empty() {
            why.push("no signature at all".into());
        }
        Err(DebianError::BadSignature {
            file: file.to_string(),
            keyring: self.origin.clone(),
            message: why.join("; "),
        })
    }

    /// The usable key or subkey that `sig` verifies with, or why there is none.
    fn key_for(&self, sig: &Signature, data: &[u8], now: u64) -> Result<Signer, String> {
        let mut reason = "no key of the keyring made it".to_string();
        for key in &self.keys {
            let user_id = key
                .details
                .users
                .first()
                .and_then(|u| u.id.as_str().map(str::to_string))
                .unwrap_or_default();
            let signer = |fp: String| Signer {
                fingerprint: fp,
                user_id: user_id.clone(),
                keyring: self.origin.clone(),
            };
            let self_sigs: Vec<Signature> = key
                .details
                .users
                .iter()
                .flat_map(|u| u.signatures.iter().cloned())
                .chain(key.details.direct_signatures.iter().cloned())
                .collect();
            let primary_dead = if !key.details.revocation_signatures.is_empty() {
                Some("the key is revoked")
            } else if newest(&self_sigs)
                .is_some_and(|s| lapsed(key.created_at().as_secs(), s.key_expiration_time(), now))
            {
                Some("the key has expired")
            } else {
                None
            };
            if sig.verify(key, data).is_ok() {
                return match primary_dead {
                    None => Ok(signer(format!("{:X}", key.fingerprint()))),
                    Some(r) => Err(r.to_string()),
                };
            }
            for sub in &key.public_subkeys {
                if sig.verify(&sub.key, data).is_err() {
                    continue;
                }
                if let Some(r) = primary_dead {
                    reason = r.to_string();
                    continue;
                }
                match subkey_dead(key, &sub.key, &sub.signatures, now) {
                    None => return Ok(signer(format!("{:X}", sub.key.fingerprint()))),
                    Some(r) => reason = r.to_string(),
                }
            }
        }
        Err(reason)
    }
}

/// Why a subkey may not sign, if it may not: no valid binding, revoked, or expired.
fn subkey_dead(
    primary: &SignedPublicKey,
    sub: &PublicSubkey,
    sigs: &[Signature],
    now: u64,
) -> Option<&'static str> {
    use pgp::packet::SignatureType;
    let bindings: Vec<Signature> = sigs
        .iter()
        .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding))
        .filter(|s| s.verify_subkey_binding(&primary.primary_key, sub).is_ok())
        // A signing subkey must also sign back (else anyone could bind someone else's).
        .filter(|s| {
            s.embedded_signature().is_some_and(|b| {
                b.verify_primary_key_binding(sub, &primary.primary_key)
                    .is_ok()
            })
        })
        .cloned()
        .collect();
    let Some(binding) = newest(&bindings) else {
        return Some("the subkey has no valid binding (and back-signature) to its primary key");
    };
    if sigs
        .iter()
        .any(|s| s.typ() == Some(SignatureType::SubkeyRevocation))
    {
        return Some("the subkey is revoked");
    }
    if !binding.key_flags().sign() {
        return Some("the subkey is not for signing");
    }
    if lapsed(
        sub.created_at().as_secs(),
        binding.key_expiration_time(),
        now,
    ) {
        return Some("the subkey has expired");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyring_without_keys_is_refused_naming_it() {
        let err = Keyring::parse(b"not a key", "k.gpg").expect_err("no keys");
        assert!(err.to_string().contains("k.gpg"), "{err}");
        let err = Keyring::parse(&vec![0u8; MAX_KEYRING_BYTES + 1], "big.gpg").expect_err("big");
        assert!(err.to_string().contains("more than a keyring"), "{err}");
    }
}
