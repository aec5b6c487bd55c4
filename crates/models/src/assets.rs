//! Finding the model files and data that `scripts/setup.sh` installs, without Python.
//!
//! The setup script writes `.cache/models.env` in the repository root: `KEY=VALUE` lines with
//! absolute paths. An environment variable of the same name overrides the file, so a user can
//! point fedsyn at other copies.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// The env file the setup script writes, relative to the repository root.
pub const MODELS_ENV: &str = ".cache/models.env";
/// The SmolLM2-135M-Instruct GGUF file (the default generator).
pub const SMOLLM2_GGUF_VAR: &str = "FEDSYN_SMOLLM2_GGUF";
/// The all-MiniLM-L6-v2 folder holding `model.safetensors` and `tokenizer.json` (the default
/// embedder).
pub const MINILM_DIR_VAR: &str = "FEDSYN_MINILM_DIR";
/// The folder of State of the Union addresses, one `YEAR_NAME_PARTY.txt` per address.
pub const SOTU_DIR_VAR: &str = "FEDSYN_SOTU_DIR";

/// Locations of the installed assets.
#[derive(Debug, Clone, Default)]
pub struct Assets {
    /// Values read from the env file.
    file_values: HashMap<String, String>,
    /// The env file they came from, if one was found.
    source: Option<PathBuf>,
}

impl Assets {
    /// Reads `.cache/models.env` from the nearest enclosing folder of the current directory
    /// that has one (cargo runs tests in the crate's folder, two levels below the root), else
    /// from the nearest enclosing folder of the running executable (`target/release/fedsyn`
    /// run from anywhere). When none exists, only environment variables can supply locations.
    pub fn discover() -> Assets {
        let cwd = std::env::current_dir().unwrap_or_default();
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        cwd.ancestors()
            .chain(exe_dir.ancestors())
            .map(|dir| dir.join(MODELS_ENV))
            .find(|candidate| candidate.is_file())
            .and_then(|path| Assets::from_env_file(&path).ok())
            .unwrap_or_default()
    }

    /// Reads the `KEY=VALUE` lines of `path`; blank lines and `#` comments are skipped.
    pub fn from_env_file(path: &Path) -> Result<Assets> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file_values = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
            .collect();
        Ok(Assets {
            file_values,
            source: Some(path.to_path_buf()),
        })
    }

    /// The env file the locations came from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// The value of `variable`: the environment first, then the env file.
    fn lookup(&self, variable: &str) -> Option<String> {
        std::env::var(variable)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| self.file_values.get(variable).cloned())
    }

    fn existing_path(&self, what: &'static str, variable: &'static str) -> Result<PathBuf> {
        let missing = |detail: String| ModelError::AssetMissing {
            what,
            detail,
            variable,
        };
        let value = self.lookup(variable).ok_or_else(|| match &self.source {
            Some(file) => missing(format!("{variable} is not set in {}", file.display())),
            None => missing(format!("{variable} is unset and no {MODELS_ENV} was found")),
        })?;
        let path = PathBuf::from(value);
        if path.exists() {
            Ok(path)
        } else {
            Err(missing(format!(
                "{variable} points to {}, which does not exist",
                path.display()
            )))
        }
    }

    /// The SmolLM2-135M-Instruct GGUF file.
    pub fn smollm2_gguf(&self) -> Result<PathBuf> {
        self.existing_path("the SmolLM2 GGUF file", SMOLLM2_GGUF_VAR)
    }

    /// The all-MiniLM-L6-v2 model folder.
    pub fn minilm_dir(&self) -> Result<PathBuf> {
        self.existing_path("the all-MiniLM-L6-v2 folder", MINILM_DIR_VAR)
    }

    /// The folder of State of the Union address texts.
    pub fn sotu_dir(&self) -> Result<PathBuf> {
        self.existing_path("the State of the Union texts", SOTU_DIR_VAR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_values_are_read_and_checked() {
        let dir = crate::test_support::scratch_dir("assets");
        let env_file = dir.join("models.env");
        let text = format!(
            "# written by scripts/setup.sh\n\n{MINILM_DIR_VAR}={}\n{SOTU_DIR_VAR}=/nonexistent/sotu\n",
            dir.display()
        );
        std::fs::write(&env_file, text).unwrap();
        let assets = Assets::from_env_file(&env_file).unwrap();
        // Only these two variables are read, and the test sets neither in the environment.
        if std::env::var_os(MINILM_DIR_VAR).is_none() {
            assert_eq!(assets.minilm_dir().unwrap(), dir);
        }
        if std::env::var_os(SOTU_DIR_VAR).is_none() {
            let err = assets.sotu_dir().unwrap_err().to_string();
            assert!(
                err.contains("/nonexistent/sotu, which does not exist"),
                "{err}"
            );
            assert!(err.contains("run scripts/setup.sh"), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
