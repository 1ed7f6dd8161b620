//! `se-compile view SPEC --serve`: the page on 127.0.0.1, redrawn when a spec file changes. A
//! thread reads the spec files every `POLL` and compiles them when their bytes change; the page
//! polls `/version` and fetches `/data` when it moved (view.js, `watch`). An invalid spec's
//! diagnostics, the text `check` prints, go with the last good data, which the page keeps drawn.

use super::{build_data, open_in_browser, ViewArgs};
use crate::commands::shared::{fail, EXIT_USAGE};
use se_compile::diag::Style;
use se_compile::report::view::{self, RunData};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tiny_http::{Header, Method, Request, Response, Server};

/// How often the spec files are read for changes.
const POLL: Duration = Duration::from_millis(200);

/// What is served: the last good data and the diagnostics of the spec files as they are now.
struct Served {
    /// Counts every change the page should see (new data, new or cleared diagnostics).
    version: u64,
    /// Counts changes of the last good data.
    graph: u64,
    data: Value,
    diagnostics: Option<String>,
}

impl Served {
    /// The page's data with what the served page reads of the server (`serve`).
    fn data(&self) -> Value {
        let mut d = self.data.clone();
        d["serve"] = json!({
            "version": self.version,
            "graph": self.graph,
            "diagnostics": self.diagnostics,
        });
        d
    }
}

/// Serves until the process is interrupted. A port in use or a spec that cannot be found is an
/// error at once; a spec that does not compile is served with its diagnostics, waiting for the fix.
pub fn serve(a: &ViewArgs, run: Option<&RunData>) -> Result<(), u8> {
    let files: Vec<String> = std::iter::once(&a.spec)
        .chain(a.spec_b.as_ref())
        .cloned()
        .collect();
    let server = Server::http(("127.0.0.1", a.port)).map_err(|e| {
        fail(format!(
            "cannot serve on 127.0.0.1:{}: {e}; give another port with --port P (--port 0 picks a free one)",
            a.port
        ))
    })?;
    let (data, diagnostics) = match build_data(a, run, Style::Plain) {
        Ok((data, _)) => (data, None),
        Err((code, text)) => {
            eprint!("{text}");
            if code == EXIT_USAGE {
                return Err(code);
            }
            (view::data(&[], None, run), Some(text))
        }
    };
    let state = Arc::new(Mutex::new(Served {
        version: 1,
        graph: 1,
        data,
        diagnostics,
    }));
    let port = server
        .server_addr()
        .to_ip()
        .map_or(a.port, |addr| addr.port());
    let url = format!("http://127.0.0.1:{port}/");
    println!("serving {url} (Ctrl-C stops)");
    let _ = std::io::stdout().flush();
    for f in &files {
        if Path::new(f).is_file() {
            eprintln!("watching {f}");
        } else {
            eprintln!("note: {f} is a built-in model, not a file: it is served but not watched");
        }
    }
    let (args, run, shared) = (a.clone(), run.cloned(), state.clone());
    std::thread::spawn(move || watch(&files, &args, run.as_ref(), &shared));
    if a.open {
        // A missing opener is said (by open_in_browser) and the server goes on.
        let _ = open_in_browser(&url);
    }
    for req in server.incoming_requests() {
        if let Err(e) = respond(req, &state) {
            eprintln!("note: a request was not answered: {e}");
        }
    }
    Ok(())
}

fn snapshot(files: &[String]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}

/// Recompiles whenever a spec file's bytes change (a rename-on-save included).
fn watch(files: &[String], a: &ViewArgs, run: Option<&RunData>, state: &Mutex<Served>) {
    let mut last = snapshot(files);
    loop {
        std::thread::sleep(POLL);
        let now = snapshot(files);
        if now == last {
            continue;
        }
        last = now;
        let result = build_data(a, run, Style::Plain);
        match &result {
            Ok(_) => eprintln!("changed: {}: redrawn", files.join(", ")),
            Err((_, text)) => eprintln!(
                "{text}changed: the page shows these diagnostics above the last good graph"
            ),
        }
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        s.version += 1;
        match result {
            Ok((data, _)) => {
                s.data = data;
                s.graph += 1;
                s.diagnostics = None;
            }
            Err((_, text)) => s.diagnostics = Some(text),
        }
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a well-formed header")
}

fn respond(req: Request, state: &Mutex<Served>) -> std::io::Result<()> {
    if !matches!(req.method(), Method::Get | Method::Head) {
        return req.respond(Response::from_string("only GET and HEAD").with_status_code(405));
    }
    let path = req.url().split('?').next().unwrap_or("/").to_string();
    let (body, kind) = {
        let s = state.lock().unwrap_or_else(PoisonError::into_inner);
        match path.as_str() {
            "/" | "/index.html" => (view::page(&s.data()), "text/html; charset=utf-8"),
            "/version" => (s.version.to_string(), "text/plain; charset=utf-8"),
            "/data" => (s.data().to_string(), "application/json"),
            "/favicon.ico" => return req.respond(Response::empty(204)),
            _ => {
                return req.respond(
                    Response::from_string(format!("{path}: not here; the page is at /"))
                        .with_status_code(404),
                )
            }
        }
    };
    req.respond(
        Response::from_string(body)
            .with_header(header("Content-Type", kind))
            .with_header(header("Cache-Control", "no-store")),
    )
}
