//! The readers' limits (the README's "Limits" table): the table states the constants of the
//! code, each limit breached gives its clear error (`tests/bad/` snapshots the spec-level ones),
//! and the deepest nesting the limits allow compiles without exhausting a small stack.

use std::path::Path;
use std::process::Command;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The value cell of the README's limits row that starts with `name`.
fn row(name: &str) -> String {
    let text = readme();
    let sec = &text[text.find("## Limits").expect("a Limits section")..];
    let line = sec
        .lines()
        .find(|l| l.starts_with(&format!("| {name}")))
        .unwrap_or_else(|| panic!("no row `{name}` in the README's limits table"));
    line.split('|').nth(2).unwrap().trim().to_string()
}

#[test]
fn the_readme_states_the_limits_of_the_code() {
    use se_compile::report::thousands;
    let n = |v: usize| thousands(v as u64);
    assert_eq!(
        row("spec file size"),
        format!("{} MiB", se_compile::MAX_SPEC_BYTES >> 20)
    );
    assert_eq!(
        row("layers after expansion"),
        n(se_compile::expand::MAX_LAYERS)
    );
    assert_eq!(
        row("block templates nested"),
        n(se_compile::expand::MAX_NESTING)
    );
    assert_eq!(row("brackets"), n(se_compile::spec::MAX_BRACKET_NESTING));
    assert_eq!(
        row("YAML nesting depth"),
        n(se_compile::spec::yaml::YAML_MAX_DEPTH)
    );
    assert_eq!(row("YAML nodes"), n(se_compile::spec::yaml::YAML_MAX_NODES));
    assert_eq!(
        row("YAML aliases"),
        n(se_compile::spec::yaml::YAML_MAX_ALIASES)
    );
    let dim = se_compile::ir::args::MAX_DIM as usize;
    assert_eq!(row("a size given"), n(dim));
    assert_eq!(row("a dimension of a layer's output"), n(dim * 16));
}

fn check(path: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_se-compile"))
        .arg("check")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_spec_over_the_size_limit_is_refused_without_reading_it_whole() {
    let dir = std::env::temp_dir().join(format!("se-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A valid spec followed by a comment that takes it just past 16 MiB.
    let big = dir.join("big.yaml");
    let mut text = String::from("model: m\ninput: [8, 8, 3]\nlayers: [relu]\n");
    let line = format!("# {}\n", "x".repeat(1021));
    while text.len() as u64 <= se_compile::MAX_SPEC_BYTES {
        text.push_str(&line);
    }
    std::fs::write(&big, &text).unwrap();
    let (code, err) = check(&big);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is 16.0 MiB, above se-compile's limit of 16 MiB for a spec"),
        "{err}"
    );
    // The same text one line shorter, at the limit, is read and compiles.
    text.truncate(text.len() - line.len());
    std::fs::write(&big, &text).unwrap();
    assert_eq!(check(&big).0, 0);
    // An endless file: /dev/zero is refused after reading 16 MiB, not read forever.
    let (code, err) = check(Path::new("/dev/zero"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("above se-compile's limit of 16 MiB"), "{err}");
    // The language server and the library refuse a buffer that large too.
    let src = se_compile::SourceFile::new("big.se", "#".repeat(17 << 20));
    let d = se_compile::compile(&src).unwrap_err();
    assert_eq!(d.code, "limit::file-size");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn yaml_over_the_node_budget_is_refused_clearly() {
    let n = se_compile::spec::yaml::YAML_MAX_NODES + 10;
    let text = format!(
        "model: m\ninput: [8, 8, 3]\nlayers: [{}]\n",
        vec!["relu"; n].join(", ")
    );
    let src = se_compile::SourceFile::new("nodes.yaml", text);
    let d = se_compile::compile(&src).unwrap_err();
    assert_eq!(d.code, "limit::yaml");
    assert_eq!(d.message, "the YAML has more than 250,000 nodes");
    assert!(d.span.is_some() && d.help.is_some());
}

/// The deepest nesting the limits allow (31 templates, each nesting the next in residuals as
/// deep as the bracket or YAML depth limit lets) compiles on a 2 MiB stack, the default of a
/// spawned thread, as the language server's and `view --serve`'s threads have.
#[test]
fn the_deepest_nesting_allowed_compiles_on_a_small_stack() {
    for name in ["worst_nesting.se", "worst_nesting.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/limits")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let layers = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let src = se_compile::SourceFile::new(name, text);
                se_compile::compile(&src)
                    .map(|vg| vg.graph().nodes.len())
                    .map_err(|d| d.message)
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(matches!(layers, Ok(n) if n > 500), "{name}: {layers:?}");
    }
}
