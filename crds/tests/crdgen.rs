//! The committed CRD YAML in the chart is exactly what the Rust types generate.

#[test]
fn committed_crds_match_the_types() {
    let path = portcullis_crds::chart_crd_path();
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
    let generated = portcullis_crds::crds_yaml();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || committed.lines().count().min(generated.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "{} is stale (first difference at line {line}); \
             run `cargo run -p portcullis-crds --bin crdgen` and commit the result",
            path.display()
        );
    }
}

#[test]
fn generated_yaml_round_trips_to_the_crds() {
    // Every document parses back to the CRD it came from: the quoting pass changed the
    // text only, never a value.
    let yaml = portcullis_crds::crds_yaml();
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("generated YAML parses"))
        .collect();
    let expected: Vec<serde_json::Value> = portcullis_crds::crds()
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    assert_eq!(docs, expected);
}

#[test]
fn no_plain_scalar_reads_as_a_boolean_in_yaml_1_1() {
    // kubectl and Helm read YAML 1.1, where a plain `Off` or `yes` is a boolean.
    let yaml = portcullis_crds::crds_yaml();
    let mut in_block: Option<usize> = None;
    for (n, line) in yaml.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        if let Some(block_indent) = in_block {
            if line.trim().is_empty() || indent > block_indent {
                continue;
            }
            in_block = None;
        }
        let trimmed = line.trim_start();
        let scalar = match trimmed.strip_prefix("- ") {
            Some(item) => item,
            None => trimmed.split_once(": ").map_or("", |(_, v)| v),
        };
        if scalar.ends_with('|') || scalar.ends_with("|-") || scalar.ends_with('>') {
            in_block = Some(indent);
            continue;
        }
        assert!(
            !portcullis_crds::is_yaml11_boolean(scalar.trim()),
            "line {}: {line:?} reads as a boolean in YAML 1.1",
            n + 1
        );
    }
}
