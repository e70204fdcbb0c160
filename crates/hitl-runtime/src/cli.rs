//! The start of every service's `main`: find the config file, load and validate the settings.

use std::{collections::HashMap, path::PathBuf};

use serde::{de::DeserializeOwned, Serialize};

use crate::config::{load, Validate};

/// The config file: `--config PATH` (or `-c PATH`), else `HITL_CONFIG`, else none (defaults and
/// environment only).
pub fn config_path(args: &[String], environment: &HashMap<String, String>) -> Option<PathBuf> {
    args.windows(2)
        .find(|pair| pair[0] == "--config" || pair[0] == "-c")
        .map(|pair| PathBuf::from(&pair[1]))
        .or_else(|| environment.get("HITL_CONFIG").map(PathBuf::from))
}

/// Loads the settings from the process's arguments and environment. On error prints every
/// problem and exits with status 2, before anything starts.
pub fn load_or_exit<T>() -> T
where
    T: Default + Serialize + DeserializeOwned + Validate,
{
    let args: Vec<String> = std::env::args().collect();
    let environment: HashMap<String, String> = std::env::vars().collect();
    let path = config_path(&args, &environment);
    match load::<T>(path.as_deref(), &environment) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("hitl: refusing to start: {error}");
            std::process::exit(2);
        }
    }
}
