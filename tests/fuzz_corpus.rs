//! Every file the fuzzers keep (`fuzz/corpus/<target>/`: the seeds and the inputs AFL found new
//! coverage with) and every crash they found (`fuzz/crashes/<target>/`, kept after the fix)
//! runs through its target in `se_compile::fuzzing`: none may panic. The campaign itself is
//! `fuzz/run.sh`.

use std::path::Path;

#[test]
fn every_kept_fuzz_input_runs_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut ran = 0;
    let mut failures = vec![];
    for (name, target) in se_compile::fuzzing::TARGETS {
        let mut seen = 0;
        for kind in ["corpus", "crashes"] {
            let dir = root.join(kind).join(name);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files.into_iter().filter(|f| f.is_file()) {
                let data = std::fs::read(&f).expect("readable");
                let hook = std::panic::take_hook();
                std::panic::set_hook(Box::new(|_| {}));
                let r = std::panic::catch_unwind(|| target(&data));
                std::panic::set_hook(hook);
                if r.is_err() {
                    failures.push(f.display().to_string());
                }
                seen += 1;
            }
        }
        assert!(
            seen > 0,
            "fuzz/corpus/{name} is empty: seed it with fuzz/run.sh seed"
        );
        ran += seen;
    }
    assert!(
        failures.is_empty(),
        "panicked on {} of {ran}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The `lsp_edits` target's seeds (an editing session on each spec of models/ and tests/) run
/// clean: every request answered without a handler failing, and formatting every `.se` file
/// keeps its meaning. A seed that failed would stop AFL before the campaign starts.
#[test]
fn an_editing_session_on_every_spec_runs_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut specs = vec![];
    for dir in ["models", "models/ablations", "tests/ok", "tests/bad"] {
        for e in std::fs::read_dir(root.join(dir))
            .expect("the folder exists")
            .flatten()
        {
            let p = e.path();
            if matches!(p.extension().and_then(|x| x.to_str()), Some("se" | "yaml")) {
                specs.push(p);
            }
        }
    }
    assert!(specs.len() > 50, "found only {} specs", specs.len());
    for p in specs {
        let text = std::fs::read_to_string(&p).expect("readable");
        let yaml = p.extension().is_some_and(|x| x == "yaml");
        let seed = se_compile::fuzzing::lsp_edits_seed(&text, yaml);
        let r = std::panic::catch_unwind(|| se_compile::fuzzing::lsp_edits(&seed));
        assert!(r.is_ok(), "{} failed", p.display());
    }
}
