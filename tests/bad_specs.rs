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
        let Some(d) = result else {
            panic!("{} was accepted", src.name)
        };
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

/// Every line-prefix of every zoo model, and each with one line deleted, is parsed without a
/// panic: truncated and damaged files are the commonest bad input.
#[test]
fn damaged_zoo_files_never_panic() {
    let mut rejected = 0;
    for (name, text) in se_compile::zoo::MODELS {
        let lines: Vec<&str> = text.lines().collect();
        let mut variants: Vec<String> = (0..lines.len()).map(|n| lines[..n].join("\n")).collect();
        variants.extend((0..lines.len()).map(|skip| {
            lines
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, l)| *l)
                .collect::<Vec<_>>()
                .join("\n")
        }));
        for v in variants {
            let src = se_compile::SourceFile::new(*name, v);
            let r = std::panic::catch_unwind(|| se_compile::compile(&src).err());
            match r {
                Err(_) => panic!("{name} panicked on:\n{}", src.text),
                Ok(Some(d)) => {
                    rejected += 1;
                    // Rendering must not panic either, and must locate the error.
                    assert!(render(&d, &src, Style::Plain).starts_with("error: "));
                }
                Ok(None) => {}
            }
        }
    }
    assert!(
        rejected > 100,
        "only {rejected} damaged variants were rejected"
    );
}
