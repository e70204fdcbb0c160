//! The key-file parser (`auth::parse_key_file`, TOML) and the key set built from its entries
//! (`auth::key_set`). The input is the file's text.
//!
//! Neither panics. A key set that loads holds one key per entry, each with its entry's grant, and
//! one fingerprint per key. Entries naming a `secret_file` are parsed but not loaded: reading
//! whatever file an input names would fuzz the file system, not the parser.
#![no_main]

use hitl_fuzz::auth;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(entries) = auth::parse_key_file(text) else {
        return;
    };
    if entries.iter().any(|entry| entry.secret_file.is_some()) {
        return;
    }
    let Ok((set, fingerprints)) = auth::key_set(&entries, "fuzz.toml") else {
        return;
    };
    assert_eq!(set.len(), entries.len());
    assert_eq!(fingerprints.len(), entries.len());
    for entry in &entries {
        let key = set.get(&entry.key_id).expect("every entry is a key");
        assert_eq!(key.grant, entry.grant);
    }
});
