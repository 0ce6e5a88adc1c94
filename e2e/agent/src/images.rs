//! Images map to local binaries.
//!
//! There is no container runtime here, so an image is a small table: the repository name
//! it answers to, its entrypoint, and the files of "its filesystem" that exist as local
//! binaries. The files are copied into the agent's state directory when it starts, so a
//! rebuild of the workspace while the cluster runs never swaps a binary under a running
//! pod, and so an unprivileged `runAsUser` can execute them wherever the checkout lives.
//! An image the table does not name is a pull error, never a silent success.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// One image, as the image table (`--images FILE`, JSON) describes it.
#[derive(Clone, Debug, Deserialize)]
pub struct ImageSpec {
    /// The repository name this entry answers to: the last path segment of an image
    /// reference without tag or digest (`registry.k8s.io/e2e-test-images/agnhost:2.52`
    /// answers to `agnhost`).
    pub name: String,
    /// The image's `ENTRYPOINT`.
    pub entrypoint: Vec<String>,
    /// Paths inside the image mapped to binaries on this machine.
    #[serde(default)]
    pub files: BTreeMap<String, PathBuf>,
    /// Directories of the image's `PATH`, searched for a command without a slash before
    /// the host's own (`sleep` in a `preStop` hook comes from the host's coreutils, as it
    /// would from the image's base system).
    #[serde(default)]
    pub path: Vec<String>,
    /// The image's `USER` (its numeric uid), used when no `runAsUser` is set.
    #[serde(default)]
    pub user: Option<i64>,
}

/// The image table, with every file staged into the agent's own directory.
#[derive(Debug)]
pub struct Images {
    images: Vec<ImageSpec>,
}

/// The directories searched for a command the image does not carry.
const HOST_PATH: [&str; 4] = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin"];

impl Images {
    /// Reads the table and copies every mapped file into `stage_dir/<image>/`.
    pub fn load(table: &Path, stage_dir: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(table)
            .with_context(|| format!("failed to read the image table {}", table.display()))?;
        let mut images: Vec<ImageSpec> = serde_json::from_str(&text)
            .with_context(|| format!("failed to parse the image table {}", table.display()))?;
        for image in &mut images {
            let dir = stage_dir.join(&image.name);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
            for (inside, source) in &mut image.files {
                let staged = dir.join(inside.trim_start_matches('/').replace('/', "_"));
                std::fs::copy(&*source, &staged).with_context(|| {
                    format!(
                        "image {}: failed to stage {} from {}",
                        image.name,
                        inside,
                        source.display()
                    )
                })?;
                *source = staged;
            }
        }
        Ok(Self { images })
    }

    /// The image a reference names, or the message of an `ErrImagePull`.
    pub fn find(&self, reference: &str) -> Result<&ImageSpec, String> {
        let name = repository_name(reference);
        self.images.iter().find(|i| i.name == name).ok_or_else(|| {
            format!(
                "image {reference:?} is not in the local cluster's image table (known: {})",
                self.images
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }
}

impl ImageSpec {
    /// The argv a container runs, Kubernetes' way: `command` replaces the entrypoint,
    /// `args` follow it; argv\[0\] is resolved to a binary on this machine.
    pub fn argv(&self, command: &[String], args: &[String]) -> Result<Vec<String>, String> {
        let mut argv: Vec<String> = if command.is_empty() {
            self.entrypoint.clone()
        } else {
            command.to_vec()
        };
        argv.extend(args.iter().cloned());
        let Some(first) = argv.first_mut() else {
            return Err(format!(
                "image {} has no entrypoint and the container no command",
                self.name
            ));
        };
        *first = self.resolve(first)?;
        Ok(argv)
    }

    /// A command as the image would find it: an absolute path inside the image, a name
    /// on the image's `PATH`, or (for base-system tools) the host's own.
    pub fn resolve(&self, command: &str) -> Result<String, String> {
        if command.contains('/') {
            return self
                .files
                .get(command)
                .map(|p| p.display().to_string())
                .ok_or_else(|| format!("{command}: no such file in image {}", self.name));
        }
        for dir in &self.path {
            if let Some(p) = self
                .files
                .get(&format!("{}/{command}", dir.trim_end_matches('/')))
            {
                return Ok(p.display().to_string());
            }
        }
        HOST_PATH
            .iter()
            .map(|d| Path::new(d).join(command))
            .find(|p| p.is_file())
            .map(|p| p.display().to_string())
            .ok_or_else(|| {
                format!(
                    "{command}: executable file not found in $PATH of image {}",
                    self.name
                )
            })
    }
}

/// `registry.k8s.io/e2e-test-images/agnhost:2.52@sha256:…` → `agnhost`.
pub fn repository_name(reference: &str) -> &str {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        assert_eq!(
            repository_name("registry.k8s.io/e2e-test-images/agnhost:2.52"),
            "agnhost"
        );
        assert_eq!(
            repository_name("localhost:5000/portcullis:e2e"),
            "portcullis"
        );
        assert_eq!(repository_name("portcullis"), "portcullis");
        assert_eq!(
            repository_name("ghcr.io/x/portcullis@sha256:00"),
            "portcullis"
        );
    }

    #[test]
    fn command_replaces_the_entrypoint_and_unknown_files_are_errors() {
        let image = ImageSpec {
            name: "portcullis".into(),
            entrypoint: vec!["/usr/local/bin/portcullis-controller".into()],
            files: BTreeMap::from([
                (
                    "/usr/local/bin/portcullis-controller".into(),
                    PathBuf::from("/s/c"),
                ),
                (
                    "/usr/local/bin/portcullis-dataplane".into(),
                    PathBuf::from("/s/d"),
                ),
            ]),
            path: vec!["/usr/local/bin".into()],
            user: Some(65532),
        };
        assert_eq!(image.argv(&[], &["-v".into()]).unwrap(), ["/s/c", "-v"]);
        assert_eq!(
            image
                .argv(&["portcullis-dataplane".into()], &["--x".into()])
                .unwrap(),
            ["/s/d", "--x"]
        );
        assert!(image.argv(&["/bin/evil".into()], &[]).is_err());
        assert!(image.resolve("no-such-tool-anywhere").is_err());
        assert!(Path::new(&image.resolve("sh").unwrap()).is_file());
    }
}
