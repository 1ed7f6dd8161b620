//! The library's top-level modules (`src/lib.rs`'s `pub mod`s) depend on each other without a
//! cycle. Every file under src/ but the binary (`main.rs`, `commands/`) is read as text: each
//! `crate::a::...` path (also inside `use crate::{a::..., b::...}`) and each `super::` path that
//! climbs out of its top-level module is an edge from the file's top-level module to `a`.
//! Items of `lib.rs` itself (`crate::compile`) are the node `lib`, re-exports (`crate::Diagnostic`)
//! count for the module they come from. Comment lines are skipped; an inline `mod tests` counts
//! as its file.
//!
//! `cargo test --test module_graph -- --nocapture` prints the graph, lowest layer first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The node for the items defined in `lib.rs` (`compile`, `load`, ...).
const ROOT: &str = "lib";

/// From module `from` to module `to`: the places (`file:line`) that make the edge.
type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The identifier at the start of `s`.
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first path segment of every item in a `{a::x, b::{y, z}, c}` group (`s` starts after
/// the `{`).
fn group_heads(s: &str) -> Vec<&str> {
    let mut heads = vec![];
    let mut depth = 0;
    let mut at_item = true;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_item = true,
            c if at_item && (c.is_alphanumeric() || c == '_') => {
                heads.push(ident(&s[i..]));
                at_item = false;
            }
            _ => {}
        }
    }
    heads
}

/// The first segments of the path(s) `rest` starts with: `a::x` or a group `{a::x, b}`.
fn path_heads(rest: &str) -> Vec<&str> {
    match rest.strip_prefix('{') {
        Some(group) => group_heads(group),
        None => vec![ident(rest)],
    }
}

/// What lib.rs declares: its modules, its own items, and where its re-exports come from.
struct Root {
    modules: BTreeSet<String>,
    items: BTreeSet<String>,
    reexports: BTreeMap<String, String>,
}

fn read_root(text: &str) -> Root {
    let mut root = Root {
        modules: BTreeSet::new(),
        items: BTreeSet::new(),
        reexports: BTreeMap::new(),
    };
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("pub mod ") {
            root.modules.insert(ident(rest).to_string());
        } else if let Some(rest) = line.strip_prefix("pub use ") {
            let path = rest.trim_end_matches(';');
            let name = path.rsplit("::").next().unwrap();
            root.reexports
                .insert(name.to_string(), ident(path).to_string());
        } else {
            for kw in [
                "pub fn ",
                "pub enum ",
                "pub struct ",
                "pub const ",
                "pub type ",
            ] {
                if let Some(rest) = line.strip_prefix(kw) {
                    root.items.insert(ident(rest).to_string());
                }
            }
        }
    }
    root
}

/// The top-level module a path's first segment after `crate::` names, if any.
fn target(root: &Root, head: &str) -> Option<String> {
    if root.modules.contains(head) {
        Some(head.to_string())
    } else if let Some(m) = root.reexports.get(head) {
        Some(m.clone())
    } else if root.items.contains(head) {
        Some(ROOT.to_string())
    } else {
        None
    }
}

fn module_graph(src: &Path) -> Graph {
    let root = read_root(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut files = vec![];
    rust_files(src, &mut files);
    files.sort();
    let mut graph = Graph::new();
    for m in root.modules.iter().map(String::as_str).chain([ROOT]) {
        graph.entry(m.to_string()).or_default();
    }
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let parts: Vec<String> = rel
            .with_extension("")
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if parts[0] == "main" || parts[0] == "commands" {
            continue; // the binary
        }
        // The file's module path: src/lower/kernelnet/mod.rs is lower::kernelnet.
        let mut module: Vec<&str> = parts.iter().map(String::as_str).collect();
        if matches!(module.last(), Some(&"mod") | Some(&"lib")) {
            module.pop();
        }
        let from = module.first().copied().unwrap_or(ROOT).to_string();
        // Comment lines blanked (line numbers stay), and in lib.rs its `pub mod` lines.
        let code: String = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(|l| {
                let t = l.trim_start();
                let skip = t.starts_with("//") || (from == ROOT && t.starts_with("pub mod "));
                if skip {
                    "\n".to_string()
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        // (offset, first segment) of every path that may leave the module; a `{...}` group,
        // which may span lines, gives one per item.
        let mut heads: Vec<(usize, &str)> = vec![];
        for (i, _) in code.match_indices("crate::") {
            if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$') {
                continue; // `$crate::` and the like
            }
            let rest = &code[i + "crate::".len()..];
            heads.extend(path_heads(rest).into_iter().map(|h| (i, h)));
        }
        // `super::super::x` from lower/kernelnet/mod.rs is lower::x; from a file directly in a
        // top-level module, `super::x` leaves it.
        for (i, _) in code.match_indices("super::") {
            if code[..i].ends_with("super::") {
                continue;
            }
            let mut rest = &code[i..];
            let mut up = 0;
            while let Some(r) = rest.strip_prefix("super::") {
                rest = r;
                up += 1;
            }
            if up >= module.len() {
                heads.extend(path_heads(rest).into_iter().map(|h| (i, h)));
            }
        }
        // lib.rs names its modules directly (`spec::parse`, `pub use diag::Diagnostic`).
        if from == ROOT {
            for m in &root.modules {
                for (i, _) in code.match_indices(&format!("{m}::")) {
                    let after_path =
                        code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':');
                    if !after_path {
                        heads.push((i, m));
                    }
                }
            }
        }
        for (i, to) in heads
            .into_iter()
            .filter_map(|(i, h)| Some((i, target(&root, h)?)))
        {
            if to != from {
                let line = code[..i].matches('\n').count() + 1;
                graph
                    .get_mut(&from)
                    .unwrap()
                    .entry(to)
                    .or_default()
                    .push(format!("src/{}:{line}", rel.display()));
            }
        }
    }
    graph
}

/// The modules in layers: each depends only on modules of lower layers. `Err`: the modules left
/// when no module without unplaced dependencies remains (every cycle is among them).
fn layers(graph: &Graph) -> Result<Vec<Vec<String>>, BTreeSet<String>> {
    let mut placed = BTreeSet::new();
    let mut layers = vec![];
    while placed.len() < graph.len() {
        let layer: Vec<String> = graph
            .iter()
            .filter(|(m, deps)| !placed.contains(*m) && deps.keys().all(|d| placed.contains(d)))
            .map(|(m, _)| m.clone())
            .collect();
        if layer.is_empty() {
            return Err(graph
                .keys()
                .filter(|m| !placed.contains(*m))
                .cloned()
                .collect());
        }
        placed.extend(layer.iter().cloned());
        layers.push(layer);
    }
    Ok(layers)
}

/// The shortest cycle through `start`, by breadth-first search.
fn cycle_through(graph: &Graph, start: &str) -> Option<Vec<String>> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(m) = queue.pop_front() {
        for next in graph[m].keys().map(String::as_str) {
            if next == start {
                let mut path = vec![m.to_string()];
                while let Some(p) = parent.get(path.last().unwrap().as_str()) {
                    path.push(p.to_string());
                }
                path.reverse();
                return Some(path);
            }
            if next != start && !parent.contains_key(next) {
                parent.insert(next, m);
                queue.push_back(next);
            }
        }
    }
    None
}

fn render(graph: &Graph) -> String {
    let mut out = String::new();
    // With a cycle: every module in layer "?", by name.
    let order: Vec<(String, String)> = match layers(graph) {
        Ok(layers) => layers
            .into_iter()
            .enumerate()
            .flat_map(|(i, l)| l.into_iter().map(move |m| (i.to_string(), m)))
            .collect(),
        Err(_) => graph.keys().map(|m| ("?".to_string(), m.clone())).collect(),
    };
    for (layer, m) in order {
        let deps: Vec<&str> = graph[&m].keys().map(String::as_str).collect();
        out += &format!(
            "{layer:>2} {m:>9} -> {}\n",
            if deps.is_empty() {
                "(nothing)".to_string()
            } else {
                deps.join(", ")
            }
        );
    }
    out
}

#[test]
fn top_level_modules_have_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    println!(
        "module graph of src/ (the library; layer, module -> what it uses; lowest layer first):\n{}",
        render(&graph)
    );
    assert!(graph.len() > 10, "the graph misses modules: {graph:?}");
    if let Err(left) = layers(&graph) {
        let cycles: Vec<Vec<String>> = left
            .iter()
            .filter_map(|m| cycle_through(&graph, m))
            .collect();
        let on_cycles: BTreeSet<&String> = cycles.iter().flatten().collect();
        let mut msg = format!("the modules {on_cycles:?} are on cycles:\n");
        let mut shown = BTreeSet::new();
        for cycle in &cycles {
            let mut key = cycle.clone();
            key.sort();
            if !shown.insert(key) {
                continue;
            }
            msg += &format!("  {} -> {}\n", cycle.join(" -> "), cycle[0]);
            for (a, b) in cycle.iter().zip(cycle.iter().cycle().skip(1)) {
                msg += &format!("    {a} -> {b}: {}\n", graph[a][b].join(", "));
            }
        }
        panic!("{msg}");
    }
}

#[test]
fn the_reader_sees_every_kind_of_path() {
    assert_eq!(group_heads("a::x, b::{y, z}, c};"), ["a", "b", "c"]);
    assert_eq!(path_heads("{\n    a::x,\n    b::{y, z},\n};"), ["a", "b"]);
    assert_eq!(path_heads("a::x;"), ["a"]);
    let root = read_root("pub mod a;\npub mod b;\npub use a::Thing;\npub fn go() {}\n");
    assert_eq!(target(&root, "b").as_deref(), Some("b"));
    assert_eq!(target(&root, "Thing").as_deref(), Some("a"));
    assert_eq!(target(&root, "go").as_deref(), Some(ROOT));
    assert_eq!(target(&root, "elsewhere"), None);
}
