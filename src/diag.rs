//! Diagnostics: every phase reports errors as `Diagnostic`s (a code naming the phase and the
//! kind of error, a message, the span, and what to do). Rendering is separate, so tests can
//! render them byte-stable (ASCII, no colour, fixed width).

use crate::source::{SourceFile, Span};
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, NamedSource};

#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// `phase::kind`, e.g. `shape::mismatch`. Phases: `file`, `parse`, `spec`, `expand`, `shape`, `limit`.
    pub code: &'static str,
    pub message: String,
    pub span: Option<Span>,
    pub label: String,
    pub help: Option<String>,
    /// Other places that explain the error, e.g. the first definition of a duplicate name.
    pub related: Vec<(Span, String)>,
}

impl Diagnostic {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            message: message.into(),
            span: None,
            label: String::new(),
            help: None,
            related: vec![],
        }
    }
    pub fn at(mut self, span: Span, label: impl Into<String>) -> Self {
        self.span = Some(span);
        self.label = label.into();
        self
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
    pub fn related(mut self, span: Span, label: impl Into<String>) -> Self {
        self.related.push((span, label.into()));
        self
    }
}

pub type Result<T> = std::result::Result<T, Diagnostic>;

/// How diagnostics look: `Plain` for tests and pipes, `Color` for terminals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Plain,
    Color,
}

/// Renders a diagnostic with the source line underlined and `file:line:col` in the header.
pub fn render(d: &Diagnostic, src: &SourceFile, style: Style) -> String {
    let mut md = MietteDiagnostic::new(d.message.clone()).with_code(d.code);
    if let Some(h) = &d.help {
        md = md.with_help(h.clone());
    }
    let clamp = |s: Span| {
        let start = s.start.min(src.text.len());
        let end = s.end.min(src.text.len()).max(start);
        (start, end - start)
    };
    let mut labels = vec![];
    if let Some(s) = d.span {
        labels.push(LabeledSpan::new_primary_with_span(
            Some(d.label.clone()),
            clamp(s),
        ));
    }
    for (s, l) in &d.related {
        labels.push(LabeledSpan::new_with_span(Some(l.clone()), clamp(*s)));
    }
    md = md.with_labels(labels);
    let report = miette::Report::new(md)
        .with_source_code(NamedSource::new(src.name.clone(), src.text.clone()));
    let theme = match style {
        Style::Plain => GraphicalTheme::none(),
        Style::Color => GraphicalTheme::unicode(),
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_links(false);
    let mut out = String::new();
    if handler.render_report(&mut out, report.as_ref()).is_err() {
        out = format!("error[{}]: {}", d.code, d.message);
    }
    // The header names the file; add line:col so every diagnostic can be jumped to from a shell.
    let location = match d.span {
        Some(s) => {
            let (l, c) = src.line_col(s.start);
            format!("{}:{}:{}", src.name, l, c)
        }
        None => src.name.clone(),
    };
    let mut text = format!("error: {location}: {}\n{out}", d.message);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// The closest candidate by edit distance, for "did you mean" hints.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = levenshtein(&word.to_lowercase(), &c.to_lowercase());
        let limit = (word.len().max(c.len()) / 3).max(1) + usize::from(word.len() > 6);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// "did you mean `x`?" or a list of what is allowed.
pub fn suggest(word: &str, candidates: &[&str]) -> String {
    match did_you_mean(word, candidates.iter().copied()) {
        Some(c) => format!("did you mean `{c}`?"),
        None if candidates.len() <= 30 => format!("expected one of: {}", candidates.join(", ")),
        None => "see the README for the list".to_string(),
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("filtres", ["filters", "kernel"]),
            Some("filters")
        );
        assert_eq!(did_you_mean("conv2dd", ["conv2d", "dense"]), Some("conv2d"));
        assert_eq!(did_you_mean("zzz", ["conv2d", "dense"]), None);
    }
}
