//! `se-compile lsp` driven as an editor drives it: initialize, didOpen, didChange, hover,
//! inlay hints, symbols, definition, completion, codeAction, shutdown. The same session runs
//! twice: in process through the server's message loop (`Connection::memory`), and over stdio
//! with JSON-RPC framing against the built binary. Expected values come from the compiler
//! (`compile`, the summary's stats), not from copies of them.

use lsp_server::{Connection, Message, Notification, Request, RequestId, Response};
use se_compile::ir::keras_shape;
use se_compile::report::thousands;
use se_compile::{compile, SourceFile};
use serde_json::{json, Value};
use std::io::BufReader;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TINY: &str = include_str!("lsp/tiny.se");

/// One side of a conversation with the server.
trait Client {
    fn send(&mut self, m: Message);
    fn recv(&mut self) -> Message;
}

struct Memory {
    conn: Connection,
    server: Option<std::thread::JoinHandle<()>>,
}

impl Memory {
    fn start() -> Memory {
        let (server, client) = Connection::memory();
        let h = std::thread::spawn(move || se_compile::lsp::serve(&server).expect("server loop"));
        Memory {
            conn: client,
            server: Some(h),
        }
    }
}

impl Client for Memory {
    fn send(&mut self, m: Message) {
        self.conn.sender.send(m).unwrap();
    }
    fn recv(&mut self) -> Message {
        self.conn
            .receiver
            .recv_timeout(Duration::from_secs(20))
            .expect("the server answers")
    }
}

struct Stdio_ {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Stdio_ {
    fn start() -> Stdio_ {
        let mut child = Command::new(env!("CARGO_BIN_EXE_se-compile"))
            .arg("lsp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Stdio_ { child, out }
    }
}

impl Client for Stdio_ {
    fn send(&mut self, m: Message) {
        m.write(self.child.stdin.as_mut().unwrap()).unwrap();
    }
    fn recv(&mut self) -> Message {
        Message::read(&mut self.out).unwrap().expect("a message")
    }
}

struct Session<C: Client> {
    c: C,
    next: i32,
}

impl<C: Client> Session<C> {
    fn request(&mut self, method: &str, params: Value) -> Response {
        self.next += 1;
        let id = RequestId::from(self.next);
        self.c.send(Message::Request(Request::new(
            id.clone(),
            method.into(),
            params,
        )));
        loop {
            match self.c.recv() {
                Message::Response(r) if r.id == id => return r,
                _ => {}
            }
        }
    }
    fn result(&mut self, method: &str, params: Value) -> Value {
        match self.request(method, params).response_result {
            Ok(v) => v,
            Err(e) => panic!("{method}: {e:?}"),
        }
    }
    fn notify(&mut self, method: &str, params: Value) {
        self.c.send(Message::Notification(Notification::new(
            method.into(),
            params,
        )));
    }
    /// The next diagnostics published for `uri`.
    fn diagnostics(&mut self, uri: &str) -> Vec<Value> {
        loop {
            if let Message::Notification(n) = self.c.recv() {
                if n.method == "textDocument/publishDiagnostics" && n.params["uri"] == uri {
                    return n.params["diagnostics"].as_array().unwrap().clone();
                }
            }
        }
    }
    fn open(&mut self, uri: &str, lang: &str, text: &str) -> Vec<Value> {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": lang, "version": 1, "text": text}}),
        );
        self.diagnostics(uri)
    }
    fn hover(&mut self, uri: &str, line: usize, character: usize) -> String {
        let h = self.result(
            "textDocument/hover",
            json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}),
        );
        h["contents"]["value"].as_str().unwrap_or("").to_string()
    }
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap()
}

fn session<C: Client>(c: C) -> Session<C> {
    session_with(c, json!({"debounceMs": 10}))
}

fn session_with<C: Client>(c: C, options: Value) -> Session<C> {
    let mut s = Session { c, next: 0 };
    let init = s.result(
        "initialize",
        json!({"capabilities": {}, "initializationOptions": options}),
    );
    assert_eq!(init["capabilities"]["hoverProvider"], true);
    assert_eq!(init["capabilities"]["textDocumentSync"], 2);
    s.notify("initialized", json!({}));
    s
}

fn conversation<C: Client>(c: C) -> Session<C> {
    let mut s = session(c);
    let uri = "file:///w/tiny.se";
    // A broken spec: the diagnostic is `check`'s, with its range and help.
    let broken = TINY.replace("conv2d(filters = 16", "conv2dd(filters = 16");
    let d = s.open(uri, "se", &broken);
    assert_eq!(d.len(), 1, "{d:?}");
    let line = line_of(&broken, "conv2dd");
    assert_eq!(
        d[0]["range"],
        json!({"start": {"line": line, "character": 4}, "end": {"line": line, "character": 11}})
    );
    assert_eq!(d[0]["code"], "spec::unknown-layer");
    assert_eq!(
        d[0]["message"],
        "unknown layer or block `conv2dd` (unknown layer)\nhelp: did you mean `conv2d`?"
    );
    // The quick fix is the suggestion, as an edit of that range.
    let actions = s.result(
        "textDocument/codeAction",
        json!({"textDocument": {"uri": uri}, "range": d[0]["range"], "context": {"diagnostics": d}}),
    );
    let edit = &actions[0]["edit"]["changes"][uri][0];
    assert_eq!(edit["newText"], "conv2d");
    assert_eq!(edit["range"], d[0]["range"]);
    // Applying it (an incremental change) clears the diagnostics.
    s.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": uri, "version": 2},
               "contentChanges": [{"range": d[0]["range"], "text": "conv2d"}]}),
    );
    assert_eq!(s.diagnostics(uri), Vec::<Value>::new());

    // Hover values equal the compiler's.
    let vg = compile(&SourceFile::new("tiny.se", TINY)).unwrap();
    let g = vg.graph();
    let stem = g.ids().find(|&i| g.node(i).name == "conv2d").unwrap();
    let l = line_of(TINY, "conv2d(filters = 16");
    let h = s.hover(uri, l, 6);
    let st = vg.stats(stem);
    assert!(
        h.contains(&format!(
            "| `{}` | {} | {} |",
            keras_shape(&g.node(stem).shape),
            thousands(st.params.total()),
            thousands(st.macs)
        )),
        "{h}"
    );
    // A stage: the totals of its expansion.
    let (mut p, mut m, mut n) = (0, 0, 0);
    for i in g.ids() {
        if g.node(i)
            .scope
            .stage
            .as_ref()
            .is_some_and(|s| s.0 == "stage1")
        {
            p += vg.stats(i).params.total();
            m += vg.stats(i).macs;
            n += 1;
        }
    }
    let h = s.hover(uri, line_of(TINY, "stage(basic"), 4);
    assert!(h.contains("**stage** of `basic` — 2 blocks"), "{h}");
    assert!(
        h.contains(&format!(
            "| {n} | `(None, 16, 16, 32)` | {} | {} |",
            thousands(p),
            thousands(m)
        )),
        "{h}"
    );
    // A line inside the template made one layer per block; its `se` one SE block per block.
    let h = s.hover(uri, line_of(TINY, "        relu"), 9);
    assert!(h.contains("**relu** — 2 layers from this line"), "{h}");
    let h = s.hover(uri, line_of(TINY, "        se"), 9);
    assert!(h.contains("**se** — 2 SE blocks"), "{h}");
    // The `se` setting: the blocks it makes (32 channels, squeeze 32 // 4) and their cost.
    let h = s.hover(uri, line_of(TINY, "se(r = 4)"), 3);
    assert!(h.contains("the model makes 2 SE blocks"), "{h}");
    assert!(h.contains("| 32 (×2) | 8 | sigmoid |"), "{h}");
    let se_params: u64 = g
        .ids()
        .filter(|&i| {
            g.node(i).span
                == g.node(g.ids().find(|&i| g.node(i).name == "multiply").unwrap())
                    .span
        })
        .map(|i| vg.stats(i).params.total())
        .sum();
    // Both blocks come from the one `se` line, so the overhead is twice one block's.
    assert!(
        h.contains(&format!("params {}", thousands(se_params))),
        "{h}"
    );

    // Inlay hint at the end of the stem's line.
    let hints = s.result(
        "textDocument/inlayHint",
        json!({"textDocument": {"uri": uri},
               "range": {"start": {"line": 0, "character": 0}, "end": {"line": 99, "character": 0}}}),
    );
    let stem_line = TINY.lines().nth(l).unwrap();
    let hint = hints
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["position"]["line"] == l)
        .unwrap();
    assert_eq!(hint["position"]["character"], stem_line.len());
    assert_eq!(hint["label"], "→ (None, 32, 32, 16)");

    // Go to definition: the template use → `block basic`.
    let sl = line_of(TINY, "stage(basic");
    let def = s.result(
        "textDocument/definition",
        json!({"textDocument": {"uri": uri}, "position": {"line": sl, "character": 10}}),
    );
    let bl = line_of(TINY, "block basic");
    assert_eq!(
        def["range"],
        json!({"start": {"line": bl, "character": 8}, "end": {"line": bl, "character": 13}})
    );

    // Symbols: the block, then the layers with the stage among them.
    let syms = s.result(
        "textDocument/documentSymbol",
        json!({"textDocument": {"uri": uri}}),
    );
    assert_eq!(syms[0]["name"], "block basic");
    let layers: Vec<&str> = syms[1]["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        layers,
        ["conv2d", "stage basic", "global_avg_pool", "dense"]
    );
    assert_eq!(syms[1]["children"][0]["detail"], "(None, 32, 32, 16)");
    nested(&syms);

    // Completion: the words dense's `activation` allows, from the parser's own table.
    let cl = line_of(TINY, "dense(units");
    let col = TINY.lines().nth(cl).unwrap().find("softmax").unwrap();
    let items = s.result(
        "textDocument/completion",
        json!({"textDocument": {"uri": uri}, "position": {"line": cl, "character": col}}),
    );
    let labels: Vec<&str> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["label"].as_str().unwrap())
        .collect();
    let schema = se_compile::schema::schema();
    let words = schema["$defs"]["kind_dense"]["anyOf"][0]["properties"]["activation"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect::<Vec<_>>();
    assert!(words.len() > 5 && words.contains(&"softmax"));
    assert_eq!(labels[..words.len()], words[..], "{labels:?}");
    s
}

/// The range of the `n`th `word` on the line holding `needle`.
fn range_of(text: &str, needle: &str, word: &str, n: usize) -> Value {
    let l = line_of(text, needle);
    let line = text.lines().nth(l).unwrap();
    let c = line.match_indices(word).nth(n).unwrap().0;
    json!({"start": {"line": l, "character": c}, "end": {"line": l, "character": c + word.len()}})
}

fn yaml_references<C: Client>(s: &mut Session<C>) {
    let uri = "file:///w/refs.yaml";
    let text = include_str!("lsp/refs.yaml");
    // A layer that feeds nothing: the related place is the model's output.
    let broken = text.replace(
        "  - global_avg_pool",
        "  - batch_norm: {}\n  - global_avg_pool",
    );
    let d = s.open(uri, "yaml", &broken);
    assert_eq!(d[0]["code"], "shape::unused");
    let rel = &d[0]["relatedInformation"][0];
    assert_eq!(rel["message"], "the output is `dense`");
    assert_eq!(rel["location"]["uri"], uri);
    assert_eq!(
        rel["location"]["range"],
        range_of(&broken, "- dense", "dense", 0)
    );
    s.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": uri, "version": 2}, "contentChanges": [{"text": text}]}),
    );
    assert_eq!(s.diagnostics(uri), Vec::<Value>::new());
    let mut def = |needle: &str, word: &str, n: usize| {
        let r = range_of(text, needle, word, n);
        s.result(
            "textDocument/definition",
            json!({"textDocument": {"uri": uri}, "position": r["start"]}),
        )["range"]
            .clone()
    };
    // Template use → its definition; `from` → the labelled or named layer; a parameter → its
    // declaration.
    for (from, word, n, to) in [
        ("block: twin", "twin", 0, "  twin:"),
        ("from: left", "left", 0, "id: left"),
        ("from: head_conv", "head_conv", 0, "name: head_conv"),
        ("filters * 2", "filters", 1, "params:"),
    ] {
        assert_eq!(def(from, word, n), range_of(text, to, word, 0), "{from}");
    }
    // Find references: the definition, then the uses.
    let mut refs = |needle: &str, word: &str, decl: bool| {
        let r = range_of(text, needle, word, 0);
        let v = s.result(
            "textDocument/references",
            json!({"textDocument": {"uri": uri}, "position": r["start"],
                   "context": {"includeDeclaration": decl}}),
        );
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l["range"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        refs("block: twin", "twin", true),
        [
            range_of(text, "  twin:", "twin", 0),
            range_of(text, "block: twin", "twin", 0)
        ]
    );
    assert_eq!(
        refs("id: left", "left", false),
        [range_of(text, "from: left", "left", 0)]
    );
    let h = s.hover(uri, line_of(text, "- stage"), 6);
    assert!(h.contains("**stage** of `twin` — 2 blocks"), "{h}");
    // The outline: every symbol holds its selection and its children.
    let syms = s.result(
        "textDocument/documentSymbol",
        json!({"textDocument": {"uri": uri}}),
    );
    assert_eq!(syms[0]["name"], "block twin");
    assert_eq!(syms[0]["children"].as_array().unwrap().len(), 2);
    assert_eq!(syms[1]["children"][1]["name"], "conv2d `head_conv`");
    nested(&syms);
}

/// Each document symbol's range holds its selection range and its children's ranges.
fn nested(syms: &Value) {
    let pos = |p: &Value| {
        (
            p["line"].as_u64().unwrap(),
            p["character"].as_u64().unwrap(),
        )
    };
    let within = |outer: &Value, inner: &Value| {
        pos(&outer["start"]) <= pos(&inner["start"]) && pos(&inner["end"]) <= pos(&outer["end"])
    };
    for s in syms.as_array().unwrap() {
        assert!(within(&s["range"], &s["selectionRange"]), "{s}");
        if let Some(c) = s.get("children") {
            for k in c.as_array().unwrap() {
                assert!(within(&s["range"], &k["range"]), "{s}");
            }
            nested(c);
        }
    }
}

fn yaml_and_garbage<C: Client>(s: &mut Session<C>) {
    // YAML: a wrong value, with the suggestion's quick fix.
    let uri = "file:///w/se_block.yaml";
    let text = include_str!("../models/se_block.yaml").replace("form: dense", "form: dens");
    let d = s.open(uri, "yaml", &text);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["code"], "spec::unknown-value");
    let l = line_of(&text, "form: dens");
    assert_eq!(d[0]["range"]["start"], json!({"line": l, "character": 18}));
    let a = s.result(
        "textDocument/codeAction",
        json!({"textDocument": {"uri": uri}, "range": d[0]["range"], "context": {"diagnostics": d}}),
    );
    assert_eq!(a[0]["edit"]["changes"][uri][0]["newText"], "dense");
    // A YAML file that is no spec gets no diagnostics.
    assert_eq!(
        s.open("file:///w/ci.yaml", "yaml", "on: push\njobs: {}\n"),
        Vec::<Value>::new()
    );
    // Garbage, positions past the end, bad parameters: answers, never a dead server.
    let g = "file:///w/g.se";
    let d = s.open(g, "se", "model { ((( \u{1F600} é \0 ]]] ");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["code"], "parse::syntax");
    assert_eq!(s.hover(g, 999, 999), "");
    let r = s.request("textDocument/hover", json!({"nope": 1}));
    assert!(r.response_result.is_err());
    let r = s.request("textDocument/formatting", json!({}));
    assert!(r.response_result.is_err());
    let r = s.request("textDocument/typeDefinition", json!({}));
    assert!(r.response_result.is_err());
    s.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": g, "version": 2},
               "contentChanges": [{"range": {"start": {"line": 7, "character": 3}, "end": {"line": 0, "character": 1}}, "text": "é"}]}),
    );
    assert_eq!(s.diagnostics(g).len(), 1);
}

#[test]
fn in_process() {
    let mut s = conversation(Memory::start());
    yaml_references(&mut s);
    yaml_and_garbage(&mut s);
    s.result("shutdown", Value::Null);
    s.notify("exit", Value::Null);
    s.c.server.take().unwrap().join().unwrap();
}

#[test]
fn inlay_hints_can_be_turned_off() {
    let hints = |options: Value| {
        let mut s = session_with(Memory::start(), options);
        s.open("file:///w/t.se", "se", TINY);
        let h = s.result(
            "textDocument/inlayHint",
            json!({"textDocument": {"uri": "file:///w/t.se"},
                   "range": {"start": {"line": 0, "character": 0}, "end": {"line": 99, "character": 0}}}),
        );
        h.as_array().unwrap().len()
    };
    // One hint per line that ends an item: the 4 of `layers`, and in the template the
    // shortcut's conv, the branch's 3 items and the residual's closing line.
    assert_eq!(hints(json!({})), 9);
    assert_eq!(hints(json!({"inlayHints": false})), 0);
}

#[test]
fn over_stdio() {
    let mut s = conversation(Stdio_::start());
    s.result("shutdown", Value::Null);
    s.notify("exit", Value::Null);
    let status = s.c.child.wait().unwrap();
    assert!(status.success());
}

/// Every text an editor sends while the specs are typed (each prefix) or edited (each one
/// character deleted) gets answers without a panic, in the compiler or in any handler.
#[test]
fn every_prefix_and_deletion_is_answered() {
    use se_compile::lsp::{analysis::analyze, complete::complete};
    use se_compile::source::Span;
    for (name, text) in [("t.se", TINY), ("r.yaml", include_str!("lsp/refs.yaml"))] {
        let cuts: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        let mut texts: Vec<String> = cuts.iter().map(|&i| text[..i].to_string()).collect();
        for w in cuts.windows(2) {
            texts.push(format!("{}{}", &text[..w[0]], &text[w[1]..]));
        }
        for t in &texts {
            let a = analyze(name, t);
            if let Some(e) = &a.error {
                assert_ne!(e.code, "internal::panic", "{t}");
            }
            let uri: lsp_types::Uri = "file:///t".parse().unwrap();
            a.diagnostics(&uri);
            a.symbols();
            a.inlay_hints(Span::new(0, t.len()));
            a.quick_fix(Span::new(0, t.len()));
            for off in [0, t.len() / 3, t.len() / 2, t.len()] {
                a.hover(off);
                a.definition(off);
                a.references(off, true);
                let off = (0..=off).rev().find(|&i| t.is_char_boundary(i)).unwrap();
                complete(t, &t[..off], a.src.syntax(), &[]);
            }
        }
    }
}

/// Formatting `.se` files: the zoo's specs are canonical already, a messed-up copy formats back
/// to them (the edit replaces the whole text), and YAML gets no edit.
#[test]
fn formatting() {
    let mut s = session(Memory::start());
    let fmt = |s: &mut Session<Memory>, uri: &str| {
        s.result(
            "textDocument/formatting",
            json!({"textDocument": {"uri": uri}, "options": {"tabSize": 2, "insertSpaces": true}}),
        )
    };
    for (uri, text) in [
        ("file:///w/a.se", include_str!("../models/se_resnet50.se")),
        ("file:///w/t.se", TINY),
    ] {
        s.open(uri, "se", text);
        assert_eq!(fmt(&mut s, uri), json!([]), "{uri}");
        let messy: String = text
            .lines()
            .map(|l| match l.trim_start() {
                // Blank lines collapse to one; comments keep their text.
                "" => "\n \n\n".to_string(),
                c if c.contains('#') => format!("\t{c}  \n"),
                c => format!("\t{}   \n", c.replace(", ", " ,").replace(" = ", "=")),
            })
            .collect();
        let m = format!("{uri}.messy.se");
        s.open(&m, "se", &messy);
        let edits = fmt(&mut s, &m);
        assert_eq!(edits[0]["newText"].as_str().unwrap(), text, "{uri}");
        assert_eq!(
            edits[0]["range"]["start"],
            json!({"line": 0, "character": 0})
        );
    }
    s.open("file:///w/y.yaml", "yaml", include_str!("lsp/refs.yaml"));
    assert_eq!(fmt(&mut s, "file:///w/y.yaml"), Value::Null);
}
