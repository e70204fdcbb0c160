//! Who may write what: records authenticated with a `hitl-auth` header, and the keys that are
//! trusted to sign them (docs/trust.md).
//!
//! A writer signs the exact bytes it produces — the record's key and value, behind a domain string
//! naming the record's kind — and sends the signature in the `hitl-auth` header:
//!
//! ```text
//! hitl-auth: <algorithm>:<key_id>:<signature, lower-case hex>
//! signed bytes: "hitl-auth/v1/<kind>\n" ‖ u32 big-endian length of the key ‖ key ‖ value
//! ```
//!
//! `algorithm` is `hmac-sha256` (a secret shared with the verifying service: cheap, for the hot
//! path — publishers, services, reviewer apps with a secret) or `ed25519` (a public key: gateways,
//! whose private key never leaves them). The domain string keeps a signature for one kind of record
//! from being accepted as another; covering the key binds a roster tombstone to the reviewer it
//! deletes. A verified signature says which trusted key wrote the record; the key's [`Grant`] says
//! what that key may write (a reviewer key: only its reviewer, with the roles listed here).

use std::{collections::HashMap, fmt, path::PathBuf};

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Secret;

/// The header that carries a record's signature.
pub const HEADER: &str = "hitl-auth";

/// What a signature is for: part of the signed bytes, so one kind's signature is not another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A decision on `hitl.decisions`, signed by its publisher.
    Decision,
    /// A review request on `hitl.review-requests`, signed by the router.
    ReviewRequest,
    /// A verdict on `hitl.verdicts`, signed by a reviewer app or a reviewer gateway.
    Verdict,
    /// A roster entry (or its tombstone) on `hitl.reviewers`.
    Reviewer,
    /// A lifecycle event on `hitl.lifecycle`, signed by the service that saw it happen.
    Lifecycle,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decision => "decision",
            Self::ReviewRequest => "review-request",
            Self::Verdict => "verdict",
            Self::Reviewer => "reviewer",
            Self::Lifecycle => "lifecycle",
        }
    }
}

/// The bytes a signature covers (module doc).
pub fn signed_bytes(kind: Kind, key: Option<&[u8]>, value: Option<&[u8]>) -> Vec<u8> {
    let key = key.unwrap_or_default();
    let value = value.unwrap_or_default();
    let mut bytes = Vec::with_capacity(32 + key.len() + value.len());
    bytes.extend_from_slice(b"hitl-auth/v1/");
    bytes.extend_from_slice(kind.as_str().as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(&(key.len() as u32).to_be_bytes());
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(value);
    bytes
}

/// Feeds the signed bytes of a record to `mac` piece by piece (no copy of the value).
fn mac_signed_bytes(mac: &mut Hmac<Sha256>, kind: Kind, key: Option<&[u8]>, value: Option<&[u8]>) {
    let key = key.unwrap_or_default();
    mac.update(b"hitl-auth/v1/");
    mac.update(kind.as_str().as_bytes());
    mac.update(b"\n");
    mac.update(&(key.len() as u32).to_be_bytes());
    mac.update(key);
    mac.update(value.unwrap_or_default());
}

/// A signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algorithm {
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "ed25519")]
    Ed25519,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::Ed25519 => "ed25519",
        }
    }
}

/// What a trusted key may write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Grant {
    /// A reviewer gateway or identity bridge: verdicts and roster entries for any reviewer, with
    /// the roles it read from the identity provider.
    Gateway,
    /// One reviewer's own app: verdicts and the roster entry of `reviewer_id` only, with at most
    /// `roles` (the roles are granted here, by whoever writes this file, never by the app).
    Reviewer {
        reviewer_id: String,
        #[serde(default)]
        roles: Vec<String>,
    },
    /// A publisher: decisions whose `producer` is one of `producers`.
    Publisher { producers: Vec<String> },
    /// A hitl service: lifecycle events whose `service` is `service`.
    Service { service: String },
}

/// Why a record is not authenticated. `reason()` is the low-cardinality label of metrics and
/// rejection records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No `hitl-auth` header.
    Missing,
    /// A header that is not `<algorithm>:<key_id>:<hex>`.
    Malformed(String),
    /// Signed with a key this service does not trust.
    UnknownKey(String),
    /// The signature does not match the record (forged or altered).
    BadSignature(String),
    /// A trusted key, but it may not write this (another reviewer, a role it was not granted).
    NotAllowed(String),
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "unauthenticated",
            Self::Malformed(_) => "unauthenticated",
            Self::UnknownKey(_) => "unknown_key",
            Self::BadSignature(_) => "bad_signature",
            Self::NotAllowed(_) => "not_allowed",
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => write!(f, "no {HEADER} header: the record is not signed"),
            Self::Malformed(why) => write!(f, "malformed {HEADER} header: {why}"),
            Self::UnknownKey(key_id) => write!(f, "signed with untrusted key `{key_id}`"),
            Self::BadSignature(key_id) => {
                write!(
                    f,
                    "the signature by key `{key_id}` does not match the record"
                )
            }
            Self::NotAllowed(why) => write!(f, "not allowed: {why}"),
        }
    }
}

impl std::error::Error for AuthError {}

enum SecretKey {
    Hmac(Hmac<Sha256>),
    Ed25519(Box<SigningKey>),
}

/// A key this process signs with.
pub struct Signer {
    key_id: String,
    key: SecretKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(key_id: &str, algorithm: Algorithm, secret: &[u8]) -> Result<Self, String> {
        check_key_id(key_id)?;
        let key = match algorithm {
            Algorithm::HmacSha256 => {
                if secret.len() < 32 {
                    return Err(format!(
                        "an hmac-sha256 secret must have at least 32 bytes (has {})",
                        secret.len()
                    ));
                }
                SecretKey::Hmac(Hmac::new_from_slice(secret).expect("any length"))
            }
            Algorithm::Ed25519 => {
                let bytes: [u8; 32] = secret.try_into().map_err(|_| {
                    format!("an ed25519 secret key has 32 bytes (has {})", secret.len())
                })?;
                SecretKey::Ed25519(Box::new(SigningKey::from_bytes(&bytes)))
            }
        };
        Ok(Self {
            key_id: key_id.to_owned(),
            key,
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The `hitl-auth` header value for a record of `kind` with `key` and `value`.
    pub fn sign(&self, kind: Kind, key: Option<&[u8]>, value: Option<&[u8]>) -> String {
        let (algorithm, signature) = match &self.key {
            SecretKey::Hmac(mac) => {
                let mut mac = mac.clone();
                mac_signed_bytes(&mut mac, kind, key, value);
                (
                    Algorithm::HmacSha256,
                    hex::encode(mac.finalize().into_bytes()),
                )
            }
            SecretKey::Ed25519(secret) => {
                let bytes = signed_bytes(kind, key, value);
                (
                    Algorithm::Ed25519,
                    hex::encode(secret.sign(&bytes).to_bytes()),
                )
            }
        };
        format!("{}:{}:{signature}", algorithm.as_str(), self.key_id)
    }

    /// The public key of an ed25519 signer (hex), for the verifier's key file.
    pub fn public_key_hex(&self) -> Option<String> {
        match &self.key {
            SecretKey::Ed25519(key) => Some(hex::encode(key.verifying_key().to_bytes())),
            SecretKey::Hmac(_) => None,
        }
    }
}

fn check_key_id(key_id: &str) -> Result<(), String> {
    if key_id.is_empty()
        || key_id.len() > 128
        || !key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@/".contains(&b))
    {
        return Err(format!(
            "key_id `{}` must be 1 to 128 characters of A-Z a-z 0-9 - _ . @ /",
            key_id.escape_debug()
        ));
    }
    Ok(())
}

enum PublicKey {
    Hmac(Hmac<Sha256>),
    Ed25519(VerifyingKey),
}

/// A key this process trusts, and what it may write.
pub struct TrustedKey {
    pub key_id: String,
    pub grant: Grant,
    key: PublicKey,
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedKey")
            .field("key_id", &self.key_id)
            .field("grant", &self.grant)
            .finish_non_exhaustive()
    }
}

impl TrustedKey {
    /// Whether this key may write for reviewer `reviewer_id`.
    pub fn may_act_for(&self, reviewer_id: &str) -> Result<(), AuthError> {
        match &self.grant {
            Grant::Gateway => Ok(()),
            Grant::Reviewer {
                reviewer_id: own, ..
            } if own == reviewer_id => Ok(()),
            Grant::Reviewer {
                reviewer_id: own, ..
            } => Err(AuthError::NotAllowed(format!(
                "key `{}` belongs to reviewer `{own}`, not `{reviewer_id}`",
                self.key_id
            ))),
            other => Err(AuthError::NotAllowed(format!(
                "key `{}` is a {} key, not a reviewer's or a gateway's",
                self.key_id,
                grant_name(other)
            ))),
        }
    }

    /// Whether this key may claim `roles` (a gateway any; a reviewer key those it was granted).
    pub fn may_claim_roles<'a>(
        &self,
        roles: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), AuthError> {
        let Grant::Reviewer {
            roles: granted,
            reviewer_id,
        } = &self.grant
        else {
            return Ok(());
        };
        let missing: Vec<&str> = roles
            .into_iter()
            .filter(|role| !granted.contains(role))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(AuthError::NotAllowed(format!(
                "reviewer `{reviewer_id}` claims roles not granted to key `{}`: {}",
                self.key_id,
                missing.join(", ")
            )))
        }
    }

    /// Whether this key may publish decisions as `producer`.
    pub fn may_publish_as(&self, producer: &str) -> Result<(), AuthError> {
        match &self.grant {
            Grant::Publisher { producers } if producers.iter().any(|p| p == producer) => Ok(()),
            Grant::Publisher { .. } => Err(AuthError::NotAllowed(format!(
                "key `{}` may not publish as producer `{producer}`",
                self.key_id
            ))),
            other => Err(AuthError::NotAllowed(format!(
                "key `{}` is a {} key, not a publisher's",
                self.key_id,
                grant_name(other)
            ))),
        }
    }

    /// Whether this key may write events of `service`.
    pub fn may_speak_for(&self, service: &str) -> Result<(), AuthError> {
        match &self.grant {
            Grant::Service { service: own } if own == service => Ok(()),
            other => Err(AuthError::NotAllowed(format!(
                "key `{}` ({}) may not write events of service `{service}`",
                self.key_id,
                grant_name(other)
            ))),
        }
    }
}

fn grant_name(grant: &Grant) -> &'static str {
    match grant {
        Grant::Gateway => "gateway",
        Grant::Reviewer { .. } => "reviewer",
        Grant::Publisher { .. } => "publisher",
        Grant::Service { .. } => "service",
    }
}

/// The keys a service trusts, by key id.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: HashMap<String, TrustedKey>,
}

impl KeySet {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn get(&self, key_id: &str) -> Option<&TrustedKey> {
        self.keys.get(key_id)
    }

    pub fn keys(&self) -> impl Iterator<Item = &TrustedKey> {
        self.keys.values()
    }

    /// Adds a key (replacing one with the same id).
    pub fn insert_hmac(&mut self, key_id: &str, secret: &[u8], grant: Grant) -> Result<(), String> {
        check_key_id(key_id)?;
        if secret.len() < 32 {
            return Err(format!(
                "key `{key_id}`: an hmac-sha256 secret must have at least 32 bytes"
            ));
        }
        self.keys.insert(
            key_id.to_owned(),
            TrustedKey {
                key_id: key_id.to_owned(),
                grant,
                key: PublicKey::Hmac(Hmac::new_from_slice(secret).expect("any length")),
            },
        );
        Ok(())
    }

    pub fn insert_ed25519(
        &mut self,
        key_id: &str,
        public_key: &[u8],
        grant: Grant,
    ) -> Result<(), String> {
        check_key_id(key_id)?;
        let bytes: [u8; 32] = public_key
            .try_into()
            .map_err(|_| format!("key `{key_id}`: an ed25519 public key has 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|error| format!("key `{key_id}`: not an ed25519 public key: {error}"))?;
        self.keys.insert(
            key_id.to_owned(),
            TrustedKey {
                key_id: key_id.to_owned(),
                grant,
                key: PublicKey::Ed25519(key),
            },
        );
        Ok(())
    }

    /// The trusted key that signed this record, if its `hitl-auth` header (`header`) is a valid
    /// signature of `kind`, `key` and `value` by a key of this set.
    pub fn verify(
        &self,
        kind: Kind,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        header: Option<&[u8]>,
    ) -> Result<&TrustedKey, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let header =
            std::str::from_utf8(header).map_err(|_| AuthError::Malformed("not UTF-8".into()))?;
        let mut parts = header.splitn(3, ':');
        let (Some(algorithm), Some(key_id), Some(signature)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed(
                "expected <algorithm>:<key_id>:<hex signature>".into(),
            ));
        };
        let signature = hex::decode(signature)
            .map_err(|_| AuthError::Malformed("the signature is not hex".into()))?;
        let trusted = self
            .keys
            .get(key_id)
            .ok_or_else(|| AuthError::UnknownKey(truncate(key_id, 64)))?;

        let valid = match (&trusted.key, algorithm) {
            (PublicKey::Hmac(mac), "hmac-sha256") => {
                let mut mac = mac.clone();
                mac_signed_bytes(&mut mac, kind, key, value);
                mac.verify_slice(&signature).is_ok()
            }
            (PublicKey::Ed25519(public), "ed25519") => {
                let bytes = signed_bytes(kind, key, value);
                ed25519_dalek::Signature::from_slice(&signature)
                    .is_ok_and(|signature| public.verify(&bytes, &signature).is_ok())
            }
            _ => {
                return Err(AuthError::Malformed(format!(
                    "key `{key_id}` does not sign with `{}`",
                    truncate(algorithm, 32)
                )))
            }
        };
        if valid {
            Ok(trusted)
        } else {
            Err(AuthError::BadSignature(key_id.to_owned()))
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

/// One entry of a key file (`[[keys]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub key_id: String,
    pub algorithm: Algorithm,
    /// ed25519: the public key, hex.
    #[serde(default)]
    pub public_key: Option<String>,
    /// hmac-sha256: the shared secret, hex (prefer `secret_file` or `secret_env`).
    #[serde(default)]
    pub secret: Option<Secret>,
    /// hmac-sha256: a file holding the secret in hex (a mounted secret).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// hmac-sha256: an environment variable holding the secret in hex.
    #[serde(default)]
    pub secret_env: Option<String>,
    pub grant: Grant,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

/// Reads a hex secret given inline, in a file or in an environment variable (exactly one).
pub fn load_secret(
    what: &str,
    inline: Option<&Secret>,
    file: Option<&PathBuf>,
    env: Option<&str>,
) -> Result<Option<Vec<u8>>, String> {
    let text = match (inline, file, env) {
        (None, None, None) => return Ok(None),
        (Some(secret), None, None) => secret.expose().to_owned(),
        (None, Some(path), None) => std::fs::read_to_string(path)
            .map_err(|error| format!("{what}: cannot read {}: {error}", path.display()))?,
        (None, None, Some(variable)) => std::env::var(variable)
            .map_err(|_| format!("{what}: environment variable {variable} is not set"))?,
        _ => {
            return Err(format!(
                "{what}: give the secret one way only (inline, file or env)"
            ))
        }
    };
    hex::decode(text.trim())
        .map(Some)
        .map_err(|_| format!("{what}: the secret must be hex"))
}

/// Loads a key file (TOML, `[[keys]]` of [`KeyEntry`]).
pub fn load_key_file(path: &std::path::Path) -> Result<(KeySet, Vec<Fingerprint>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let entries = parse_key_file(&text).map_err(|error| format!("{}: {error}", path.display()))?;
    key_set(&entries, &path.display().to_string())
}

/// The entries of a key file's text (TOML, `[[keys]]` of [`KeyEntry`]); nothing is read yet.
pub fn parse_key_file(text: &str) -> Result<Vec<KeyEntry>, String> {
    let file: KeyFile = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(|error| error.to_string())?;
    Ok(file.keys)
}

/// The trusted keys of a key file's `entries`, reading the secrets they name (`origin` names the
/// file in errors), and the fingerprints of their key bytes.
pub fn key_set(entries: &[KeyEntry], origin: &str) -> Result<(KeySet, Vec<Fingerprint>), String> {
    let mut set = KeySet::default();
    let mut fingerprints = Vec::new();
    for entry in entries {
        let what = format!("{origin} key `{}`", entry.key_id);
        if set.get(&entry.key_id).is_some() {
            return Err(format!("{what}: listed twice"));
        }
        match entry.algorithm {
            Algorithm::HmacSha256 => {
                let secret = load_secret(
                    &what,
                    entry.secret.as_ref(),
                    entry.secret_file.as_ref(),
                    entry.secret_env.as_deref(),
                )?
                .ok_or_else(|| format!("{what}: an hmac-sha256 key needs a secret"))?;
                fingerprints.push(Fingerprint::of(&entry.key_id, &secret));
                set.insert_hmac(&entry.key_id, &secret, entry.grant.clone())
                    .map_err(|error| format!("{what}: {error}"))?;
            }
            Algorithm::Ed25519 => {
                let public = entry
                    .public_key
                    .as_deref()
                    .ok_or_else(|| format!("{what}: an ed25519 key needs public_key"))?;
                let public = hex::decode(public.trim())
                    .map_err(|_| format!("{what}: public_key must be hex"))?;
                fingerprints.push(Fingerprint::of(&entry.key_id, &public));
                set.insert_ed25519(&entry.key_id, &public, entry.grant.clone())
                    .map_err(|error| format!("{what}: {error}"))?;
            }
        }
    }
    Ok((set, fingerprints))
}

/// A key's identity for the development-key check: SHA-256 of its secret or public key bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub key_id: String,
    pub sha256: String,
}

impl Fingerprint {
    pub fn of(key_id: &str, bytes: &[u8]) -> Self {
        Self {
            key_id: key_id.to_owned(),
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// Whether this is one of the keys published in this repository (`config/dev-keys.toml`,
    /// `config/*.toml`): anyone can sign with those.
    pub fn is_development_key(&self) -> bool {
        DEVELOPMENT_KEYS.contains(&self.sha256.as_str())
    }
}

/// SHA-256 of every key and secret committed to this repository for development (checked by a
/// test against `config/`): a service refuses them unless started with `--dev`.
pub const DEVELOPMENT_KEYS: &[&str] = &[
    // config/dev-keys.toml and config/dev-clients.toml: router-dev-1, assignment-dev-1,
    // publisher-dev-1, gateway-dev-1 (secret, then public key).
    "fab43389dc894f8c447c89994c52647813a80e122df3132d3592134bdd1e6a07",
    "21e193c19c3e16ad65b3ba56e6e8b4eadcf7ff31197eecceb39d27573587082f",
    "cec3c78793b2cc9fd4e86ccc3c439046b1b9b33c3b10d91244ff22c286d31e3c",
    "263ab5827c772b93e6ba2467efa252fdebd385bf7e72bca27aece087588a424d",
    "f8190d513dd9de5b543d2891b3c86ae296789f41a5c08f8bdabb15e2f2474a24",
    // config/assignment.toml: service.lease_secret.
    "250a42a4bcfeb34aaa13d5b9271e155b5f5296750ec356ecb8e117d967cd723f",
    // config/audit.toml: service.signing_key (secret, then public key) and service.hash_key
    // (its UTF-8 bytes).
    "1278000d6e68216265d491248c0b5606190a575ab806e2e6f7a6108dcd723cd5",
    "ce3a6257335997de4a2302d9893fbbe3468323be0dcd81f97d9543a214ba4bf0",
    "acdc92ad8ef4c44b97c9fd067b1c1c46b3117444c709f09bfdbe0770b890e82e",
];

/// Reads 32 random bytes from the operating system.
pub fn random_secret() -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_with(grant: Grant) -> (Signer, KeySet) {
        let secret = [7u8; 32];
        let signer = Signer::new("k1", Algorithm::HmacSha256, &secret).unwrap();
        let mut set = KeySet::default();
        set.insert_hmac("k1", &secret, grant).unwrap();
        (signer, set)
    }

    #[test]
    fn a_signature_verifies_only_for_the_same_kind_key_and_value() {
        let (signer, set) = set_with(Grant::Gateway);
        let header = signer.sign(Kind::Verdict, Some(b"pool"), Some(b"value"));
        let verify = |kind, key: &[u8], value: &[u8]| {
            set.verify(kind, Some(key), Some(value), Some(header.as_bytes()))
                .map(|key| key.key_id.clone())
        };
        assert_eq!(verify(Kind::Verdict, b"pool", b"value"), Ok("k1".into()));
        assert!(matches!(
            verify(Kind::Reviewer, b"pool", b"value"),
            Err(AuthError::BadSignature(_))
        ));
        assert!(matches!(
            verify(Kind::Verdict, b"poo", b"lvalue"),
            Err(AuthError::BadSignature(_))
        ));
        assert!(matches!(
            verify(Kind::Verdict, b"pool", b"value2"),
            Err(AuthError::BadSignature(_))
        ));
    }

    #[test]
    fn ed25519_signatures_verify_with_the_public_key_only() {
        let signer = Signer::new("gw", Algorithm::Ed25519, &[9u8; 32]).unwrap();
        let public = hex::decode(signer.public_key_hex().unwrap()).unwrap();
        let mut set = KeySet::default();
        set.insert_ed25519("gw", &public, Grant::Gateway).unwrap();
        let header = signer.sign(Kind::Verdict, None, Some(b"v"));
        assert!(set
            .verify(Kind::Verdict, None, Some(b"v"), Some(header.as_bytes()))
            .is_ok());
        // The same key id claimed with HMAC is refused, not checked against the public key.
        let forged = format!("hmac-sha256:gw:{}", "00".repeat(32));
        assert!(matches!(
            set.verify(Kind::Verdict, None, Some(b"v"), Some(forged.as_bytes())),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn missing_malformed_and_unknown_keys_are_told_apart() {
        let (_, set) = set_with(Grant::Gateway);
        let verify = |header: Option<&[u8]>| set.verify(Kind::Verdict, None, None, header);
        assert_eq!(verify(None).unwrap_err(), AuthError::Missing);
        assert!(matches!(verify(Some(b"x")), Err(AuthError::Malformed(_))));
        assert!(matches!(
            verify(Some(b"hmac-sha256:k1:zz")),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            verify(Some(b"hmac-sha256:other:00")),
            Err(AuthError::UnknownKey(_))
        ));
    }

    #[test]
    fn grants_bound_what_a_key_may_write() {
        let (_, set) = set_with(Grant::Reviewer {
            reviewer_id: "alice".into(),
            roles: vec!["senior".into()],
        });
        let key = set.get("k1").unwrap();
        assert!(key.may_act_for("alice").is_ok());
        assert!(key.may_act_for("bob").is_err());
        assert!(key.may_claim_roles(&["senior".to_owned()]).is_ok());
        assert!(key.may_claim_roles(&["head-of-risk".to_owned()]).is_err());
        assert!(key.may_publish_as("alice").is_err());
        assert!(key.may_speak_for("router").is_err());
        let (_, set) = set_with(Grant::Publisher {
            producers: vec!["fraud-model".into()],
        });
        let key = set.get("k1").unwrap();
        assert!(key.may_publish_as("fraud-model").is_ok());
        assert!(key.may_publish_as("alice").is_err());
        assert!(key.may_act_for("alice").is_err());
    }

    #[test]
    fn short_secrets_and_odd_key_ids_are_refused() {
        assert!(Signer::new("k", Algorithm::HmacSha256, &[1; 16]).is_err());
        assert!(Signer::new("a:b", Algorithm::HmacSha256, &[1; 32]).is_err());
        assert!(Signer::new("", Algorithm::HmacSha256, &[1; 32]).is_err());
    }
}
