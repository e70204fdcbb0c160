//! Hashes, signatures and pseudonyms. Canonical bytes of a record are its Avro datum (binary Avro is
//! deterministic: fields in schema order, maps in key order) with the integrity fields blanked.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hitl_schema::{AuditCheckpoint, AuditRecord, Codec};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Hex of SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn datum(value: &impl hitl_schema::Record) -> Vec<u8> {
    let codec = Codec::single_object();
    let framed = codec
        .encode_to_vec("", value)
        .expect("audit records encode");
    codec.datum(&framed).to_vec()
}

/// The bytes an audit record's `content_hash` covers: everything but `content_hash` and
/// `signature` (so `prev_hash`, `version`, `key_id` and `written_at` are covered).
pub fn record_content(record: &AuditRecord) -> Vec<u8> {
    let mut blank = record.clone();
    blank.content_hash = String::new();
    blank.signature = String::new();
    datum(&blank)
}

/// The bytes a checkpoint's signature covers: everything but `signature`.
pub fn checkpoint_content(checkpoint: &AuditCheckpoint) -> Vec<u8> {
    let mut blank = checkpoint.clone();
    blank.signature = String::new();
    datum(&blank)
}

/// The hash the next checkpoint's `prev_checkpoint_hash` names: all of it, signature included.
pub fn checkpoint_hash(checkpoint: &AuditCheckpoint) -> String {
    sha256_hex(&datum(checkpoint))
}

/// A Merkle root over hex leaf hashes: leaves are SHA-256 of the leaf bytes, parents SHA-256 of the
/// two children; an odd node is carried up. The empty tree is SHA-256 of nothing.
pub fn merkle_root<'a>(leaves: impl IntoIterator<Item = &'a str>) -> String {
    let mut level: Vec<[u8; 32]> = leaves
        .into_iter()
        .map(|leaf| Sha256::digest(leaf.as_bytes()).into())
        .collect();
    if level.is_empty() {
        return sha256_hex(&[]);
    }
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => {
                    let mut hasher = Sha256::new();
                    hasher.update(left);
                    hasher.update(right);
                    hasher.finalize().into()
                }
                [single] => *single,
                _ => unreachable!("chunks of two"),
            })
            .collect();
    }
    hex::encode(level[0])
}

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{field}: expected {expected} hex digits")]
    Length {
        field: &'static str,
        expected: usize,
    },
    #[error("{field}: not hex: {source}")]
    Hex {
        field: &'static str,
        source: hex::FromHexError,
    },
    #[error("{field}: not an Ed25519 public key")]
    PublicKey { field: &'static str },
}

fn bytes32(field: &'static str, text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = hex::decode(text.trim()).map_err(|source| KeyError::Hex { field, source })?;
    bytes.try_into().map_err(|_| KeyError::Length {
        field,
        expected: 64,
    })
}

/// Reads a hex Ed25519 public key.
pub fn verifying_key(field: &'static str, text: &str) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_bytes(&bytes32(field, text)?).map_err(|_| KeyError::PublicKey { field })
}

/// Whether `signature_hex` is `key`'s signature of `message`.
pub fn verify(key: &VerifyingKey, message: &[u8], signature_hex: &str) -> bool {
    let Ok(bytes) = hex::decode(signature_hex) else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(&bytes) else {
        return false;
    };
    key.verify(message, &signature).is_ok()
}

/// The key of the keyed hashes: sensitive context values and reviewer pseudonyms. `verify`
/// needs it (and no signing key) to compare a decision on `hitl.decisions` with its trail.
#[derive(Clone)]
pub struct Hasher {
    hash_key: Vec<u8>,
}

impl Hasher {
    pub fn new(hash_key: &[u8]) -> Self {
        Self {
            hash_key: hash_key.to_vec(),
        }
    }

    fn keyed(&self, domain: &str, value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.hash_key).expect("HMAC takes any key");
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// What the audit trail keeps of a sensitive context value.
    pub fn hash_sensitive(&self, value: &str) -> String {
        format!("hmac-sha256:{}", self.keyed("context", value))
    }

    /// A stable pseudonym of a reviewer for labeled data (not reversible without the key).
    pub fn pseudonym(&self, reviewer_id: &str) -> String {
        format!("rv-{}", &self.keyed("reviewer", reviewer_id)[..24])
    }

    /// The decision as the audit stores it: every sensitive context value replaced by its keyed
    /// hash.
    pub fn hashed(&self, decision: &hitl_schema::Decision) -> hitl_schema::Decision {
        let mut decision = decision.clone();
        for key in &decision.sensitive_fields {
            if let Some(value) = decision.context.get_mut(key) {
                *value = self.hash_sensitive(value);
            }
        }
        decision
    }
}

/// The audit service's secrets: the signing key (Ed25519 seed), its id, and the key of the keyed
/// hashes (sensitive context values, reviewer pseudonyms).
#[derive(Clone)]
pub struct Keys {
    signing: SigningKey,
    key_id: String,
    hasher: Hasher,
}

impl Keys {
    pub fn new(seed_hex: &str, key_id: &str, hash_key: &str) -> Result<Self, KeyError> {
        Ok(Self {
            signing: SigningKey::from_bytes(&bytes32("signing_key", seed_hex)?),
            key_id: key_id.to_owned(),
            hasher: Hasher::new(hash_key.as_bytes()),
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Hex of the public key: all `verify` needs.
    pub fn public_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().as_bytes())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Hex of the Ed25519 signature of `message` (deterministic).
    pub fn sign(&self, message: &[u8]) -> String {
        hex::encode(self.signing.sign(message).to_bytes())
    }

    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// What the audit trail keeps of a sensitive context value.
    pub fn hash_sensitive(&self, value: &str) -> String {
        self.hasher.hash_sensitive(value)
    }

    /// A stable pseudonym of a reviewer for labeled data (not reversible without the key).
    pub fn pseudonym(&self, reviewer_id: &str) -> String {
        self.hasher.pseudonym(reviewer_id)
    }

    /// Fills in `content_hash` and `signature` (and `key_id`) of a record.
    pub fn seal_record(&self, record: &mut AuditRecord) {
        record.key_id = self.key_id.clone();
        let hash = sha256_hex(&record_content(record));
        record.signature = self.sign(hash.as_bytes());
        record.content_hash = hash;
    }

    /// Fills in the signature (and `key_id`) of a checkpoint.
    pub fn seal_checkpoint(&self, checkpoint: &mut AuditCheckpoint) {
        checkpoint.key_id = self.key_id.clone();
        checkpoint.signature = self.sign(&checkpoint_content(checkpoint));
    }
}

/// A fresh random signing seed, hex (for `hitl-audit keygen`).
pub fn random_seed_hex() -> std::io::Result<String> {
    use std::io::Read;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(hex::encode(seed))
}
