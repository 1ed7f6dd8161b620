//! Every spec in tests/bad/ must be rejected with a diagnostic (never a panic); the rendered
//! diagnostic (ASCII, no colour, fixed width) is snapshotted.

mod common;
use se_compile::diag::{render, Style};

#[test]
fn bad_specs_give_diagnostics() {
    let mut count = 0;
    insta::glob!("bad/*", |path| {
        let src = common::source(path);
        let result = std::panic::catch_unwind(|| se_compile::compile(&src).err());
        let Ok(result) = result else {
            panic!("{} panicked", src.name)
        };
        let Some(d) = result else { panic!("{} was accepted", src.name) };
        let text = render(&d, &src, Style::Plain);
        // Every diagnostic points at file:line:col and says what to do.
        assert!(text.starts_with(&format!("error: {}:", src.name)), "{text}");
        assert!(d.span.is_some(), "{}: no location", src.name);
        assert!(d.help.is_some(), "{}: no help", src.name);
        insta::assert_snapshot!(text);
        count += 1;
    });
    assert!(count >= 30, "only {count} bad specs");
}

#[test]
fn both_syntaxes_are_covered() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad");
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().filter(|n| n.ends_with(".se")).count() >= 10);
    assert!(names.iter().filter(|n| n.ends_with(".yaml")).count() >= 20);
}
