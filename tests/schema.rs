//! `se-compile schema`: the JSON Schema is a valid schema, every YAML spec of the zoo and of
//! tests/ok validates against it (with the `jsonschema` crate, not our own reader), and a
//! sample of the bad specs that a schema can judge is rejected.

use se_compile::schema::schema;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_as_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema()).expect("the schema is a valid JSON Schema")
}

#[test]
fn every_good_spec_validates() {
    let v = validator();
    let files: Vec<PathBuf> = [
        "models",
        "models/ablations",
        "tests/ok",
        "tests/scale_out",
        "tests/diff",
    ]
    .iter()
    .flat_map(|d| yaml_files(d))
    .collect();
    assert!(files.len() >= 10, "{files:?}");
    for f in &files {
        let doc = yaml_as_json(f);
        let errors: Vec<String> = v
            .iter_errors(&doc)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", f.display());
    }
}

#[test]
fn bad_specs_a_schema_can_judge_are_rejected() {
    let v = validator();
    for name in [
        "unknown_param",            // `filtres`
        "unknown_top_key",          // `layer:`
        "negative_stride",          // stride -1, below the parser's minimum
        "wrong_type_filters",       // filters: true
        "wrong_type_float_filters", // filters: 2.5
        "missing_kernel",           // conv2d without its required `kernel`
        "se_unknown_gate",          // se gate: softmax, not one of the gates
    ] {
        let f = root().join("tests/bad").join(format!("{name}.yaml"));
        let doc = yaml_as_json(&f);
        assert!(!v.is_valid(&doc), "{name}.yaml passes the schema");
        // and se-compile itself rejects it too
        let src = se_compile::SourceFile::new(name, std::fs::read_to_string(&f).unwrap());
        assert!(se_compile::compile(&src).is_err());
    }
}

/// The schema comes from the parsers: every layer kind and top-level key is in it, and a key a
/// parser reads (conv2d's `dilation`, train's `label_smoothing`) appears without being listed
/// anywhere else.
#[test]
fn the_schema_follows_the_parsers() {
    let s = schema();
    for k in se_compile::ir::ops::LAYER_KINDS {
        assert!(s["$defs"][format!("kind_{k}")].is_object(), "{k}");
    }
    let mut top: Vec<&str> = s["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    top.sort();
    let mut want = se_compile::spec::yaml::TOP_KEYS.to_vec();
    want.sort();
    assert_eq!(top, want);
    let conv = &s["$defs"]["kind_conv2d"]["anyOf"][0];
    assert!(conv["properties"]["dilation"].is_object());
    assert_eq!(conv["required"], serde_json::json!(["filters", "kernel"]));
    assert!(s["properties"]["train"]["properties"]["label_smoothing"].is_object());
    assert_eq!(
        s["$defs"]["se_args"]["properties"]["form"]["enum"],
        serde_json::json!(["conv1x1", "dense"])
    );
}
