//! Every command README.md shows, run as written, so that the README keeps working.
//!
//! **Which lines are commands.** In every fenced block of README.md whose info string is `sh`,
//! `bash`, `shell` or `console`, each line is a command, after a line that ends in `\` is joined
//! with the next and comments are dropped (`#` at the start of a line or after a space, to the
//! end of the line); blank lines are not commands. Blocks with any other info string (`yaml`,
//! none) are not read.
//!
//! **How they run.** A command that starts with `se-compile ` or `cargo run --release -- ` runs
//! this test's build of the binary, with the rest of the line split on spaces as its arguments.
//! Such a command may not use shell syntax (quotes, globs, pipes, redirections, variables,
//! `;`, `&`, `~`): it would not run as written here, so the test fails on it. It must exit with
//! code 0, or with the code [`EXPECTED`] gives it. Every other command, and every command that
//! CI cannot run (a GPU, torchrun), must be in [`SKIPPED`] with the reason. A command that is
//! neither run nor skipped fails the test, and so does a [`SKIPPED`] or [`EXPECTED`] entry that
//! is no longer in the README.
//!
//! **Where they run.** In order, in one scratch directory that stands for the repository root:
//! each top-level entry of the repository (`models/`, `tests/`, ...) is a link to the real one,
//! except `data/fashion-mnist-mini`, which is a copy of the first [`TRAIN_PER_CLASS`] training
//! and [`TEST_PER_CLASS`] test images of each class of the bundled data, so that the training
//! commands, written for the whole bundled subset, take seconds (a data file a command names
//! that is not in the copy is copied too). Files the commands write (`runs/...`, exports) land
//! in the scratch directory, which is removed when every command passed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// README commands that are not run here, with the reason.
const SKIPPED: &[(&str, &str)] = &[
    (
        "cargo test --locked",
        "the test suite itself, which runs this test; .ci/run runs it",
    ),
    (
        "se-compile parity --device cuda",
        "needs a build with the cuda feature and an NVIDIA GPU (scripts/gpu-check.sh runs it there)",
    ),
    (
        "se-compile train models/se_resnet_mini.yaml --device cuda",
        "needs a build with the cuda feature and an NVIDIA GPU (scripts/gpu-check.sh trains it there)",
    ),
    (
        "se-compile train models/se_resnet_mini.yaml --engine torchrun --nproc-per-node 2 --epochs 1",
        "needs PyTorch's torchrun; tests/scale_out.rs runs this engine with the reference venv",
    ),
    (
        "cd editors/vscode && npm ci && npm run compile",
        "builds the VS Code extension in the clone; tests/vscode.rs runs these steps in a scratch copy",
    ),
    (
        "ln -s \"$PWD\" ~/.vscode/extensions/se-compile",
        "installs into the user's VS Code, which CI does not have",
    ),
];

/// README commands that must exit with a code other than 0.
const EXPECTED: &[(&str, i32)] = &[];

const TRAIN_PER_CLASS: usize = 6;
const TEST_PER_CLASS: usize = 2;
const BIN_PREFIXES: &[&str] = &["se-compile ", "cargo run --release -- "];
const SHELL_BLOCKS: &[&str] = &["sh", "bash", "shell", "console"];
const SHELL_SYNTAX: &[char] = &[
    '\'', '"', '*', '?', '|', '<', '>', '$', ';', '&', '`', '(', ')', '~',
];

/// The commands of a Markdown text, by the rule above.
fn commands(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_shell = None;
    let mut pending = String::new();
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            in_shell = match in_shell {
                None => Some(SHELL_BLOCKS.contains(&info.trim())),
                Some(_) => None,
            };
            continue;
        }
        if in_shell != Some(true) {
            continue;
        }
        let code = match trimmed.find('#') {
            Some(0) => "",
            Some(i) if trimmed[..i].ends_with(char::is_whitespace) => &trimmed[..i],
            _ => trimmed,
        };
        let code = code.trim_end();
        if let Some(part) = code.strip_suffix('\\') {
            pending.push_str(part.trim());
            pending.push(' ');
            continue;
        }
        pending.push_str(code);
        let command = pending.split_whitespace().collect::<Vec<_>>().join(" ");
        pending.clear();
        if !command.is_empty() {
            out.push(command);
        }
    }
    out
}

#[test]
fn the_rule_reads_shell_blocks_joins_lines_and_drops_comments() {
    let md = "text\n```sh\n# a comment\nse-compile a \\\n    b   # why\n\ncargo test\n```\n\
              ```yaml\nse-compile not-a-command\n```\n```\nse-compile nor-this\n```\n";
    assert_eq!(commands(md), ["se-compile a b", "cargo test"]);
}

/// The arguments of a command this test runs with the binary, or None for any other command.
fn binary_args(command: &str) -> Option<&str> {
    BIN_PREFIXES.iter().find_map(|p| command.strip_prefix(p))
}

/// The scratch repository root described above.
fn scratch(root: &Path) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("se-compile-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    for entry in std::fs::read_dir(root).unwrap() {
        let name = entry.unwrap().file_name();
        let s = name.to_string_lossy();
        if !(s.starts_with('.') || s == "data" || s == "target" || s == "runs") {
            std::os::unix::fs::symlink(root.join(&name), dir.join(&name)).unwrap();
        }
    }
    common::bundled_subset(
        &dir.join("data/fashion-mnist-mini"),
        TRAIN_PER_CLASS,
        TEST_PER_CLASS,
    );
    dir
}

#[test]
fn every_readme_command_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let cmds = commands(&readme);
    let mut failures = Vec::new();
    for (listed, _) in SKIPPED {
        if !cmds.iter().any(|c| c == listed) {
            failures.push(format!("skipped but not in the README: {listed}"));
        }
    }
    for (listed, _) in EXPECTED {
        if !cmds.iter().any(|c| c == listed) {
            failures.push(format!(
                "expected code given but not in the README: {listed}"
            ));
        }
    }
    let dir = scratch(root);
    let start = Instant::now();
    let mut ran = 0;
    for command in &cmds {
        if let Some((_, why)) = SKIPPED.iter().find(|(c, _)| c == command) {
            eprintln!("skipped: {command}\n    ({why})");
            continue;
        }
        let Some(args) = binary_args(command) else {
            failures.push(format!(
                "neither run nor skipped: {command}\n    (add it to SKIPPED in tests/readme.rs with the reason, or write it as `se-compile ...`)"
            ));
            continue;
        };
        if let Some(c) = args.chars().find(|c| SHELL_SYNTAX.contains(c)) {
            failures.push(format!(
                "shell syntax `{c}` in: {command}\n    (tests/readme.rs runs commands without a shell)"
            ));
            continue;
        }
        let args: Vec<&str> = args.split_whitespace().collect();
        for a in &args {
            let (from, to) = (root.join(a), dir.join(a));
            if a.starts_with("data/") && from.is_file() && !to.exists() {
                std::fs::copy(from, to).unwrap();
            }
        }
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_se-compile"))
            .args(&args)
            .current_dir(&dir)
            .env("NO_COLOR", "1")
            .output()
            .expect("the binary runs");
        ran += 1;
        let code = out.status.code().unwrap_or(-1);
        let want = EXPECTED
            .iter()
            .find(|(c, _)| c == command)
            .map_or(0, |&(_, code)| code);
        eprintln!(
            "exit {code} in {:.1} s: {command}",
            t.elapsed().as_secs_f64()
        );
        if code != want {
            let tail = |b: &[u8]| {
                let s = String::from_utf8_lossy(b);
                let lines: Vec<&str> = s.lines().collect();
                lines[lines.len().saturating_sub(15)..].join("\n")
            };
            failures.push(format!(
                "exit code {code}, expected {want}: {command}\n--- stdout (end)\n{}\n--- stderr (end)\n{}",
                tail(&out.stdout),
                tail(&out.stderr)
            ));
        }
    }
    eprintln!(
        "{ran} README commands ran in {:.1} s, {} skipped",
        start.elapsed().as_secs_f64(),
        SKIPPED.len()
    );
    assert!(
        ran > 0,
        "no README command ran: has the README lost its shell blocks?"
    );
    assert!(
        failures.is_empty(),
        "README commands (scratch directory {}):\n\n{}",
        dir.display(),
        failures.join("\n\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
