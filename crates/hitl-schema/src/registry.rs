//! A small client for the Confluent Schema Registry HTTP API: register a schema under a subject,
//! look a schema up by id. Blocking (the services call it from their dedicated loop thread, and
//! only on a cache miss).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use serde::Deserialize;
use serde_avro_fast::Schema;

use crate::CodecError;

/// Registry client with caches for ids by (subject, schema) and schemas by id.
#[derive(Debug)]
pub struct RegistryClient {
    base_url: String,
    agent: ureq::Agent,
    ids_by_subject_schema: RwLock<HashMap<(String, String), u32>>,
    schemas_by_id: RwLock<HashMap<u32, Arc<Schema>>>,
}

#[derive(Deserialize)]
struct IdResponse {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaResponse {
    schema: String,
}

impl RegistryClient {
    pub fn new(base_url: impl Into<String>, timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .build();
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            agent: ureq::Agent::new_with_config(config),
            ids_by_subject_schema: RwLock::default(),
            schemas_by_id: RwLock::default(),
        }
    }

    /// Registers `schema_json` under `subject` (idempotent on the registry side) and returns its id.
    pub fn register(&self, subject: &str, schema_json: &str) -> Result<u32, CodecError> {
        let cache_key = (subject.to_owned(), schema_json.to_owned());
        if let Some(id) = self
            .ids_by_subject_schema
            .read()
            .expect("lock")
            .get(&cache_key)
        {
            return Ok(*id);
        }
        let url = format!("{}/subjects/{subject}/versions", self.base_url);
        let body = serde_json::json!({ "schema": schema_json });
        let response: IdResponse = self
            .agent
            .post(&url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .send_json(&body)
            .and_then(|mut r| r.body_mut().read_json())
            .map_err(|error| CodecError::Registry(format!("POST {url}: {error}")))?;
        self.ids_by_subject_schema
            .write()
            .expect("lock")
            .insert(cache_key, response.id);
        Ok(response.id)
    }

    /// The writer schema with this id.
    pub fn schema_by_id(&self, id: u32) -> Result<Arc<Schema>, CodecError> {
        if let Some(schema) = self.schemas_by_id.read().expect("lock").get(&id) {
            return Ok(schema.clone());
        }
        let url = format!("{}/schemas/ids/{id}", self.base_url);
        let response: SchemaResponse = self
            .agent
            .get(&url)
            .call()
            .and_then(|mut r| r.body_mut().read_json())
            .map_err(|error| CodecError::Registry(format!("GET {url}: {error}")))?;
        let schema: Schema =
            response
                .schema
                .parse()
                .map_err(|error: serde_avro_fast::schema::SchemaError| {
                    CodecError::Registry(format!("schema id {id} does not parse: {error}"))
                })?;
        let schema = Arc::new(schema);
        self.schemas_by_id
            .write()
            .expect("lock")
            .insert(id, schema.clone());
        Ok(schema)
    }
}
