//! Layered settings: serde defaults, then an optional TOML file, then environment variables.
//!
//! With prefix `ALLOCATOR`, the file is named by `ALLOCATOR_CONFIG_FILE` and the variable
//! `ALLOCATOR__DATABASE__URL` sets `database.url` (double underscores separate levels).

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::de::DeserializeOwned;

/// Loads settings of type `T` for the service whose environment prefix is `prefix`.
///
/// # Errors
/// Names the offending key when a value has the wrong type, or the file when it cannot be read.
pub fn load<T: DeserializeOwned>(prefix: &str) -> anyhow::Result<T> {
    let mut figment = Figment::new();
    let file_var = format!("{prefix}_CONFIG_FILE");
    if let Ok(path) = std::env::var(&file_var) {
        if !std::path::Path::new(&path).is_file() {
            anyhow::bail!("{file_var}: no such file: {path}");
        }
        figment = figment.merge(Toml::file(path));
    }
    figment = figment.merge(Env::prefixed(&format!("{prefix}__")).split("__"));
    figment
        .extract()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
}

/// Checks that the setting named `name` lies in `lo..=hi` (durations and intervals: a value
/// of zero or one so large that adding it to the clock overflows never reaches the code).
///
/// # Errors
/// Names the setting, the range and the value.
pub fn check_range(name: &str, value: u64, lo: u64, hi: u64) -> anyhow::Result<()> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        anyhow::bail!("{name}: must be {lo}-{hi}, got {value}")
    }
}
