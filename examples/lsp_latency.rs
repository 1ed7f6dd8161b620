//! The language server's latency after a change, on SE-ResNet-152 (bench/se_resnet152.yaml,
//! 50 SE blocks): each round edits `classes` (an incremental didChange) and times, through the
//! server's message loop (in process, debounce 0),
//! - the hover on the model's `se:` setting (its answer needs the new compile), and
//! - after a second edit, the publishDiagnostics the change brings.
//!
//!     cargo run --release --example lsp_latency [-- ROUNDS]

use lsp_server::{Connection, Message, Notification, Request, RequestId};
use serde_json::json;
use std::time::{Duration, Instant};

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let text = std::fs::read_to_string("bench/se_resnet152.yaml").expect("run from the repo root");
    let (server, client) = Connection::memory();
    let h = std::thread::spawn(move || se_compile::lsp::serve(&server).unwrap());
    let uri = "file:///bench/se_resnet152.yaml";
    let send = |m: Message| client.sender.send(m).unwrap();
    let recv = || {
        client
            .receiver
            .recv_timeout(Duration::from_secs(60))
            .unwrap()
    };
    let req = |id: i32, method: &str, params| {
        Message::Request(Request::new(RequestId::from(id), method.into(), params))
    };
    let note =
        |method: &str, params| Message::Notification(Notification::new(method.into(), params));
    send(req(
        0,
        "initialize",
        json!({"capabilities": {}, "initializationOptions": {"debounceMs": 0}}),
    ));
    recv();
    send(note("initialized", json!({})));
    send(note(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": uri, "languageId": "yaml", "version": 0, "text": text}}),
    ));
    recv();
    let classes = text
        .lines()
        .position(|l| l.starts_with("classes:"))
        .unwrap();
    let se = text.lines().position(|l| l.starts_with("se:")).unwrap();
    let change = |n: usize, version: usize| {
        note(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": version},
            "contentChanges": [{"range": {"start": {"line": classes, "character": 9},
                                          "end": {"line": classes, "character": 11}},
                                "text": format!("{}", 17 + n % 2)}]}),
        )
    };
    let (mut hover, mut diags) = (vec![], vec![]);
    for i in 0..rounds {
        let t = Instant::now();
        send(change(i, 2 * i + 1));
        send(req(
            1 + i as i32,
            "textDocument/hover",
            json!({"textDocument": {"uri": uri}, "position": {"line": se, "character": 1}}),
        ));
        loop {
            if let Message::Response(r) = recv() {
                let v = r.response_result.unwrap();
                assert!(v["contents"]["value"]
                    .as_str()
                    .unwrap()
                    .contains("50 SE blocks"));
                break;
            }
        }
        hover.push(t.elapsed());
        let t = Instant::now();
        send(change(i + 1, 2 * i + 2));
        loop {
            if let Message::Notification(n) = recv() {
                if n.method == "textDocument/publishDiagnostics" && n.params["version"] == 2 * i + 2
                {
                    break;
                }
            }
        }
        diags.push(t.elapsed());
    }
    send(req(9999, "shutdown", json!(null)));
    recv();
    send(note("exit", json!(null)));
    h.join().unwrap();
    for (what, mut v) in [
        ("hover after a change", hover),
        ("diagnostics after a change", diags),
    ] {
        v.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{what}: median {:.1} ms, max {:.1} ms ({} rounds)",
            ms(v[v.len() / 2]),
            ms(v[v.len() - 1]),
            v.len()
        );
    }
}
