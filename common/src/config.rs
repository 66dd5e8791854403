//! Loading a TOML config file.
//!
//! Precedence for every binary is: built-in defaults, then the config file, then `LOOPLINE_*`
//! environment variables, then flags. The file is read here; environment and flags are merged
//! by each binary's clap definitions, which know both.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Reads and parses a TOML config file. Unknown keys are errors when `T` denies them, and the
/// error names the file, the line and the key.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
        path: path.to_owned(),
        source,
    })?;
    parse_toml(path, &text)
}

/// Parses config text; `path` only names it in errors.
pub fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| Error::ConfigParse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// Serde for any type that reads and writes itself as text (`FromStr` + `Display`), such as a
/// policy written `"interval:200ms"`: `#[serde(with = "loopline_common::config::as_text")]`.
/// The parse error names the value, and serde's error adds the key and the line.
pub mod as_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        lake: String,
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse_toml::<Sample>(Path::new("ingest.toml"), "lake = \"x\"\nlaek = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ingest.toml"), "{err}");
        assert!(err.contains("laek"), "{err}");
    }

    #[derive(Debug, Deserialize)]
    struct WithText {
        #[serde(with = "as_text")]
        port: std::num::NonZeroU16,
    }

    #[test]
    fn text_values_parse_once_and_name_the_key() {
        let ok: WithText = parse_toml(Path::new("a.toml"), "port = \"8080\"\n").unwrap();
        assert_eq!(ok.port.get(), 8080);
        let err = parse_toml::<WithText>(Path::new("a.toml"), "port = \"0\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn missing_file_is_named() {
        let err = load_toml::<Sample>(Path::new("/nonexistent/agent.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/agent.toml"), "{err}");
    }
}
