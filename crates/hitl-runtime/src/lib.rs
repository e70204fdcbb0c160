//! What every hitl service shares: configuration, telemetry, the metrics/health endpoint, Kafka
//! client setup and topic bootstrap, the transactional loop, and shutdown.

pub mod auth;
pub mod cli;
pub mod config;
pub mod health;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

pub use config::{load, ConfigError, Settings, Validate};
pub use health::Health;
pub use metrics::LoopMetrics;
pub use pipeline::{
    now_millis, InputRecord, LoopError, LoopSettings, OutputRecord, Poison, ProcessError, Processor,
};
