//! Formatting of `.se` files: a canonical layout that changes only whitespace, so comments and
//! every token stay as written. Each line is indented two spaces per bracket open before it
//! (`{`, `(`, `[`; a line starting with closers is dedented by them), runs of spaces become one,
//! `key = value` and `a, b` get one space (none before `,` or `)`, none after `(`), trailing
//! spaces go, blank lines collapse to one, the file ends with one newline. A comment keeps its
//! text and the spacing before it. Strings are left alone.

/// The formatted text (equal to `text` when it is already canonical).
pub fn format_dsl(text: &str) -> String {
    let mut out = String::new();
    let mut depth: usize = 0;
    let mut blank = 0;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() {
            blank += 1;
            continue;
        }
        if blank > 0 && !out.is_empty() {
            out.push('\n');
        }
        blank = 0;
        let (code, comment) = split_comment(line);
        let code = space(code.trim_end());
        let leading_closers = code
            .chars()
            .take_while(|c| matches!(c, '}' | ')' | ']'))
            .count();
        let indent = depth.saturating_sub(leading_closers);
        out.push_str(&"  ".repeat(indent));
        out.push_str(&code);
        if let Some((gap, c)) = comment {
            if !code.is_empty() {
                out.push_str(gap);
            }
            out.push_str(c);
        }
        out.push('\n');
        for c in strip_strings(&code).chars() {
            match c {
                '{' | '(' | '[' => depth += 1,
                '}' | ')' | ']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    out
}

/// The code of a line and its comment (with the spaces before it), outside strings.
fn split_comment(line: &str) -> (&str, Option<(&str, &str)>) {
    let mut in_str = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_str = !in_str,
            '#' if !in_str => {
                let code = &line[..i];
                let trimmed = code.trim_end();
                return (trimmed, Some((&code[trimmed.len()..], &line[i..])));
            }
            _ => {}
        }
    }
    (line, None)
}

/// The line with strings blanked, for counting brackets.
fn strip_strings(code: &str) -> String {
    let mut in_str = false;
    code.chars()
        .map(|c| {
            if c == '"' {
                in_str = !in_str;
                ' '
            } else if in_str {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// One line's code with canonical spaces (strings untouched).
fn space(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::new();
    let mut in_str = false;
    let mut i = 0;
    let push_space = |out: &mut String| {
        if !out.is_empty() && !out.ends_with([' ', '(', '[']) {
            out.push(' ');
        }
    };
    while i < chars.len() {
        let c = chars[i];
        if in_str {
            out.push(c);
            in_str = c != '"';
            i += 1;
            continue;
        }
        let next = chars.get(i + 1).copied();
        let prev = out.chars().last();
        match c {
            '"' => {
                in_str = true;
                out.push(c);
            }
            ' ' | '\t' => push_space(&mut out),
            ',' => {
                while out.ends_with(' ') {
                    out.pop();
                }
                out.push(',');
                if next.is_some_and(|n| !matches!(n, ')' | ']')) {
                    out.push(' ');
                }
                while chars.get(i + 1).is_some_and(|n| *n == ' ' || *n == '\t') {
                    i += 1;
                }
            }
            ')' | ']' => {
                while out.ends_with(' ') {
                    out.pop();
                }
                out.push(c);
            }
            '(' | '[' => {
                out.push(c);
                while chars.get(i + 1).is_some_and(|n| *n == ' ' || *n == '\t') {
                    i += 1;
                }
            }
            // `key = value`, not `==`, `<=`, `>=`, `!=`.
            '=' if next != Some('=') && !matches!(prev, Some('=' | '<' | '>' | '!')) => {
                push_space(&mut out);
                out.push('=');
                if next.is_some() {
                    out.push(' ');
                }
                while chars.get(i + 1).is_some_and(|n| *n == ' ' || *n == '\t') {
                    i += 1;
                }
            }
            _ => out.push(c),
        }
        i += 1;
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let messy = "model m {\n\n\n input( 8,8 ,3 )   # size\n  layers {\nconv2d(filters=4,kernel = 3 ,padding=same) if  x==1\n\t\trelu\n  }\n}";
        let want = "model m {\n\n  input(8, 8, 3)   # size\n  layers {\n    conv2d(filters = 4, kernel = 3, padding = same) if x==1\n    relu\n  }\n}\n";
        assert_eq!(format_dsl(messy), want);
        assert_eq!(format_dsl(want), want);
        // Strings and comments keep their text; brackets in them do not count.
        // Other operators are left as written.
        let s = "model m {\n  layers {\n    conv2d(4) named \"a , ( b\"  # x = (\n  }\n}\n";
        assert_eq!(format_dsl(s), s);
    }

    /// On every `.se` spec of the repo: idempotent, only whitespace changed, same summary.
    #[test]
    fn repo_specs() {
        let mut n = 0;
        for dir in ["models", "models/ablations", "tests/lsp"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_none_or(|x| x != "se") {
                    continue;
                }
                let t = std::fs::read_to_string(&p).unwrap();
                let f = format_dsl(&t);
                assert_eq!(format_dsl(&f), f, "{p:?}");
                let dense = |s: &str| s.split_whitespace().collect::<String>();
                assert_eq!(dense(&f), dense(&t), "{p:?}");
                let compiled = |s: &str| {
                    let vg = crate::compile(&crate::SourceFile::new("x.se", s)).unwrap();
                    crate::report::summary::rows(&vg, Default::default())
                        .iter()
                        .map(|r| (r.name.clone(), r.shape.clone(), r.params.total()))
                        .collect::<Vec<_>>()
                };
                assert_eq!(compiled(&f), compiled(&t), "{p:?}");
                n += 1;
            }
        }
        assert!(n >= 5, "{n} specs");
    }
}
