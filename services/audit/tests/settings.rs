//! The audit service's settings: keys from the config, files or the environment; the repository's
//! development keys refused unless `--dev`; no start without a trusted service key or with size
//! bounds the producer's limit cannot hold — each problem naming its field.

use std::{collections::HashMap, path::PathBuf};

use hitl_audit::{service::start_problems, AuditSettings};
use hitl_runtime::{config::Settings, ConfigError};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("hitl-audit-settings-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn load(
    file: Option<&std::path::Path>,
    environment: &[(&str, &str)],
) -> Result<Settings<AuditSettings>, ConfigError> {
    let environment: HashMap<String, String> = environment
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    hitl_runtime::load(file, &environment)
}

fn problems(error: ConfigError) -> Vec<String> {
    match error {
        ConfigError::Invalid(problems) => problems,
        other => panic!("{other}"),
    }
}

/// A keys file trusting one router key (random, so not a development key).
fn keys_file(dir: &std::path::Path, name: &str, grant: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[[keys]]\nkey_id = \"router-test\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{}\"\ngrant = {grant}\n",
            hex::encode(hitl_runtime::auth::random_secret().unwrap())
        ),
    )
    .unwrap();
    path
}

#[test]
fn the_repository_config_needs_dev_for_its_public_keys() {
    let config = repository().join("config/audit.toml");
    std::env::set_current_dir(repository()).unwrap();
    let refused = problems(load(Some(&config), &[]).unwrap_err());
    let text = refused.join("\n");
    for field in [
        "service.signing_key: is a development key",
        "service.hash_key: is a development key",
        "trust.keys_file: key `",
    ] {
        assert!(text.contains(field), "{field:?} not in:\n{text}");
    }
    let settings = load(Some(&config), &[("HITL_TRUST__DEV", "true")]).unwrap();
    assert_eq!(start_problems(&settings), Vec::<String>::new());
    // The public half of the development signing key is refused too, whatever the key id.
    let refused = problems(
        load(
            Some(&config),
            &[
                ("HITL_SERVICE__KEY_ID", "prod-7"),
                ("HITL_TRUST__KEYS_FILE", ""),
            ],
        )
        .unwrap_err(),
    );
    assert!(refused
        .iter()
        .any(|p| p.starts_with("service.signing_key (its public key)")));
}

#[test]
fn keys_load_from_files_and_the_environment_and_a_service_key_is_required() {
    let dir = scratch("files");
    let seed = hitl_audit::crypto::random_seed_hex().unwrap();
    std::fs::write(dir.join("signing"), format!("{seed}\n")).unwrap();
    std::fs::write(dir.join("hash"), "a-hash-key-from-a-mounted-secret\n").unwrap();
    let keys = keys_file(
        &dir,
        "services.toml",
        "{ kind = \"service\", service = \"router\" }",
    );
    let signing = dir.join("signing").display().to_string();
    let hash = dir.join("hash").display().to_string();
    let keys_path = keys.display().to_string();
    let settings = load(
        None,
        &[
            ("HITL_SERVICE__SIGNING_KEY_FILE", &signing),
            ("HITL_SERVICE__HASH_KEY_FILE", &hash),
            ("HITL_TRUST__KEYS_FILE", &keys_path),
        ],
    )
    .unwrap();
    assert_eq!(start_problems(&settings), Vec::<String>::new());
    let from_files = settings.service.keys().unwrap();
    let from_env = load(
        None,
        &[
            ("HITL_SERVICE__SIGNING_KEY", &seed),
            ("HITL_SERVICE__HASH_KEY", "a-hash-key-from-a-mounted-secret"),
        ],
    )
    .unwrap()
    .service
    .keys()
    .unwrap();
    assert_eq!(from_files.public_hex(), from_env.public_hex());
    assert_eq!(from_files.pseudonym("ann"), from_env.pseudonym("ann"));

    // Both ways at once, a missing file: refused, naming the field.
    let refused = problems(
        load(
            None,
            &[
                ("HITL_SERVICE__SIGNING_KEY", &seed),
                ("HITL_SERVICE__SIGNING_KEY_FILE", &signing),
                ("HITL_SERVICE__HASH_KEY_FILE", "/nonexistent/hash"),
            ],
        )
        .unwrap_err(),
    );
    assert!(
        refused
            .iter()
            .any(|p| p.starts_with("service.signing_key: give")),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .any(|p| p.starts_with("service.hash_key_file: cannot read")),
        "{refused:?}"
    );

    // No keys file, or one without a service key: the service would accept nothing.
    let mut no_keys = settings.clone();
    no_keys.trust.keys_file = None;
    let problems = start_problems(&no_keys);
    assert!(
        problems[0].starts_with("trust.keys_file: required"),
        "{problems:?}"
    );
    let publisher = keys_file(
        &dir,
        "publishers.toml",
        "{ kind = \"publisher\", producers = [\"x\"] }",
    );
    let mut wrong = settings.clone();
    wrong.trust.keys_file = Some(publisher);
    let problems = start_problems(&wrong);
    assert!(
        problems[0].contains("trusts no service key"),
        "{problems:?}"
    );

    // Bounds that the producer's limit cannot hold: refused, naming the field.
    let mut big = settings.clone();
    big.service.max_timeline_bytes = 4 * 1024 * 1024;
    let problems = start_problems(&big);
    assert!(
        problems[0].starts_with("service.max_timeline_bytes:"),
        "{problems:?}"
    );
    let mut raised = big.clone();
    raised.kafka.message_max_bytes = 8 * 1024 * 1024;
    assert_eq!(start_problems(&raised), Vec::<String>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}
