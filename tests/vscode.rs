//! The VS Code extension (`editors/vscode`): built from the npm registry's packages as a user
//! builds it (`npm ci`, `npm run compile`), its `activate` run with the `vscode` module
//! replaced by a recorder (`test/activate.js`), and the server it would start (command,
//! arguments, initializationOptions) started and talked to: the options it passes must take
//! effect. Its grammar's keywords and its settings' defaults are checked against the DSL
//! grammar and the server. Needs node and npm (`.ci/run` installs Debian's).

use lsp_server::{Message, Notification, Request, RequestId};
use serde_json::{json, Value};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("editors/vscode")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (is node/npm installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A copy of the extension's sources, installed and compiled, in a scratch folder.
struct Built(PathBuf);

impl Built {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Built {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn built() -> Built {
    let dir = Built(std::env::temp_dir().join(format!("se-vscode-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(dir.path());
    for f in [
        "package.json",
        "package-lock.json",
        "tsconfig.json",
        "src/extension.ts",
        "test/activate.js",
    ] {
        let to = dir.path().join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root().join(f), &to).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    let npm = |args: &[&str]| {
        run(Command::new("npm")
            .args(args)
            .current_dir(dir.path())
            .env("npm_config_update_notifier", "false"))
    };
    npm(&["ci", "--no-audit", "--no-fund"]);
    npm(&["run", "compile"]);
    dir
}

/// What `activate` starts for these settings.
fn activate(ext: &Path, settings: Value) -> Value {
    let out = run(Command::new("node")
        .arg("test/activate.js")
        .arg(settings.to_string())
        .current_dir(ext));
    let started: Vec<Value> = serde_json::from_str(out.trim()).expect("JSON from activate.js");
    assert_eq!(started.len(), 1, "one client started: {out}");
    started[0].clone()
}

/// Starts the server as the extension would, opens a spec, and returns (the diagnostics, the
/// inlay hints of the whole file).
fn talk(started: &Value, text: &str) -> (Vec<Value>, Value) {
    let so = &started["serverOptions"];
    let args: Vec<String> = serde_json::from_value(so["args"].clone()).unwrap();
    let mut child = Command::new(so["command"].as_str().unwrap())
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut next = 0;
    let mut ask = |stdin: &mut std::process::ChildStdin, out: &mut BufReader<_>, m: &str, p| {
        next += 1;
        let id = RequestId::from(next);
        Message::Request(Request::new(id.clone(), m.into(), p))
            .write(stdin)
            .unwrap();
        loop {
            if let Message::Response(r) = Message::read(out).unwrap().expect("a reply") {
                if r.id == id {
                    return r.response_result.expect("an answer");
                }
            }
        }
    };
    let opts = started["clientOptions"]["initializationOptions"].clone();
    ask(
        &mut stdin,
        &mut out,
        "initialize",
        json!({"capabilities": {}, "initializationOptions": opts}),
    );
    let notify = |stdin: &mut std::process::ChildStdin, m: &str, p| {
        Message::Notification(Notification::new(m.into(), p))
            .write(stdin)
            .unwrap()
    };
    notify(&mut stdin, "initialized", json!({}));
    let uri = "file:///w/tiny.se";
    notify(
        &mut stdin,
        "textDocument/didOpen",
        json!({"textDocument": {"uri": uri, "languageId": "se", "version": 1, "text": text}}),
    );
    let diags = loop {
        if let Message::Notification(n) = Message::read(&mut out).unwrap().expect("a message") {
            if n.method == "textDocument/publishDiagnostics" {
                break n.params["diagnostics"].as_array().unwrap().clone();
            }
        }
    };
    let hints = ask(
        &mut stdin,
        &mut out,
        "textDocument/inlayHint",
        json!({"textDocument": {"uri": uri},
               "range": {"start": {"line": 0, "character": 0}, "end": {"line": 999, "character": 0}}}),
    );
    ask(&mut stdin, &mut out, "shutdown", Value::Null);
    notify(&mut stdin, "exit", Value::Null);
    assert!(child.wait().unwrap().success());
    (diags, hints)
}

#[test]
fn the_extension_builds_and_starts_the_server_with_its_settings() {
    let ext = built();
    let bin = env!("CARGO_BIN_EXE_se-compile");
    let tiny = include_str!("lsp/tiny.se");

    // Defaults: `se-compile` on PATH, the server's own defaults.
    let d = activate(ext.path(), json!({}));
    assert_eq!(d["serverOptions"]["command"], "se-compile");
    assert_eq!(d["serverOptions"]["args"], json!(["lsp"]));
    let langs: Vec<&str> = d["clientOptions"]["documentSelector"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["language"].as_str().unwrap())
        .collect();
    assert!(
        langs.contains(&"se") && langs.contains(&"yaml"),
        "{langs:?}"
    );
    let opts = &d["clientOptions"]["initializationOptions"];
    assert_eq!(
        opts["debounceMs"],
        se_compile::lsp::DEBOUNCE.as_millis() as u64
    );
    assert_eq!(opts["inlayHints"], true);

    // Settings: the binary's path, and hints on, then off: the server honours each.
    let on = activate(ext.path(), json!({"path": bin, "debounceMs": 20}));
    assert_eq!(on["serverOptions"]["command"], bin);
    let (diags, hints) = talk(&on, tiny);
    assert!(diags.is_empty(), "{diags:?}");
    let labels: Vec<&str> = hints
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["label"].as_str().unwrap())
        .collect();
    assert!(
        labels.contains(&"→ (None, 10)"),
        "the classifier's shape is hinted: {labels:?}"
    );
    let off = activate(ext.path(), json!({"path": bin, "inlayHints": false}));
    assert_eq!(
        off["clientOptions"]["initializationOptions"]["inlayHints"],
        false
    );
    let broken = tiny.replacen("relu", "rleu", 1);
    let (diags, hints) = talk(&off, &broken);
    assert_eq!(hints, json!([]));
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert!(
        diags[0]["message"].as_str().unwrap().contains("rleu"),
        "{diags:?}"
    );
}

/// The settings' defaults in package.json are the server's, and the grammar's keywords are
/// the DSL's (grammar/se.pest's `keyword` rule).
#[test]
fn the_manifest_and_grammar_match_the_server_and_the_dsl() {
    let pkg: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("package.json")).unwrap())
            .unwrap();
    let props = &pkg["contributes"]["configuration"]["properties"];
    assert_eq!(
        props["se-compile.debounceMs"]["default"],
        se_compile::lsp::DEBOUNCE.as_millis() as u64
    );
    assert_eq!(props["se-compile.inlayHints"]["default"], true);
    assert_eq!(
        pkg["contributes"]["languages"][0]["extensions"],
        json!([".se"])
    );

    let pest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("grammar/se.pest"))
            .unwrap();
    let rule = &pest[pest.find("keyword = ").unwrap()..];
    let rule = &rule[..rule.find("~ !ident_char").unwrap()];
    let mut dsl: Vec<&str> = rule.split('"').skip(1).step_by(2).collect();
    let tm: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("syntaxes/se.tmLanguage.json")).unwrap(),
    )
    .unwrap();
    let re = tm["repository"]["keyword"]["match"].as_str().unwrap();
    let inner = &re[re.find('(').unwrap() + 1..re.rfind(')').unwrap()];
    let mut grammar: Vec<&str> = inner.split('|').collect();
    dsl.sort();
    grammar.sort();
    assert_eq!(grammar, dsl);
}
