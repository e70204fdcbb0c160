//! The `hitl-auth` header parser and signature check (`KeySet::verify`), with the development keys
//! of `config/dev-keys.toml`. Input layout: kind byte (mod 5), flags (bit 0: the record has a key,
//! bit 1: it has a header), signer byte, header length, key length, then the header, the key and
//! the value (the rest).
//!
//! - With signer byte 0xFF, the header comes from the input: verification never panics, and it
//!   accepts a header only when it is the one the key it names makes for those bytes (hex case
//!   aside): nothing else verifies.
//! - Otherwise the header is made by development signer `signer byte mod n`: it verifies for
//!   exactly that kind, key and value and that key, and not as another kind of record.
#![no_main]

use std::sync::OnceLock;

use hitl_fuzz::{auth, seeds};
use libfuzzer_sys::fuzz_target;

struct Keys {
    set: auth::KeySet,
    signers: Vec<auth::Signer>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        set: seeds::dev_key_set(),
        signers: seeds::dev_signers(),
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&[kind, flags, signer, header_len, key_len], rest)) = data.split_first_chunk::<5>()
    else {
        return;
    };
    let kind_byte = kind;
    let kind = seeds::auth_kind(kind);
    let has_key = flags & 1 == 1;
    let has_header = flags & 2 == 2;
    let header_len = if has_header {
        usize::from(header_len)
    } else {
        0
    };
    let key_len = if has_key { usize::from(key_len) } else { 0 };
    let Some((header, rest)) = rest.split_at_checked(header_len) else {
        return;
    };
    let Some((key, value)) = rest.split_at_checked(key_len) else {
        return;
    };
    let key = has_key.then_some(key);
    let keys = keys();

    if signer == 0xFF {
        let header = has_header.then_some(header);
        let Ok(trusted) = keys.set.verify(kind, key, Some(value), header) else {
            return;
        };
        let signer = keys
            .signers
            .iter()
            .find(|signer| signer.key_id() == trusted.key_id)
            .expect("every development key has its signer");
        let expected = signer.sign(kind, key, Some(value));
        let header = std::str::from_utf8(header.expect("verified")).expect("verified");
        assert_eq!(
            header.to_ascii_lowercase(),
            expected,
            "a header other than the key's own signature verified"
        );
        return;
    }

    let signer = &keys.signers[usize::from(signer) % keys.signers.len()];
    let header = signer.sign(kind, key, Some(value));
    let trusted = keys
        .set
        .verify(kind, key, Some(value), Some(header.as_bytes()))
        .unwrap_or_else(|error| panic!("a development signature does not verify: {error}"));
    assert_eq!(trusted.key_id, signer.key_id());
    let other_kind = seeds::auth_kind(kind_byte % 5 + 1);
    assert!(matches!(
        keys.set
            .verify(other_kind, key, Some(value), Some(header.as_bytes())),
        Err(auth::AuthError::BadSignature(_))
    ));
});
