//! Writes the CRD YAML into the Helm chart (`charts/portcullis/crds/portcullis.io.yaml`),
//! or to stdout with `-`.

use std::path::PathBuf;

fn main() -> std::process::ExitCode {
    let yaml = portcullis_crds::crds_yaml();
    let target = std::env::args().nth(1);
    if target.as_deref() == Some("-") {
        print!("{yaml}");
        return std::process::ExitCode::SUCCESS;
    }
    let path = target
        .map(PathBuf::from)
        .unwrap_or_else(portcullis_crds::chart_crd_path);
    match std::fs::write(&path, yaml) {
        Ok(()) => {
            eprintln!("wrote {}", path.display());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crdgen: failed to write {}: {e}", path.display());
            std::process::ExitCode::from(74)
        }
    }
}
