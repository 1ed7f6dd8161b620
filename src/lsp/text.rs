//! Byte offsets ↔ LSP positions: lines split at `\n`, columns in UTF-16 code units (the
//! protocol's default encoding), every conversion clamped so any position an editor sends maps
//! to a valid offset.

use crate::source::Span;
use lsp_types::{Position, Range};

pub struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset of each line's start.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    /// The position of a byte offset (clamped to the text, floored to a char boundary).
    pub fn position(&self, offset: usize) -> Position {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let col: usize = self.text[self.starts[line]..offset]
            .chars()
            .map(char::len_utf16)
            .sum();
        Position::new(line as u32, col as u32)
    }

    pub fn range(&self, span: Span) -> Range {
        Range::new(self.position(span.start), self.position(span.end))
    }

    /// The byte offset of a position; a line past the end gives the text's end, a column past
    /// the line's end (or inside a surrogate pair) the nearest earlier boundary.
    pub fn offset(&self, pos: Position) -> usize {
        let Some(&start) = self.starts.get(pos.line as usize) else {
            return self.text.len();
        };
        let end = self.line_end(start);
        let mut units = 0usize;
        for (i, c) in self.text[start..end].char_indices() {
            units += c.len_utf16();
            if units > pos.character as usize {
                return start + i;
            }
        }
        end
    }

    /// The byte span of an LSP range (a reversed one is empty at its start).
    pub fn span(&self, r: Range) -> Span {
        Span::new(self.offset(r.start), self.offset(r.end))
    }

    /// The byte range of the line holding `offset`, without its line break.
    pub fn line_span(&self, offset: usize) -> Span {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line];
        Span::new(start, self.line_end(start))
    }

    fn line_end(&self, start: usize) -> usize {
        let end = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |i| start + i);
        if end > start && self.text.as_bytes()[end - 1] == b'\r' {
            end - 1
        } else {
            end
        }
    }
}

/// Applies an LSP content change (a range in UTF-16 positions, or the whole text).
pub fn apply_change(text: &mut String, range: Option<Range>, new: &str) {
    match range {
        None => *text = new.to_string(),
        Some(r) => {
            let idx = LineIndex::new(text);
            let a = idx.offset(r.start);
            let b = idx.offset(r.end).max(a);
            text.replace_range(a..b, new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16_columns_round_trip() {
        // `é` is 2 bytes and 1 UTF-16 unit; `𝄞` is 4 bytes and 2 units.
        let t = "ab\r\né𝄞x\n";
        let idx = LineIndex::new(t);
        let x = t.find('x').unwrap();
        assert_eq!(idx.position(x), Position::new(1, 3));
        assert_eq!(idx.offset(Position::new(1, 3)), x);
        // Inside the surrogate pair: the char's start.
        assert_eq!(idx.offset(Position::new(1, 2)), t.find('𝄞').unwrap());
        // Past the line's end (before \r\n), past the last line.
        assert_eq!(idx.offset(Position::new(0, 99)), 2);
        assert_eq!(idx.offset(Position::new(9, 0)), t.len());
        assert_eq!(idx.position(t.len() + 5), Position::new(2, 0));
        // A byte inside `é` floors to its start.
        assert_eq!(idx.position(t.find('é').unwrap() + 1), Position::new(1, 0));
    }

    #[test]
    fn incremental_changes() {
        let mut t = String::from("conv2d(filters = 64)\nrelu\n");
        apply_change(
            &mut t,
            Some(Range::new(Position::new(0, 17), Position::new(0, 19))),
            "128",
        );
        assert_eq!(t, "conv2d(filters = 128)\nrelu\n");
        // A reversed range inserts at its start instead of panicking.
        apply_change(
            &mut t,
            Some(Range::new(Position::new(1, 4), Position::new(0, 0))),
            "!",
        );
        assert_eq!(t, "conv2d(filters = 128)\nrelu!\n");
    }
}
