//! AFL harness: `se_compile::fuzzing::lsp_edits` on every input (see fuzz/run.sh).
fn main() {
    afl::fuzz!(|data: &[u8]| se_compile::fuzzing::lsp_edits(data));
}
