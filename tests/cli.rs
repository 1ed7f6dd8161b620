//! The real binary: exit codes, stdout and stderr.

use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_se-compile"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1");
    c
}

fn run(args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = bin().args(args).output().expect("runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("se-compile-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn summary_of_a_zoo_model_by_name() {
    let (code, out, err) = run(&["summary", "se_block"]);
    assert_eq!(code, 0, "{err}");
    insta::assert_snapshot!(out);
}

#[test]
fn check_accepts_the_whole_zoo() {
    let mut args = vec!["check"];
    // models/ and models/ablations/: every spec file.
    let files: Vec<String> = ["models", "models/ablations"]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().map(move |e| (d, e.unwrap())))
        .filter(|(_, e)| e.file_type().unwrap().is_file())
        .map(|(d, e)| format!("{d}/{}", e.file_name().to_string_lossy()))
        .collect();
    assert!(files.len() >= 40, "{files:?}");
    args.extend(files.iter().map(|s| s.as_str()));
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok: ")).count(),
        files.len()
    );
}

#[test]
fn invalid_spec_exits_1_with_a_located_diagnostic() {
    let (code, out, err) = run(&["check", "tests/bad/groups_not_dividing.yaml"]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    insta::assert_snapshot!(err);
}

#[test]
fn check_reports_every_file_and_keeps_the_worst_code() {
    let (code, out, err) = run(&[
        "check",
        "models/se_block.yaml",
        "tests/bad/unknown_layer.se",
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("ok: models/se_block.yaml"));
    assert!(err.contains("tests/bad/unknown_layer.se:4:5"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(run(&["summary"]).0, 2);
    assert_eq!(run(&["summary", "se_block", "--depth", "deep"]).0, 2);
    assert_eq!(run(&["frobnicate"]).0, 2);
    let (code, _, err) = run(&["summary", "no/such/file.yaml"]);
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, _, err) = run(&["summary", "models"]);
    assert_eq!(code, 2);
    assert!(err.contains("is a directory"), "{err}");
}

#[test]
fn bad_files_get_one_line_errors() {
    let cases: [(&str, &[u8], &str); 4] = [
        ("empty.yaml", b"", "empty"),
        ("blank.se", b"  \n\n", "empty"),
        ("binary.yaml", b"\x7fELF\x00\x01\x02", "binary"),
        ("latin1.yaml", b"model: caf\xe9\n", "UTF-8"),
    ];
    for (name, bytes, what) in cases {
        let p = tmp(name);
        std::fs::write(&p, bytes).unwrap();
        let (code, out, err) = run(&["check", p.to_str().unwrap()]);
        assert_eq!(code, 1, "{name}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(err.contains(what), "{name}: {err}");
    }
}

#[test]
fn help_has_an_example_for_each_subcommand() {
    for sub in ["check", "summary", "compile", "graph"] {
        let (code, out, _) = run(&[sub, "--help"]);
        assert_eq!(code, 0);
        assert!(out.contains("Example"), "{sub} --help lacks an example");
        assert!(out.contains(&format!("se-compile {sub}")), "{sub}");
    }
}

#[test]
fn compile_writes_the_ir_and_graph_writes_dot() {
    let ir = tmp("graph.json");
    let (code, _, err) = run(&[
        "compile",
        "models/se_resnet_mini.yaml",
        "-o",
        ir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ir).unwrap()).unwrap();
    assert_eq!(j["format"], "se-compile-ir");
    assert_eq!(j["model"], "se_resnet_mini");
    let n = j["nodes"].as_array().unwrap().len();
    assert!(n > 50);
    let dot = tmp("g.dot");
    let (code, _, _) = run(&["graph", "se_block", "-o", dot.to_str().unwrap()]);
    assert_eq!(code, 0);
    let d = std::fs::read_to_string(&dot).unwrap();
    assert!(d.starts_with("digraph"));
    assert!(d.contains("[label=\"(None, 26, 26, 512)\"]"), "{d}");
}

#[test]
fn json_and_markdown_formats() {
    let (code, out, _) = run(&[
        "summary",
        "models/se_resnet50.se",
        "--format",
        "json",
        "--depth",
        "stage",
    ]);
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    for key in [
        "model",
        "input_shape",
        "layers",
        "total_params",
        "trainable_params",
        "non_trainable_params",
        "total_macs",
    ] {
        assert!(j.get(key).is_some(), "missing {key}");
    }
    assert_eq!(j["total_params"], 26_153_537);
    let (code, out, _) = run(&[
        "summary",
        "se_block",
        "--format",
        "markdown",
        "--show-source",
    ]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(out);
}

/// A closed standard output (`| head -3`) ends every printing subcommand quietly with status
/// 141, as SIGPIPE does for Unix tools, never with a panic; a full disk is a one-line error and
/// exit code 1, because output was lost.
#[test]
fn closed_stdout_exits_quietly_and_a_full_disk_is_an_error() {
    use std::process::Stdio;
    let cases: &[&[&str]] = &[
        &["summary", "se_resnet50"],
        &["summary", "se_resnet50", "--format", "json"],
        &["check", "models/se_resnet50.yaml", "models/se_block.yaml"],
        &[
            "diff",
            "models/se_resnet50.yaml",
            "models/se_resnet50_timm.yaml",
        ],
        &["compile", "models/se_resnet50.yaml"],
        &["graph", "models/se_block.yaml"],
        &["schema"],
        &["--help"],
    ];
    for args in cases {
        // A pipe whose reader is gone before the program starts, as with `| head -1`.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = bin()
            .args(*args)
            .stdout(Stdio::from(writer))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        if args[0] == "--help" {
            // clap's own printing: no panic, whatever it exits with.
            continue;
        }
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?} is not quiet: {err}");
    }
    if std::path::Path::new("/dev/full").exists() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = bin()
            .args(["summary", "se_resnet50"])
            .stdout(full)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("cannot write to standard output"), "{err}");
    }
}
