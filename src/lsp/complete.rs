//! Completion from the text before the cursor (it works while the spec does not parse):
//! layer kinds and template names where an item starts, a kind's keys inside its arguments,
//! the allowed words of a key after `=` / `:`, and a template's parameters. Keys and words come
//! from the parsers in schema mode (`Args::record_keys`), the tables `se-compile schema` uses.

use crate::ir::args::{Args, KeyType, RecordedKeys};
use crate::ir::ops::{Op, LAYER_KINDS};
use crate::source::Syntax;
use lsp_types::{CompletionItem, CompletionItemKind};

/// What the cursor is in.
#[derive(Debug, PartialEq)]
pub enum Context {
    /// Where an item starts: a layer kind or template name.
    Kind,
    /// Inside `kind(` / `kind: {`, where a key goes.
    Key(String),
    /// After `key =` / `key:` inside `kind`.
    Value(String, String),
}

/// The keys a kind reads (`se`, `train` and every layer kind), as the schema has them.
pub fn keys_of(kind: &str) -> Option<RecordedKeys> {
    match kind {
        "se" => Some(Args::record_keys("se", crate::expand::se::SeConfig::read)),
        "train" => Some(Args::record_keys(
            "train",
            crate::spec::recipe::TrainConfig::from_args,
        )),
        k if LAYER_KINDS.contains(&k) => Some(Args::record_keys(k, |a| {
            Op::parse(k, a).expect("a known kind")
        })),
        _ => None,
    }
}

fn ident_before(s: &str) -> Option<&str> {
    let s = s.trim_end();
    let start = s
        .char_indices()
        .rfind(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
        .map_or(0, |(i, c)| i + c.len_utf8());
    (start < s.len()).then(|| &s[start..])
}

/// The cursor's context from the text before it.
pub fn context(before: &str, syntax: Syntax) -> Context {
    // Innermost unclosed bracket, looking back at most 4 KiB.
    let from = before.len().saturating_sub(4096);
    let from = (from..=before.len())
        .find(|&i| before.is_char_boundary(i))
        .unwrap_or(before.len());
    let tail = &before[from..];
    let mut depth = 0i32;
    let mut open = None;
    for (i, c) in tail.char_indices().rev() {
        match c {
            ')' | ']' | '}' => depth += 1,
            '(' | '[' | '{' if depth > 0 => depth -= 1,
            '(' | '{' => {
                open = Some((i, c));
                break;
            }
            '\n' if syntax == Syntax::Yaml && depth == 0 => break,
            _ => {}
        }
    }
    if let Some((i, c)) = open {
        let head = &tail[..i];
        let kind = match (syntax, c) {
            (Syntax::Dsl, '(') => ident_before(head),
            (Syntax::Yaml, '{') => ident_before(head.trim_end().strip_suffix(':').unwrap_or("")),
            _ => None,
        };
        if let Some(kind) = kind {
            let seg = tail[i + 1..].rsplit(',').next().unwrap_or("");
            let sep = if syntax == Syntax::Dsl { '=' } else { ':' };
            return match seg.split_once(sep) {
                Some((k, _)) => Context::Value(kind.into(), k.trim().into()),
                None => Context::Key(kind.into()),
            };
        }
        if syntax == Syntax::Dsl {
            return Context::Kind;
        }
    }
    if syntax == Syntax::Dsl {
        return Context::Kind;
    }
    yaml_block_context(before)
}

/// YAML's block style: `  - conv2d:` then `      padding: sa|` on an indented line.
fn yaml_block_context(before: &str) -> Context {
    let mut lines = before.rsplit('\n');
    let cur = lines.next().unwrap_or("");
    let indent = cur.len() - cur.trim_start().len();
    let body = cur.trim_start();
    if body.starts_with('-') || body.is_empty() && indent == 0 {
        return Context::Kind;
    }
    let parent = lines.find_map(|l| {
        let ind = l.len() - l.trim_start().len();
        let t = l.trim_start().trim_start_matches("- ").trim_end();
        (ind < indent && !t.is_empty() && !t.starts_with('#')).then_some(t)
    });
    let parent_kind = parent
        .and_then(|p| p.strip_suffix(':'))
        .filter(|k| k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    let Some(kind) = parent_kind else {
        return Context::Kind;
    };
    if matches!(kind, "layers" | "body" | "branch" | "shortcut") {
        return Context::Kind;
    }
    match body.split_once(':') {
        Some((k, _)) => Context::Value(kind.into(), k.trim().into()),
        None => Context::Key(kind.into()),
    }
}

/// The templates a text defines, with their parameters: `block name(a, b = 1)` in the DSL, the
/// keys under `blocks:` (and their `params:`) in YAML. Read from the text, so it works while
/// the spec does not parse.
pub fn templates(text: &str, syntax: Syntax) -> Vec<(String, Vec<String>)> {
    let mut out = vec![];
    match syntax {
        Syntax::Dsl => {
            let mut rest = text;
            while let Some(i) = rest.find("block ") {
                let after = &rest[i + 6..];
                rest = after;
                let name: String = after
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name.is_empty() {
                    continue;
                }
                let params = after
                    .split_once('(')
                    .and_then(|(_, p)| p.split_once(')'))
                    .map(|(p, _)| {
                        p.split(',')
                            .filter_map(|x| ident_before(x.split('=').next().unwrap_or("")))
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((name, params));
            }
        }
        Syntax::Yaml => {
            let mut in_blocks = false;
            for l in text.lines() {
                if !l.starts_with(' ') && !l.is_empty() {
                    in_blocks = l.trim_end() == "blocks:";
                    continue;
                }
                let ind = l.len() - l.trim_start().len();
                let t = l.trim();
                if in_blocks && ind == 2 {
                    if let Some(n) = t.strip_suffix(':') {
                        out.push((n.to_string(), vec![]));
                    }
                } else if in_blocks && ind > 2 {
                    if let (Some(last), Some(p)) = (out.last_mut(), t.strip_prefix("params:")) {
                        let p = p.trim().trim_start_matches(['[', '{']);
                        let p = p.trim_end_matches([']', '}']);
                        last.1 = p
                            .split(',')
                            .filter_map(|x| ident_before(x.split(':').next().unwrap_or("")))
                            .map(String::from)
                            .collect();
                    }
                }
            }
        }
    }
    out
}

fn item(label: &str, kind: CompletionItemKind, detail: &str) -> CompletionItem {
    CompletionItem {
        label: label.to_string(),
        kind: Some(kind),
        detail: (!detail.is_empty()).then(|| detail.to_string()),
        ..Default::default()
    }
}

fn type_text(t: &KeyType) -> String {
    match t {
        KeyType::Int { min } => format!("integer ≥ {min}"),
        KeyType::Float { lo, hi } => format!("number in [{lo}, {hi}]"),
        KeyType::Bool => "true | false".into(),
        KeyType::Word(w) => w.join(" | "),
        KeyType::Pair { min } => format!("integer ≥ {min} or [a, b]"),
        KeyType::Any => "value".into(),
    }
}

/// Completion items at the end of `before` (the text up to the cursor) in a document `text`.
/// `enclosing_params` are the parameters of the block template the cursor is in.
pub fn complete(
    text: &str,
    before: &str,
    syntax: Syntax,
    enclosing_params: &[String],
) -> Vec<CompletionItem> {
    let templates = templates(text, syntax);
    let template = |k: &str| templates.iter().find(|(n, _)| n == k);
    let mut out = vec![];
    match context(before, syntax) {
        Context::Kind => {
            for k in LAYER_KINDS {
                out.push(item(k, CompletionItemKind::FUNCTION, "layer"));
            }
            for k in ["se", "stage", "residual", "shortcut", "branch", "parallel"] {
                out.push(item(k, CompletionItemKind::KEYWORD, ""));
            }
            for (n, p) in &templates {
                let d = format!("block({})", p.join(", "));
                out.push(item(n, CompletionItemKind::CLASS, &d));
            }
        }
        Context::Key(kind) => {
            if let Some(r) = keys_of(&kind) {
                for (k, t) in &r.keys {
                    out.push(item(k, CompletionItemKind::PROPERTY, &type_text(t)));
                }
                // A positional first argument: its words too (`activation(relu)`).
                if let Some((_, KeyType::Word(ws))) = r
                    .positional
                    .first()
                    .and_then(|p| r.keys.iter().find(|(k, _)| k == p))
                {
                    for w in ws {
                        out.push(item(w, CompletionItemKind::ENUM_MEMBER, "positional"));
                    }
                }
            } else if kind == "stage" {
                for k in ["block", "repeat", "stride", "se"] {
                    out.push(item(k, CompletionItemKind::PROPERTY, "stage"));
                }
                for (n, p) in &templates {
                    let d = format!("block({})", p.join(", "));
                    out.push(item(n, CompletionItemKind::CLASS, &d));
                    for p in p {
                        out.push(item(
                            p,
                            CompletionItemKind::PROPERTY,
                            &format!("{n} parameter"),
                        ));
                    }
                }
            } else if let Some((n, ps)) = template(&kind) {
                for p in ps {
                    out.push(item(
                        p,
                        CompletionItemKind::PROPERTY,
                        &format!("{n} parameter"),
                    ));
                }
            }
        }
        Context::Value(kind, key) => {
            if let Some(KeyType::Word(ws)) = keys_of(&kind)
                .and_then(|r| r.keys.into_iter().find(|(k, _)| *k == key).map(|x| x.1))
            {
                for w in ws {
                    out.push(item(&w, CompletionItemKind::ENUM_MEMBER, &key));
                }
            }
            if kind == "stage" && key == "block" {
                for (n, _) in &templates {
                    out.push(item(n, CompletionItemKind::CLASS, "block"));
                }
            }
            for p in enclosing_params {
                out.push(item(p, CompletionItemKind::VARIABLE, "block parameter"));
            }
            for v in ["classes", "input_height", "input_width", "input_channels"] {
                out.push(item(v, CompletionItemKind::CONSTANT, "model"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts() {
        use Context::*;
        let dsl = |s| context(s, Syntax::Dsl);
        assert_eq!(dsl("layers {\n  con"), Kind);
        assert_eq!(dsl("  conv2d(filters = 64, ker"), Key("conv2d".into()));
        assert_eq!(
            dsl("  conv2d(filters = 64, padding = sa"),
            Value("conv2d".into(), "padding".into())
        );
        assert_eq!(dsl("  conv2d(filters = min(3, 4), "), Key("conv2d".into()));
        let y = |s| context(s, Syntax::Yaml);
        assert_eq!(
            y("layers:\n  - conv2d: {filters: 64, padding: "),
            Value("conv2d".into(), "padding".into())
        );
        assert_eq!(y("layers:\n  - conv2d:\n      fil"), Key("conv2d".into()));
        assert_eq!(
            y("layers:\n  - activation:\n      function: re"),
            Value("activation".into(), "function".into())
        );
        assert_eq!(y("layers:\n  - "), Kind);
        // Odd text never panics: unbalanced closers, multibyte characters.
        for s in [")))", "é(", "{{{:", "- a:\n\u{1F600}", ""] {
            context(s, Syntax::Dsl);
            context(s, Syntax::Yaml);
        }
    }

    #[test]
    fn templates_from_text() {
        let t = templates("block bottleneck(filters, stride = 1) {\n}", Syntax::Dsl);
        assert_eq!(
            t,
            vec![("bottleneck".into(), vec!["filters".into(), "stride".into()])]
        );
        let y = "blocks:\n  basic:\n    params: [filters, stride]\n    body: []\nlayers: []\n";
        assert_eq!(
            templates(y, Syntax::Yaml),
            vec![("basic".into(), vec!["filters".into(), "stride".into()])]
        );
    }
}
