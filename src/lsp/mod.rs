//! `se-compile lsp`: a language server (LSP over stdio, `lsp-server`'s synchronous loop) for
//! `.se` and se-compile `.yaml` files. Every change is compiled as `check` compiles it
//! (debounced: diagnostics go out once the edits pause); hover, inlay hints, symbols,
//! definitions, completion and quick fixes read that compile (`analysis`, `complete`).
//!
//! Any text an editor sends is handled without panicking: positions are clamped (`text`), the
//! compiler runs under `catch_unwind`, and a request whose handler failed gets an error reply.

pub mod analysis;
pub mod complete;
pub mod format;
pub mod text;

use analysis::{analyze, Analysis};
use lsp_server::{Connection, ErrorCode, Message, Notification, Request, Response};
use lsp_types as lt;
use lt::notification::Notification as _;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use text::LineIndex;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long edits must pause before a document is compiled and its diagnostics sent.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

struct Doc {
    text: String,
    version: i32,
    /// The analysis of `text`, made on demand.
    analysis: Option<Analysis>,
    /// Diagnostics not yet published for the current text: since when.
    changed: Option<Instant>,
    /// Just opened: diagnostics go out at once, with no debounce.
    opened: bool,
}

impl Doc {
    fn name(uri: &lt::Uri, language: &str) -> String {
        let s = uri.as_str().to_string();
        if language == "se" && !s.ends_with(".se") {
            s + "#.se"
        } else {
            s
        }
    }
}

pub struct Server {
    docs: HashMap<lt::Uri, (String, Doc)>,
    debounce: Duration,
    inlay_hints: bool,
}

pub fn capabilities() -> lt::ServerCapabilities {
    lt::ServerCapabilities {
        text_document_sync: Some(lt::TextDocumentSyncCapability::Kind(
            lt::TextDocumentSyncKind::INCREMENTAL,
        )),
        hover_provider: Some(lt::HoverProviderCapability::Simple(true)),
        completion_provider: Some(lt::CompletionOptions {
            trigger_characters: Some(["(", ",", "=", ":", " ", "{"].map(String::from).to_vec()),
            ..Default::default()
        }),
        definition_provider: Some(lt::OneOf::Left(true)),
        references_provider: Some(lt::OneOf::Left(true)),
        document_symbol_provider: Some(lt::OneOf::Left(true)),
        inlay_hint_provider: Some(lt::OneOf::Left(true)),
        code_action_provider: Some(lt::CodeActionProviderCapability::Simple(true)),
        document_formatting_provider: Some(lt::OneOf::Left(true)),
        ..Default::default()
    }
}

/// Serves on standard input and output until the client says `exit`.
pub fn serve_stdio() -> Result<(), Error> {
    let (conn, io) = Connection::stdio();
    serve(&conn)?;
    drop(conn);
    io.join()?;
    Ok(())
}

/// The handshake, then the message loop, on any connection (tests use `Connection::memory`).
/// `initializationOptions` may set `debounceMs` and `inlayHints` (default true).
pub fn serve(conn: &Connection) -> Result<(), Error> {
    let caps = serde_json::to_value(capabilities())?;
    let init = conn.initialize(caps)?;
    let opts = init.get("initializationOptions");
    let debounce = opts
        .and_then(|o| o.get("debounceMs"))
        .and_then(|v| v.as_u64())
        .map_or(DEBOUNCE, Duration::from_millis);
    let inlay_hints = opts
        .and_then(|o| o.get("inlayHints"))
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    Server {
        docs: HashMap::new(),
        debounce,
        inlay_hints,
    }
    .main_loop(conn)
}

impl Server {
    /// A server with no connection, driven by calling `notification` and `request` as the
    /// message loop does (the `lsp_edits` fuzz target).
    pub fn detached(inlay_hints: bool) -> Self {
        Server {
            docs: HashMap::new(),
            debounce: DEBOUNCE,
            inlay_hints,
        }
    }

    /// The diagnostics `publishDiagnostics` would send for a document now.
    pub fn diagnostics(&mut self, uri: &lt::Uri) -> Vec<lt::Diagnostic> {
        self.analysis(uri).map_or(vec![], |a| a.diagnostics(uri))
    }

    fn main_loop(&mut self, conn: &Connection) -> Result<(), Error> {
        loop {
            let due = self
                .docs
                .values()
                .filter_map(|(_, d)| d.changed)
                .min()
                .map(|t| t + self.debounce);
            let msg = match due {
                Some(due) => match conn
                    .receiver
                    .recv_timeout(due.saturating_duration_since(Instant::now()))
                {
                    Ok(m) => m,
                    Err(e) if e.is_timeout() => {
                        self.publish_due(conn)?;
                        continue;
                    }
                    Err(_) => return Ok(()),
                },
                None => match conn.receiver.recv() {
                    Ok(m) => m,
                    Err(_) => return Ok(()),
                },
            };
            match msg {
                Message::Request(req) => {
                    if conn.handle_shutdown(&req)? {
                        return Ok(());
                    }
                    let resp = self.request(req);
                    conn.sender.send(Message::Response(resp))?;
                }
                Message::Notification(n) => {
                    if n.method == lt::notification::Exit::METHOD {
                        return Ok(());
                    }
                    self.notification(n);
                    // A document just opened is answered at once.
                    self.publish_opened(conn)?;
                }
                Message::Response(_) => {}
            }
        }
    }

    fn publish(&mut self, conn: &Connection, uri: &lt::Uri) -> Result<(), Error> {
        let Some((_, d)) = self.docs.get_mut(uri) else {
            return Ok(());
        };
        d.changed = None;
        d.opened = false;
        let version = d.version;
        let diagnostics = self.diagnostics(uri);
        let params = lt::PublishDiagnosticsParams {
            uri: uri.clone(),
            diagnostics,
            version: Some(version),
        };
        conn.sender.send(Message::Notification(Notification::new(
            lt::notification::PublishDiagnostics::METHOD.into(),
            params,
        )))?;
        Ok(())
    }

    fn publish_due(&mut self, conn: &Connection) -> Result<(), Error> {
        let now = Instant::now();
        let due: Vec<lt::Uri> = self
            .docs
            .iter()
            .filter(|(_, (_, d))| d.changed.is_some_and(|t| t + self.debounce <= now))
            .map(|(u, _)| u.clone())
            .collect();
        for u in due {
            self.publish(conn, &u)?;
        }
        Ok(())
    }

    /// Documents just opened are published at once.
    fn publish_opened(&mut self, conn: &Connection) -> Result<(), Error> {
        let opened: Vec<lt::Uri> = self
            .docs
            .iter()
            .filter(|(_, (_, d))| d.opened)
            .map(|(u, _)| u.clone())
            .collect();
        for u in opened {
            self.publish(conn, &u)?;
        }
        Ok(())
    }

    fn analysis(&mut self, uri: &lt::Uri) -> Option<&Analysis> {
        let (lang, d) = self.docs.get_mut(uri)?;
        if d.analysis.is_none() {
            d.analysis = Some(analyze(&Doc::name(uri, lang), &d.text));
        }
        d.analysis.as_ref()
    }

    /// The analysis of a position's document, and the position's byte offset in it.
    fn at(&mut self, tp: &lt::TextDocumentPositionParams) -> Option<(&Analysis, usize)> {
        let a = self.analysis(&tp.text_document.uri)?;
        let off = LineIndex::new(&a.src.text).offset(tp.position);
        Some((a, off))
    }

    /// The places `find` gives for a position, as locations in its document.
    fn locations(
        &mut self,
        tp: lt::TextDocumentPositionParams,
        find: impl FnOnce(&Analysis, usize) -> Vec<crate::source::Span>,
    ) -> Vec<lt::Location> {
        let Some((a, off)) = self.at(&tp) else {
            return vec![];
        };
        let idx = LineIndex::new(&a.src.text);
        find(a, off)
            .into_iter()
            .map(|s| lt::Location::new(tp.text_document.uri.clone(), idx.range(s)))
            .collect()
    }

    /// Handles a notification from the client (documents opened, changed, closed).
    pub fn notification(&mut self, n: Notification) {
        use lt::notification::*;
        match n.method.as_str() {
            DidOpenTextDocument::METHOD => {
                if let Ok(p) = serde_json::from_value::<lt::DidOpenTextDocumentParams>(n.params) {
                    let d = p.text_document;
                    let doc = Doc {
                        text: d.text,
                        version: d.version,
                        analysis: None,
                        changed: None,
                        opened: true,
                    };
                    self.docs.insert(d.uri, (d.language_id, doc));
                }
            }
            DidChangeTextDocument::METHOD => {
                if let Ok(p) = serde_json::from_value::<lt::DidChangeTextDocumentParams>(n.params) {
                    if let Some((_, d)) = self.docs.get_mut(&p.text_document.uri) {
                        for c in p.content_changes {
                            text::apply_change(&mut d.text, c.range, &c.text);
                        }
                        d.version = p.text_document.version;
                        d.analysis = None;
                        d.changed = Some(Instant::now());
                    }
                }
            }
            DidCloseTextDocument::METHOD => {
                if let Ok(p) = serde_json::from_value::<lt::DidCloseTextDocumentParams>(n.params) {
                    self.docs.remove(&p.text_document.uri);
                }
            }
            _ => {}
        }
    }

    /// Answers a request; a handler that panicked gives an `InternalError` reply.
    pub fn request(&mut self, req: Request) -> Response {
        let id = req.id.clone();
        let method = req.method.clone();
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.answer(req)));
        match run {
            Ok(Ok(v)) => Response::new_ok(id, v),
            Ok(Err((code, msg))) => Response::new_err(id, code as i32, msg),
            Err(_) => Response::new_err(
                id,
                ErrorCode::InternalError as i32,
                format!("se-compile failed answering `{method}`"),
            ),
        }
    }

    /// Reads a request's parameters: the document, and a byte offset for a position.
    fn parse<P: serde::de::DeserializeOwned>(req: Request) -> Result<P, (ErrorCode, String)> {
        serde_json::from_value(req.params).map_err(|e| (ErrorCode::InvalidParams, e.to_string()))
    }

    fn answer(&mut self, req: Request) -> Result<serde_json::Value, (ErrorCode, String)> {
        use lt::request::*;
        let null = serde_json::Value::Null;
        let to_json = |v: serde_json::Result<serde_json::Value>| {
            v.map_err(|e| (ErrorCode::InternalError, e.to_string()))
        };
        match req.method.as_str() {
            HoverRequest::METHOD => {
                let p: lt::HoverParams = Self::parse(req)?;
                let Some((a, off)) = self.at(&p.text_document_position_params) else {
                    return Ok(null);
                };
                let Some((md, span)) = a.hover(off) else {
                    return Ok(null);
                };
                let idx = LineIndex::new(&a.src.text);
                to_json(serde_json::to_value(lt::Hover {
                    contents: lt::HoverContents::Markup(lt::MarkupContent {
                        kind: lt::MarkupKind::Markdown,
                        value: md,
                    }),
                    range: Some(idx.range(span)),
                }))
            }
            InlayHintRequest::METHOD => {
                let p: lt::InlayHintParams = Self::parse(req)?;
                let enabled = self.inlay_hints;
                let Some(a) = self.analysis(&p.text_document.uri).filter(|_| enabled) else {
                    return Ok(serde_json::json!([]));
                };
                let idx = LineIndex::new(&a.src.text);
                let hints: Vec<lt::InlayHint> = a
                    .inlay_hints(idx.span(p.range))
                    .into_iter()
                    .map(|(off, label)| lt::InlayHint {
                        position: idx.position(off),
                        label: lt::InlayHintLabel::String(label),
                        kind: Some(lt::InlayHintKind::TYPE),
                        text_edits: None,
                        tooltip: None,
                        padding_left: Some(true),
                        padding_right: None,
                        data: None,
                    })
                    .collect();
                to_json(serde_json::to_value(hints))
            }
            DocumentSymbolRequest::METHOD => {
                let p: lt::DocumentSymbolParams = Self::parse(req)?;
                let syms = self
                    .analysis(&p.text_document.uri)
                    .map_or(vec![], |a| a.symbols());
                to_json(serde_json::to_value(lt::DocumentSymbolResponse::Nested(
                    syms,
                )))
            }
            GotoDefinition::METHOD => {
                let p: lt::GotoDefinitionParams = Self::parse(req)?;
                let found = self.locations(p.text_document_position_params, |a, off| {
                    a.definition(off).into_iter().collect()
                });
                match found.into_iter().next() {
                    Some(l) => to_json(serde_json::to_value(lt::GotoDefinitionResponse::Scalar(l))),
                    None => Ok(null),
                }
            }
            References::METHOD => {
                let p: lt::ReferenceParams = Self::parse(req)?;
                let decl = p.context.include_declaration;
                let found =
                    self.locations(p.text_document_position, |a, off| a.references(off, decl));
                to_json(serde_json::to_value(found))
            }
            Completion::METHOD => {
                let p: lt::CompletionParams = Self::parse(req)?;
                let Some((a, off)) = self.at(&p.text_document_position) else {
                    return Ok(null);
                };
                let params: Vec<String> = a
                    .spec
                    .as_ref()
                    .and_then(|s| analysis::block_at(s, off))
                    .map(|b| b.params.iter().map(|p| p.name.name.clone()).collect())
                    .unwrap_or_default();
                let items =
                    complete::complete(&a.src.text, &a.src.text[..off], a.src.syntax(), &params);
                to_json(serde_json::to_value(lt::CompletionResponse::Array(items)))
            }
            CodeActionRequest::METHOD => {
                let p: lt::CodeActionParams = Self::parse(req)?;
                let uri = p.text_document.uri;
                let Some(a) = self.analysis(&uri) else {
                    return Ok(serde_json::json!([]));
                };
                let idx = LineIndex::new(&a.src.text);
                let actions: Vec<lt::CodeActionOrCommand> = a
                    .quick_fix(idx.span(p.range))
                    .into_iter()
                    .map(|(span, new, title)| {
                        let edit = lt::TextEdit::new(idx.range(span), new);
                        lt::CodeActionOrCommand::CodeAction(lt::CodeAction {
                            title,
                            kind: Some(lt::CodeActionKind::QUICKFIX),
                            diagnostics: Some(a.diagnostics(&uri)),
                            edit: Some(lt::WorkspaceEdit {
                                changes: Some(HashMap::from([(uri.clone(), vec![edit])])),
                                ..Default::default()
                            }),
                            is_preferred: Some(true),
                            ..Default::default()
                        })
                    })
                    .collect();
                to_json(serde_json::to_value(actions))
            }
            Formatting::METHOD => {
                let p: lt::DocumentFormattingParams = Self::parse(req)?;
                let Some(a) = self.analysis(&p.text_document.uri) else {
                    return Ok(null);
                };
                // YAML is left alone.
                if a.src.syntax() != crate::source::Syntax::Dsl {
                    return Ok(null);
                }
                let new = format::format_dsl(&a.src.text);
                let idx = LineIndex::new(&a.src.text);
                let whole = idx.range(crate::source::Span::new(0, a.src.text.len()));
                let edits = if new == a.src.text {
                    vec![]
                } else {
                    vec![lt::TextEdit::new(whole, new)]
                };
                to_json(serde_json::to_value(edits))
            }
            _ => Err((
                ErrorCode::MethodNotFound,
                format!("se-compile lsp does not handle `{}`", req.method),
            )),
        }
    }
}
