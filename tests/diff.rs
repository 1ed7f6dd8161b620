//! `se-compile diff`: snapshots of three comparisons (r = 16 vs r = 8, SE vs no SE, the seed's
//! layout vs timm's), the SE overhead against the summary totals, and the command's exit codes.

mod common;
use common::*;
use se_compile::report::diff::{self, Diff, Measures, Side, Status};
use se_compile::report::summary::{Depth, Format};
use se_compile::{compile_without_se, SourceFile, ValidGraph};
use std::path::Path;
use std::process::Command;

fn spec(rel: &str) -> (SourceFile, ValidGraph, Result<ValidGraph, String>) {
    let src = source(&Path::new(env!("CARGO_MANIFEST_DIR")).join(rel));
    let vg = build(&src);
    let off = compile_without_se(&src).map_err(|d| d.message);
    (src, vg, off)
}

fn side<'a>(s: &'a (SourceFile, ValidGraph, Result<ValidGraph, String>)) -> Side<'a> {
    Side {
        file: s.0.name.clone(),
        vg: &s.1,
        without_se: s.2.as_ref().map_err(Clone::clone),
    }
}

fn diff_of(a: &str, b: &str, depth: Depth) -> Diff {
    let (a, b) = (spec(a), spec(b));
    diff::diff(&side(&a), &side(&b), depth)
}

const SEED: &str = "models/se_resnet50.yaml";
const R8: &str = "tests/diff/se_resnet50_r8.yaml";
const SE_OFF: &str = "tests/diff/se_resnet50_se_off.yaml";
const TIMM: &str = "models/se_resnet50_timm.yaml";

#[test]
fn r16_vs_r8() {
    let d = diff_of(SEED, R8, Depth::Block);
    insta::assert_snapshot!(diff::render(&d, Format::Text));
}

#[test]
fn se_vs_no_se() {
    let d = diff_of(SEED, SE_OFF, Depth::Layer);
    // Every SE layer is removed and nothing else changes but the blocks' auto-numbered names.
    assert!(d
        .rows
        .iter()
        .all(|r| matches!(r.status, Status::Same | Status::Removed)));
    assert_eq!(
        d.rows
            .iter()
            .filter(|r| r.status == Status::Removed)
            .count(),
        16 * 7
    );
    insta::assert_snapshot!(diff::render(&d, Format::Text));
}

#[test]
fn se_vs_no_se_json() {
    let d = diff_of(SEED, SE_OFF, Depth::Stage);
    insta::assert_json_snapshot!(diff::json(&d));
}

#[test]
fn seed_vs_timm_layout() {
    let d = diff_of(SEED, TIMM, Depth::Stage);
    insta::assert_snapshot!(diff::render(&d, Format::Markdown));
}

#[test]
fn se_overhead_matches_the_summaries() {
    let (seed, off) = (spec(SEED), spec(SE_OFF));
    // Compiling without SE gives exactly the `se: off` spec's totals.
    assert_eq!(
        Measures::of_graph(seed.2.as_ref().unwrap()),
        Measures::of_graph(&off.1)
    );
    let d = diff::diff(&side(&seed), &side(&off), Depth::Stage);
    assert_eq!(d.totals.0.params - d.totals.1.params, 2_530_992);
    assert_eq!(d.totals.0.macs - d.totals.1.macs, 2_514_944);
    // The paper: about 10% more params and well under 1% more MACs for SE-ResNet-50.
    let over = d.se.0.without_se.clone().unwrap();
    let pct = |x: u64, y: u64| (x - y) as f64 * 100.0 / y as f64;
    assert!((9.5..11.0).contains(&pct(d.se.0.with_se.params, over.params)));
    assert!(pct(d.se.0.with_se.macs, over.macs) < 1.0);
    assert_eq!(d.se.1.without_se.clone().unwrap(), d.se.1.with_se);
}

#[test]
fn without_se_overrides_stage_settings() {
    // `se: off` on the model with `se: on` on one stage: that stage's SE layers are left out too.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/se_resnet_mini.yaml"),
    )
    .unwrap()
    .replace("se: {r: 8, form: conv1x1}", "se: off")
    .replace(
        "repeat: 2, filters: 64, stride: 2}",
        "repeat: 2, filters: 64, stride: 2, se: on}",
    );
    let src = SourceFile::new("stage_se_on.yaml", text);
    let on = build(&src);
    let off = compile_without_se(&src).unwrap();
    let plain = build(&SourceFile::new(
        "plain.yaml",
        src.text.replace(", se: on}", "}"),
    ));
    assert!(on.totals().params.total() > off.totals().params.total());
    assert_eq!(Measures::of_graph(&off), Measures::of_graph(&plain));
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_se-compile"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_exit_codes() {
    let (code, out, err) = run(&["diff", "se_resnet50", SE_OFF, "--depth", "stage"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SE overhead of A (se_resnet50): +2,530,992 params (+10.71%)"));
    let (code, out, _) = run(&["diff", SEED, TIMM, "--format", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["depth"], "stage");
    // An invalid spec: 1 with its diagnostic; usage errors: 2.
    let (code, _, err) = run(&["diff", SEED, "tests/bad/add_channel_mismatch.yaml"]);
    assert_eq!(code, 1);
    assert!(err.contains("error"), "{err}");
    assert_eq!(run(&["diff", SEED, "no/such/file.yaml"]).0, 2);
    assert_eq!(run(&["diff", SEED]).0, 2);
    assert_eq!(run(&["diff", SEED, TIMM, "--depth", "nope"]).0, 2);
}

#[test]
fn closed_stdout_is_an_error_not_a_panic() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_se-compile"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["diff", SEED, TIMM, "--depth", "layer"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}
