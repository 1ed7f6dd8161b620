//! One document's analysis: the compile `check` runs (parse → expand → validate), kept with the
//! AST and what each item expanded to, and what the editor asks of it: diagnostics, hover,
//! inlay hints, symbols, definitions and quick fixes.

use super::text::LineIndex;
use crate::diag::Diagnostic;
use crate::expand::Traced;
use crate::ir::ops::Op;
use crate::ir::{keras_shape, NodeId, Shape};
use crate::report::thousands;
use crate::source::{SourceFile, Span, Syntax};
use crate::spec::ast::{BlockDef, Item, ItemKind, SeSetting, Spec};
use crate::validate::ValidGraph;
use lsp_types as lt;
use std::collections::HashMap;

/// A compiled document: the AST when it parses, the graph when it also expands and validates,
/// the first error otherwise (as `check` reports it).
pub struct Analysis {
    pub src: SourceFile,
    pub spec: Option<Spec>,
    pub graph: Option<(ValidGraph, Vec<Traced>)>,
    pub error: Option<Diagnostic>,
    /// A `.yaml` file that is not a se-compile spec (no top-level `layers:`), left alone.
    pub foreign: bool,
}

/// Whether a YAML document is a se-compile spec: it has a top-level `layers:` key.
fn is_spec_yaml(text: &str) -> bool {
    text.lines().any(|l| l.starts_with("layers:"))
}

pub fn analyze(name: &str, text: &str) -> Analysis {
    let src = SourceFile::new(name, text);
    let foreign = src.syntax() == Syntax::Yaml && !is_spec_yaml(text);
    let mut a = Analysis {
        src,
        spec: None,
        graph: None,
        error: None,
        foreign,
    };
    if foreign {
        return a;
    }
    // The compiler never panics on any input the tests know of; if it did, the server lives
    // on and the editor sees an error instead of a dead language server.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let spec = crate::spec::parse(&a.src)?;
        let done = crate::expand::expand_traced(&spec)
            .and_then(|(g, trace)| Ok((crate::validate::validate(g)?, trace)));
        Ok::<_, Diagnostic>((spec, done))
    }));
    match run {
        Ok(Ok((spec, Ok(done)))) => {
            a.spec = Some(spec);
            a.graph = Some(done);
        }
        Ok(Ok((spec, Err(d)))) => {
            a.spec = Some(spec);
            a.error = Some(d);
        }
        Ok(Err(d)) => a.error = Some(d),
        Err(_) => {
            a.error = Some(
                Diagnostic::new("internal::panic", "se-compile failed on this text")
                    .help("this is a bug in se-compile; please report the spec"),
            )
        }
    }
    a
}

/// Every item of the spec (layers and block bodies, nested ones too), outer before inner.
pub fn all_items(spec: &Spec) -> Vec<&Item> {
    fn walk<'a>(items: &'a [Item], out: &mut Vec<&'a Item>) {
        for it in items {
            out.push(it);
            match &it.kind {
                ItemKind::Residual { shortcut, branch } => {
                    walk(shortcut, out);
                    walk(branch, out);
                }
                ItemKind::Parallel { branches } => {
                    for (_, b) in branches {
                        walk(b, out);
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = vec![];
    for b in &spec.blocks {
        walk(&b.body, &mut out);
    }
    walk(&spec.layers, &mut out);
    out
}

/// All the text an item covers: its span with its words, arguments and nested items (a YAML
/// item's own span is only where its entry starts).
pub fn extent(it: &Item) -> Span {
    let mut s = it.span;
    for i in [&it.name, &it.id].into_iter().flatten().chain(&it.from) {
        s = s.join(i.span);
    }
    if let Some(w) = &it.when {
        s = s.join(w.span);
    }
    match &it.kind {
        ItemKind::Call { op, args } | ItemKind::Stage { block: op, args } => {
            s = s.join(op.span);
            for a in args {
                s = s.join(a.value.span);
            }
        }
        ItemKind::Residual { shortcut, branch } => {
            for c in shortcut.iter().chain(branch) {
                s = s.join(extent(c));
            }
        }
        ItemKind::Parallel { branches } => {
            for c in branches.iter().flat_map(|(_, b)| b) {
                s = s.join(extent(c));
            }
        }
    }
    s
}

fn contains(s: Span, off: usize) -> bool {
    s.start <= off && off < s.end.max(s.start + 1)
}

/// The identifier under (or just before) `off`.
pub fn word_at(text: &str, off: usize) -> Option<(Span, &str)> {
    let b = text.as_bytes();
    let is_w = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let off = off.min(b.len());
    let mut s = off;
    while s > 0 && is_w(b[s - 1]) {
        s -= 1;
    }
    let mut e = off;
    while e < b.len() && is_w(b[e]) {
        e += 1;
    }
    (e > s).then(|| (Span::new(s, e), &text[s..e]))
}

struct NodeSum {
    params: u64,
    trainable: u64,
    macs: u64,
    layers: usize,
}

impl Analysis {
    /// The diagnostics `check` reports, as LSP diagnostics of `uri`.
    pub fn diagnostics(&self, uri: &lt::Uri) -> Vec<lt::Diagnostic> {
        let Some(d) = &self.error else {
            return vec![];
        };
        let idx = LineIndex::new(&self.src.text);
        let mut message = d.message.clone();
        if !d.label.is_empty() {
            message += &format!(" ({})", d.label);
        }
        if let Some(h) = &d.help {
            message += &format!("\nhelp: {h}");
        }
        let related = d
            .related
            .iter()
            .map(|(s, l)| lt::DiagnosticRelatedInformation {
                location: lt::Location::new(uri.clone(), idx.range(*s)),
                message: l.clone(),
            })
            .collect::<Vec<_>>();
        vec![lt::Diagnostic {
            range: idx.range(d.span.unwrap_or_default()),
            severity: Some(lt::DiagnosticSeverity::ERROR),
            code: Some(lt::NumberOrString::String(d.code.to_string())),
            source: Some("se-compile".into()),
            message,
            related_information: (!related.is_empty()).then_some(related),
            ..Default::default()
        }]
    }

    /// The trace entries of each item span.
    fn instances(&self) -> HashMap<Span, Vec<&Traced>> {
        let mut m: HashMap<Span, Vec<&Traced>> = HashMap::new();
        if let Some((_, trace)) = &self.graph {
            for t in trace {
                m.entry(t.span).or_default().push(t);
            }
        }
        m
    }

    fn sum(&self, vg: &ValidGraph, ts: &[&Traced]) -> NodeSum {
        let mut s = NodeSum {
            params: 0,
            trainable: 0,
            macs: 0,
            layers: 0,
        };
        for t in ts {
            for i in t.nodes.clone() {
                let st = vg.stats(NodeId(i));
                s.params += st.params.total();
                s.trainable += st.params.trainable;
                s.macs += st.macs;
                s.layers += 1;
            }
        }
        s
    }

    /// The item a hover or a definition at `off` is about: the innermost one holding `off`,
    /// else the first that starts on its line.
    fn item_at(&self, off: usize) -> Option<&Item> {
        let spec = self.spec.as_ref()?;
        let items = all_items(spec);
        if let Some(it) = items
            .iter()
            .filter(|it| contains(extent(it), off))
            .min_by_key(|it| extent(it).len())
        {
            return Some(it);
        }
        let line = LineIndex::new(&self.src.text).line_span(off);
        items
            .into_iter()
            .find(|it| it.span.start >= line.start && it.span.start <= line.end)
    }

    /// Markdown for a hover at byte `off`, or `None` where there is nothing to say.
    pub fn hover(&self, off: usize) -> Option<(String, Span)> {
        let spec = self.spec.as_ref()?;
        let (vg, _) = self.graph.as_ref()?;
        let idx = LineIndex::new(&self.src.text);
        let line = idx.line_span(off);
        let on_line = |s: Span| s.start <= line.end && s.end >= line.start;
        // The model-level `se` setting.
        if let Some(SeSetting::On(_, s) | SeSetting::Off(s)) = &spec.se {
            if on_line(*s) && !self.item_at(off).is_some_and(|it| on_line(it.span)) {
                return Some((self.se_setting_hover(spec, vg), *s));
            }
        }
        // A block template's definition: its uses.
        if let Some(b) = spec.blocks.iter().find(|b| on_line(b.name.span)) {
            return Some((block_hover(vg, b), b.name.span));
        }
        let item = self.item_at(off)?;
        let inst = self.instances();
        let ts: Vec<&Traced> = inst.get(&item.span).cloned().unwrap_or_default();
        let text = match &item.kind {
            ItemKind::Call { op, .. } if op.name == "se" => self.se_item_hover(vg, &ts),
            ItemKind::Call { op, .. }
                if crate::ir::ops::LAYER_KINDS.contains(&op.name.as_str()) =>
            {
                self.layer_hover(vg, &op.name, &ts)
            }
            _ => self.group_hover(vg, item, &ts),
        };
        Some((text, item.span))
    }

    fn layer_hover(&self, vg: &ValidGraph, kind: &str, ts: &[&Traced]) -> String {
        let g = vg.graph();
        let made: Vec<NodeId> = ts
            .iter()
            .flat_map(|t| t.nodes.clone())
            .map(NodeId)
            .collect();
        let mut out = format!("**{kind}**");
        match made.as_slice() {
            [] => out += " — skipped (its condition is false, or it is never used)",
            [id] => {
                let n = g.node(*id);
                let st = vg.stats(*id);
                out += &format!(
                    " `{}` ({})\n\n| output | params | MACs |\n|---|---|---|\n| `{}` | {} | {} |\n",
                    n.name,
                    n.op.keras_class(),
                    keras_shape(&n.shape),
                    params_text(st.params.total(), st.params.trainable),
                    thousands(st.macs)
                );
                let cfg = n.op.config();
                if !cfg.is_empty() {
                    out += &format!("\n{cfg}\n");
                }
            }
            many => {
                let s = self.sum(vg, ts);
                out += &format!(
                    " — {} layers from this line (one per use of its block)\n\n| layer | output | params | MACs |\n|---|---|---|---|\n",
                    many.len()
                );
                for id in many.iter().take(12) {
                    let st = vg.stats(*id);
                    out += &format!(
                        "| `{}` | `{}` | {} | {} |\n",
                        g.node(*id).name,
                        keras_shape(&g.node(*id).shape),
                        thousands(st.params.total()),
                        thousands(st.macs)
                    );
                }
                if many.len() > 12 {
                    out += &format!("| … {} more | | | |\n", many.len() - 12);
                }
                out += &format!(
                    "\n**total** params {}, MACs {}\n",
                    params_text(s.params, s.trainable),
                    thousands(s.macs)
                );
            }
        }
        out
    }

    fn group_hover(&self, vg: &ValidGraph, item: &Item, ts: &[&Traced]) -> String {
        let what = match &item.kind {
            ItemKind::Stage { block, .. } => {
                let blocks = self.blocks_made(ts);
                format!("**stage** of `{}` — {blocks} blocks", block.name)
            }
            ItemKind::Call { op, .. } => format!("**{}** (block template)", op.name),
            ItemKind::Residual { .. } => "**residual**".to_string(),
            ItemKind::Parallel { .. } => "**parallel**".to_string(),
        };
        let s = self.sum(vg, ts);
        let uses = ts.len();
        let mut out = what;
        if uses > 1 {
            out += &format!(" — expanded {uses} times");
        }
        out += &format!(
            "\n\n| layers | output | params | MACs |\n|---|---|---|---|\n| {} | {} | {} | {} |\n",
            s.layers,
            self.out_shapes(vg, ts),
            params_text(s.params, s.trainable),
            thousands(s.macs)
        );
        out
    }

    /// How many blocks a stage's instances made (its `repeat`): the block scopes among its nodes.
    fn blocks_made(&self, ts: &[&Traced]) -> usize {
        let Some((vg, _)) = &self.graph else {
            return 0;
        };
        let mut seen = std::collections::HashSet::new();
        for t in ts {
            for i in t.nodes.clone() {
                if let Some((b, _)) = &vg.graph().node(NodeId(i)).scope.block {
                    seen.insert(b.clone());
                }
            }
        }
        seen.len()
    }

    /// The distinct output shapes of an item's instances: `(None, 56, 56, 256)`, or a few
    /// joined by `|`.
    fn out_shapes(&self, vg: &ValidGraph, ts: &[&Traced]) -> String {
        let shapes = distinct_shapes(vg, ts);
        let mut parts: Vec<String> = shapes
            .iter()
            .take(3)
            .map(|s| format!("`{}`", keras_shape(s)))
            .collect();
        if shapes.len() > 3 {
            parts.push("…".into());
        }
        parts.join(" \\| ")
    }

    fn se_item_hover(&self, vg: &ValidGraph, ts: &[&Traced]) -> String {
        let blocks: Vec<SeBlock> = ts.iter().filter_map(|t| se_block(vg, t)).collect();
        if blocks.is_empty() {
            return "**se** — off here: no SE block is made".into();
        }
        let s = self.sum(vg, ts);
        let mut out = format!(
            "**se** — {} SE block{}\n\n| channels C | squeeze width | gate |\n|---|---|---|\n",
            blocks.len(),
            if blocks.len() == 1 { "" } else { "s" }
        );
        out += &se_table(&blocks);
        out += &format!(
            "\n**overhead** params {}, MACs {} ({} of the model's params)\n",
            params_text(s.params, s.trainable),
            thousands(s.macs),
            percent(s.params, vg.totals().params.total())
        );
        out
    }

    fn se_setting_hover(&self, spec: &Spec, vg: &ValidGraph) -> String {
        let inst = self.instances();
        let ts: Vec<&Traced> = all_items(spec)
            .into_iter()
            .filter(|it| it.op_name() == "se")
            .flat_map(|it| inst.get(&it.span).cloned().unwrap_or_default())
            .collect();
        let blocks: Vec<SeBlock> = ts.iter().filter_map(|t| se_block(vg, t)).collect();
        if blocks.is_empty() {
            return "**se** — the model makes no SE block".into();
        }
        let s = self.sum(vg, &ts);
        format!(
            "**se** — the model makes {} SE blocks\n\n| channels C | squeeze width | gate |\n|---|---|---|\n{}\n**overhead** params {}, MACs {}: {} of the model's params, {} of its MACs\n",
            blocks.len(),
            se_table(&blocks),
            params_text(s.params, s.trainable),
            thousands(s.macs),
            percent(s.params, vg.totals().params.total()),
            percent(s.macs, vg.totals().macs),
        )
    }
}

fn block_hover(vg: &ValidGraph, b: &BlockDef) -> String {
    let g = vg.graph();
    let mut instances = std::collections::BTreeSet::new();
    let mut sum = (0u64, 0u64);
    for id in g.ids() {
        if let Some((inst, t)) = &g.node(id).scope.block {
            if *t == b.name.name {
                instances.insert(inst.clone());
                sum.0 += vg.stats(id).params.total();
                sum.1 += vg.stats(id).macs;
            }
        }
    }
    let params: Vec<&str> = b.params.iter().map(|p| p.name.name.as_str()).collect();
    format!(
        "**block** `{}({})` — used {} times\n\nall uses: params {}, MACs {}\n",
        b.name.name,
        params.join(", "),
        instances.len(),
        thousands(sum.0),
        thousands(sum.1)
    )
}

impl Analysis {
    /// The last byte of an item's own text: its span without the blank and comment lines the
    /// parser may have taken after it.
    fn last_byte(&self, span: Span) -> usize {
        let t = self.src.text.as_bytes();
        let mut e = span.end.min(t.len());
        loop {
            while e > span.start && t[e - 1].is_ascii_whitespace() {
                e -= 1;
            }
            let line_start = t[..e]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let own = &self.src.text[line_start.max(span.start)..e];
            if line_start > span.start && own.trim_start().starts_with('#') {
                e = line_start;
            } else {
                return e.saturating_sub(1).max(span.start);
            }
        }
    }

    /// The output shape at the end of each layer line: one hint per line, for the innermost
    /// item that ends on it, within `range` (byte span).
    pub fn inlay_hints(&self, range: Span) -> Vec<(usize, String)> {
        let Some((vg, _)) = &self.graph else {
            return vec![];
        };
        let idx = LineIndex::new(&self.src.text);
        let mut best: HashMap<usize, (usize, String)> = HashMap::new();
        for (span, ts) in self.instances() {
            let shapes = distinct_shapes(vg, &ts);
            if shapes.is_empty() {
                continue;
            }
            let end = idx.line_span(self.last_byte(span)).end;
            if end < range.start || end > range.end {
                continue;
            }
            let mut label: Vec<String> = shapes.iter().take(3).map(|s| keras_shape(s)).collect();
            if shapes.len() > 3 {
                label.push("…".into());
            }
            let label = format!("→ {}", label.join(" | "));
            let e = best.entry(end).or_insert((span.start, label.clone()));
            if span.start >= e.0 {
                *e = (span.start, label);
            }
        }
        let mut v: Vec<(usize, String)> = best.into_iter().map(|(k, (_, l))| (k, l)).collect();
        v.sort();
        v
    }

    /// The outline: block templates and the layers, with their items nested.
    pub fn symbols(&self) -> Vec<lt::DocumentSymbol> {
        let Some(spec) = &self.spec else {
            return vec![];
        };
        let idx = LineIndex::new(&self.src.text);
        let inst = self.instances();
        let shape_of = |it: &Item| -> Option<String> {
            let (vg, _) = self.graph.as_ref()?;
            let ts = inst.get(&it.span)?;
            let shapes = distinct_shapes(vg, ts);
            (shapes.len() == 1).then(|| keras_shape(&shapes[0]))
        };
        fn items(
            list: &[Item],
            idx: &LineIndex,
            shape_of: &dyn Fn(&Item) -> Option<String>,
        ) -> Vec<lt::DocumentSymbol> {
            list.iter()
                .map(|it| {
                    let (name, sel, kind, children) = match &it.kind {
                        ItemKind::Call { op, .. } => (
                            op.name.clone(),
                            op.span,
                            if crate::ir::ops::LAYER_KINDS.contains(&op.name.as_str()) {
                                lt::SymbolKind::FUNCTION
                            } else {
                                lt::SymbolKind::MODULE
                            },
                            vec![],
                        ),
                        ItemKind::Stage { block, .. } => (
                            format!("stage {}", block.name),
                            block.span,
                            lt::SymbolKind::MODULE,
                            vec![],
                        ),
                        ItemKind::Residual { shortcut, branch } => {
                            let mut c = items(shortcut, idx, shape_of);
                            c.extend(items(branch, idx, shape_of));
                            ("residual".into(), it.span, lt::SymbolKind::STRUCT, c)
                        }
                        ItemKind::Parallel { branches } => {
                            let c = branches
                                .iter()
                                .flat_map(|(_, b)| items(b, idx, shape_of))
                                .collect();
                            ("parallel".into(), it.span, lt::SymbolKind::STRUCT, c)
                        }
                    };
                    let name = match (&it.name, &it.id) {
                        (Some(n), _) => format!("{name} `{}`", n.name),
                        (None, Some(i)) => format!("{name} as {}", i.name),
                        _ => name,
                    };
                    symbol(idx, name, shape_of(it), kind, extent(it), sel, children)
                })
                .collect()
        }
        let mut out = vec![];
        for b in &spec.blocks {
            let params: Vec<&str> = b.params.iter().map(|p| p.name.name.as_str()).collect();
            out.push(symbol(
                &idx,
                format!("block {}", b.name.name),
                Some(format!("({})", params.join(", "))),
                lt::SymbolKind::CLASS,
                b.body.iter().fold(b.span, |s, it| s.join(extent(it))),
                b.name.span,
                items(&b.body, &idx, &shape_of),
            ));
        }
        let layers_span = spec
            .layers
            .iter()
            .fold(spec.layers_span, |s, it| s.join(extent(it)));
        out.push(symbol(
            &idx,
            "layers".into(),
            spec.model.as_ref().map(|m| m.name.clone()),
            lt::SymbolKind::NAMESPACE,
            layers_span,
            spec.layers_span,
            items(&spec.layers, &idx, &shape_of),
        ));
        out
    }

    /// Go to definition: a template use → its `block`; a `from` reference → the layer it names;
    /// a block parameter inside its body → the parameter.
    pub fn definition(&self, off: usize) -> Option<Span> {
        let spec = self.spec.as_ref()?;
        let (at, word) = word_at(&self.src.text, off)?;
        let items = all_items(spec);
        let block = |name: &str| spec.blocks.iter().find(|b| b.name.name == name);
        for it in &items {
            match &it.kind {
                ItemKind::Call { op, .. } if op.span == at || contains(op.span, off) => {
                    if let Some(b) = block(&op.name) {
                        return Some(b.name.span);
                    }
                }
                ItemKind::Stage { block: bn, .. } if contains(bn.span, off) => {
                    return block(&bn.name).map(|b| b.name.span);
                }
                _ => {}
            }
            if it.from.iter().any(|f| contains(f.span, off)) {
                // The nearest earlier item labelled or named so; else a layer's automatic name.
                let target = items
                    .iter()
                    .filter(|o| o.span.start < at.start)
                    .filter_map(|o| {
                        [&o.id, &o.name]
                            .into_iter()
                            .flatten()
                            .find(|i| i.name == word)
                            .map(|i| i.span)
                    })
                    .max_by_key(|s| s.start);
                if target.is_some() {
                    return target;
                }
                let (vg, _) = self.graph.as_ref()?;
                let g = vg.graph();
                return g
                    .ids()
                    .find(|&i| g.node(i).name == word)
                    .map(|i| g.node(i).span);
            }
        }
        // A parameter used inside its block.
        let b = block_at(spec, off)?;
        b.params
            .iter()
            .find(|p| p.name.name == word && p.name.span != at)
            .map(|p| p.name.span)
    }

    /// Find references: for a block template, its definition and every use; for a label or a
    /// layer name, where it is given and every `from` that reads it. Definitions come first.
    pub fn references(&self, off: usize, with_definition: bool) -> Vec<Span> {
        let Some(spec) = &self.spec else {
            return vec![];
        };
        let Some((_, word)) = word_at(&self.src.text, off) else {
            return vec![];
        };
        let items = all_items(spec);
        let (mut defs, mut uses) = (vec![], vec![]);
        if let Some(b) = spec.blocks.iter().find(|b| b.name.name == word) {
            defs.push(b.name.span);
            for it in &items {
                match &it.kind {
                    ItemKind::Call { op: i, .. } | ItemKind::Stage { block: i, .. }
                        if i.name == word =>
                    {
                        uses.push(i.span)
                    }
                    _ => {}
                }
            }
        } else {
            for it in &items {
                defs.extend(
                    [&it.id, &it.name]
                        .into_iter()
                        .flatten()
                        .filter(|i| i.name == word)
                        .map(|i| i.span),
                );
                uses.extend(it.from.iter().filter(|i| i.name == word).map(|i| i.span));
            }
        }
        if defs.is_empty() && uses.is_empty() {
            return vec![];
        }
        if with_definition {
            defs.extend(uses);
            defs
        } else {
            uses
        }
    }

    /// Quick fixes: the error's "did you mean `x`?" as an edit of its span.
    pub fn quick_fix(&self, range: Span) -> Option<(Span, String, String)> {
        let d = self.error.as_ref()?;
        let span = d.span?;
        if span.end < range.start || span.start > range.end {
            return None;
        }
        let help = d.help.as_deref()?;
        let rest = &help[help.find("did you mean `")? + "did you mean `".len()..];
        let fix = &rest[..rest.find('`')?];
        let old = self.src.text.get(span.start..span.end)?;
        // Only a bare word is replaced (a quoted YAML value keeps its quotes).
        let (old_span, _) = word_at(&self.src.text, span.start)
            .filter(|(s, w)| s.start == span.start && !w.is_empty() && old.starts_with(w))?;
        Some((old_span, fix.to_string(), format!("replace with `{fix}`")))
    }
}

/// The block template whose text holds `off`. A DSL block's span is its whole text; a YAML
/// block's is its name, so there it reaches to the next top-level thing (another block,
/// `layers`, `train`, `input`).
pub fn block_at(spec: &Spec, off: usize) -> Option<&BlockDef> {
    if let Some(b) = spec
        .blocks
        .iter()
        .find(|b| b.span != b.name.span && contains(b.span, off))
    {
        return Some(b);
    }
    let mut starts: Vec<usize> = spec.blocks.iter().map(|b| b.span.start).collect();
    starts.extend([spec.layers_span.start, spec.input_span.start]);
    starts.extend(spec.train_span.map(|s| s.start));
    spec.blocks.iter().rfind(|b| {
        let end = starts.iter().filter(|&&s| s > b.span.start).min();
        b.span == b.name.span && b.span.start <= off && end.is_none_or(|&e| off < e)
    })
}

fn symbol(
    idx: &LineIndex,
    name: String,
    detail: Option<String>,
    kind: lt::SymbolKind,
    span: Span,
    sel: Span,
    children: Vec<lt::DocumentSymbol>,
) -> lt::DocumentSymbol {
    let sel = if sel.start >= span.start && sel.end <= span.end {
        sel
    } else {
        span
    };
    #[allow(deprecated)]
    lt::DocumentSymbol {
        name: if name.is_empty() { "?".into() } else { name },
        detail,
        kind,
        tags: None,
        deprecated: None,
        range: idx.range(span),
        selection_range: idx.range(sel),
        children: (!children.is_empty()).then_some(children),
    }
}

fn distinct_shapes(vg: &ValidGraph, ts: &[&Traced]) -> Vec<Shape> {
    let mut shapes: Vec<Shape> = vec![];
    for t in ts.iter().filter(|t| !t.nodes.is_empty()) {
        let s = &vg.graph().node(t.out).shape;
        if !shapes.contains(s) {
            shapes.push(s.clone());
        }
    }
    shapes
}

fn params_text(total: u64, trainable: u64) -> String {
    if total == trainable {
        thousands(total)
    } else {
        format!("{} ({} trainable)", thousands(total), thousands(trainable))
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0%".into();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

/// One SE block as expansion made it (`expand::se`): pool, reshape, squeeze, [relu,] excite,
/// gate, multiply.
#[derive(Clone, Debug, PartialEq)]
struct SeBlock {
    channels: usize,
    width: usize,
    gate: String,
}

fn se_block(vg: &ValidGraph, t: &Traced) -> Option<SeBlock> {
    let g = vg.graph();
    let r = t.nodes.clone();
    if r.len() < 6 {
        return None;
    }
    let squeeze = g.node(NodeId(r.start + 2));
    let gate = g.node(NodeId(r.end - 2));
    let gate = match &gate.op {
        Op::Activation(a) => a.function.name().to_string(),
        _ => return None,
    };
    Some(SeBlock {
        channels: *g.node(t.out).shape.last()?,
        width: *squeeze.shape.last()?,
        gate,
    })
}

/// One row per distinct (C, width, gate), with how many blocks have it.
fn se_table(blocks: &[SeBlock]) -> String {
    let mut rows: Vec<(&SeBlock, usize)> = vec![];
    for b in blocks {
        match rows.iter_mut().find(|(r, _)| *r == b) {
            Some((_, n)) => *n += 1,
            None => rows.push((b, 1)),
        }
    }
    rows.iter()
        .map(|(b, n)| {
            let times = if *n > 1 {
                format!(" (×{n})")
            } else {
                String::new()
            };
            format!("| {}{times} | {} | {} |\n", b.channels, b.width, b.gate)
        })
        .collect()
}
