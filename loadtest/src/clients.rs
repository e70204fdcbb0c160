//! The keys the load generator's clients sign with (docs/trust.md): a publisher for decisions and
//! a reviewer gateway for the simulated reviewers' roster entries and verdicts. They come from a
//! TOML file (`--clients FILE`, else `HITL_LOADTEST_CLIENTS`, else `config/dev-clients.toml`, whose
//! development keys the services trust only when started with `--dev`).

use std::{path::Path, sync::OnceLock};

use hitl_runtime::auth::{Algorithm, Kind, Signer};
use rdkafka::message::{Header, OwnedHeaders};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    key_id: String,
    algorithm: Algorithm,
    secret: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    publisher: KeyConfig,
    gateway: KeyConfig,
}

/// What the load generator signs with.
#[derive(Debug)]
pub struct Clients {
    pub publisher: Signer,
    pub gateway: Signer,
}

impl Clients {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", path.display()))?;
        let file: ClientsFile = serde_json::from_value(toml_value(&text, path)?)?;
        let signer = |what: &str, key: &KeyConfig| -> anyhow::Result<Signer> {
            let secret = hex::decode(key.secret.trim())
                .map_err(|_| anyhow::anyhow!("{}: {what}.secret is not hex", path.display()))?;
            Signer::new(&key.key_id, key.algorithm, &secret)
                .map_err(|error| anyhow::anyhow!("{}: {what}: {error}", path.display()))
        };
        Ok(Self {
            publisher: signer("publisher", &file.publisher)?,
            gateway: signer("gateway", &file.gateway)?,
        })
    }
}

fn toml_value(text: &str, path: &Path) -> anyhow::Result<serde_json::Value> {
    let config = hitl_runtime_config(text)
        .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
    Ok(config)
}

fn hitl_runtime_config(text: &str) -> Result<serde_json::Value, String> {
    // The `config` crate (as the services use it) reads the TOML.
    let config = ::config::Config::builder()
        .add_source(::config::File::from_str(text, ::config::FileFormat::Toml))
        .build()
        .map_err(|error| error.to_string())?;
    config
        .try_deserialize::<serde_json::Value>()
        .map_err(|error| error.to_string())
}

static CLIENTS: OnceLock<Clients> = OnceLock::new();

/// Loads the clients' keys for this process from `--clients FILE`, `HITL_LOADTEST_CLIENTS` or
/// `config/dev-clients.toml`.
pub fn init(args: &[String]) -> anyhow::Result<()> {
    let path = args
        .windows(2)
        .find(|pair| pair[0] == "--clients")
        .map(|pair| pair[1].clone())
        .or_else(|| std::env::var("HITL_LOADTEST_CLIENTS").ok())
        .unwrap_or_else(|| "config/dev-clients.toml".into());
    let clients = Clients::load(Path::new(&path))?;
    let _ = CLIENTS.set(clients);
    Ok(())
}

/// This process's clients (`init` first).
pub fn get() -> &'static Clients {
    CLIENTS
        .get()
        .expect("hitl_loadtest::clients::init was called")
}

/// Headers with the `hitl-auth` signature of a record of `kind` by `signer`.
pub fn signed(signer: &Signer, kind: Kind, key: &str, payload: &[u8]) -> OwnedHeaders {
    let signature = signer.sign(kind, Some(key.as_bytes()), Some(payload));
    OwnedHeaders::new().insert(Header {
        key: hitl_runtime::auth::HEADER,
        value: Some(&signature),
    })
}
