//! Where the config comes from: a directory of manifests (local mode) or a rendered
//! config file, and the certificate files they reference.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use portcullis_crds::config::DataplaneConfig;
use portcullis_crds::translate::{Resolutions, translate};
use portcullis_crds::v1alpha1::{GatewayArray, ServerFarm};

/// Why a config could not be loaded. The last good config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A manifest was not valid YAML of a known kind.
    #[error("failed to parse {path}: {message}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Not exactly one GatewayArray.
    #[error(
        "failed to load manifests in {dir}: found {found} GatewayArray documents, need exactly one"
    )]
    ArrayCount {
        /// The directory.
        dir: PathBuf,
        /// How many were found.
        found: usize,
    },
    /// The array or farms did not translate.
    #[error("failed to translate manifests: {0}")]
    Translate(String),
    /// The rendered config was refused.
    #[error("failed to load config {path}: {source}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: portcullis_crds::config::ConfigError,
    },
    /// A basic-auth htpasswd file was missing or unreadable.
    #[error("failed to load the htpasswd file of Secret {secret}: {message}")]
    Htpasswd {
        /// The secret name.
        secret: String,
        /// What is wrong (never the file's content).
        message: String,
    },
    /// A certificate or key file was missing or unusable.
    #[error("failed to load certificate {secret}: {message}")]
    Certificate {
        /// The secret name.
        secret: String,
        /// What is wrong (never the key material).
        message: String,
    },
}

/// A config as loaded, with the farms whose new version was refused (id, why). The
/// caller keeps serving their last good version.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) config: DataplaneConfig,
    pub(crate) refused: Vec<(String, String)>,
}

/// Where configs come from.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    Manifests(PathBuf),
    Config(PathBuf),
}

impl Source {
    /// Reads and translates the current config.
    pub(crate) fn load(&self) -> Result<Loaded, SourceError> {
        match self {
            Source::Config(path) => {
                let text = read(path)?;
                let config =
                    DataplaneConfig::from_json(&text).map_err(|source| SourceError::Config {
                        path: path.clone(),
                        source,
                    })?;
                Ok(Loaded {
                    config,
                    refused: Vec::new(),
                })
            }
            Source::Manifests(dir) => load_manifests(dir),
        }
    }

    /// The files whose change triggers a reload.
    pub(crate) fn watched(&self) -> Vec<PathBuf> {
        match self {
            Source::Config(p) => vec![p.clone()],
            Source::Manifests(d) => vec![d.clone()],
        }
    }
}

fn read(path: &Path) -> Result<String, SourceError> {
    std::fs::read_to_string(path).map_err(|source| SourceError::Read {
        path: path.to_owned(),
        source,
    })
}

fn load_manifests(dir: &Path) -> Result<Loaded, SourceError> {
    let entries = std::fs::read_dir(dir).map_err(|source| SourceError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    let mut texts = Vec::with_capacity(files.len());
    for path in files {
        let text = read(&path)?;
        texts.push((path, text));
    }
    from_manifests(dir, &texts)
}

/// Translates manifests already read: `(file, text)` in file-name order.
pub(crate) fn from_manifests(
    dir: &Path,
    texts: &[(PathBuf, String)],
) -> Result<Loaded, SourceError> {
    let mut arrays: Vec<GatewayArray> = Vec::new();
    let mut farms: Vec<ServerFarm> = Vec::new();
    for (path, text) in texts {
        // A file caught between `>` truncating it and the write that fills it is empty:
        // refuse the load rather than read it as "this farm was deleted".
        if text.trim().is_empty() {
            return Err(SourceError::Manifest {
                path: path.clone(),
                message:
                    "the file is empty (still being written?); delete it to remove its resources"
                        .into(),
            });
        }
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = serde_yaml::Value::deserialize(doc).map_err(|e| SourceError::Manifest {
                path: path.clone(),
                message: e.to_string(),
            })?;
            if value.is_null() {
                continue;
            }
            // A document cut short can lose its kind; it is not "some other kind".
            let Some(kind) = value
                .get("kind")
                .and_then(|k| k.as_str())
                .map(str::to_owned)
            else {
                return Err(SourceError::Manifest {
                    path: path.clone(),
                    message: "a document has no kind (truncated?)".into(),
                });
            };
            // The error names the field at fault (`spec.maxSessionTime: ...`).
            let bad = |e: serde_path_to_error::Error<serde_yaml::Error>| SourceError::Manifest {
                path: path.clone(),
                message: format!("{kind}: {e}"),
            };
            match kind.as_str() {
                "GatewayArray" => {
                    arrays.push(serde_path_to_error::deserialize(value).map_err(bad)?)
                }
                "ServerFarm" => farms.push(serde_path_to_error::deserialize(value).map_err(bad)?),
                // Other kinds may share the directory, but not under our API group: a
                // kind of ours that is none of ours is a typo or a truncated file.
                _ if value
                    .get("apiVersion")
                    .and_then(|v| v.as_str())
                    .is_none_or(|v| v.starts_with("portcullis.io/")) =>
                {
                    return Err(SourceError::Manifest {
                        path: path.clone(),
                        message: format!(
                            "kind {kind:?} is not a Portcullis kind (GatewayArray, ServerFarm)"
                        ),
                    });
                }
                _ => {}
            }
        }
    }
    if arrays.len() != 1 {
        return Err(SourceError::ArrayCount {
            dir: dir.to_owned(),
            found: arrays.len(),
        });
    }
    let array = &arrays[0];
    let translation = translate(array, &farms, &Resolutions::default()).map_err(|errors| {
        SourceError::Translate(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    let refused = translation
        .farms
        .iter()
        .filter_map(|(id, outcome)| match outcome {
            portcullis_crds::translate::FarmOutcome::Rejected(errors) => Some((
                id.clone(),
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
            portcullis_crds::translate::FarmOutcome::Accepted { .. } => None,
        })
        .collect();
    Ok(Loaded {
        config: translation.config,
        refused,
    })
}

use serde::Deserialize as _;

/// A fingerprint of files: names, sizes and modification times, recursively.
pub(crate) fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    for p in paths {
        walk(p, &mut out, 0);
    }
    out.sort();
    out
}

fn walk(path: &Path, out: &mut Vec<(PathBuf, u64, Option<SystemTime>)>, depth: u32) {
    let Ok(meta) = std::fs::metadata(path) else {
        out.push((path.to_owned(), u64::MAX, None));
        return;
    };
    if meta.is_dir() {
        if depth > 3 {
            return;
        }
        if let Ok(rd) = std::fs::read_dir(path) {
            for e in rd.flatten() {
                walk(&e.path(), out, depth + 1);
            }
        }
    } else {
        out.push((path.to_owned(), meta.len(), meta.modified().ok()));
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{SourceError, from_manifests};

    #[test]
    fn a_bad_duration_is_an_error_naming_its_field() {
        // Issue 17, finding 3: this panicked in the duration parser.
        let array = "apiVersion: portcullis.io/v1alpha1\nkind: GatewayArray\nmetadata: {name: a, namespace: n}\nspec:\n  maxSessionTime: \"é\"\n  listeners:\n  - {name: web, port: 8080, protocol: HTTP}\n";
        let texts = [(PathBuf::from("m/array.yaml"), array.to_owned())];
        let err = from_manifests(Path::new("m"), &texts).unwrap_err();
        assert!(matches!(err, SourceError::Manifest { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("spec.maxSessionTime"), "{message}");
        assert!(message.contains("failed to parse duration"), "{message}");
    }
}
