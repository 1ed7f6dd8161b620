//! `se-compile lsp`: the language server, on standard input and output (see `se_compile::lsp`).

/// Run the language server (LSP over stdio) for .se and se-compile .yaml files.
#[derive(clap::Args)]
#[command(
    after_help = "Editors start it themselves; see the README (Editors) for Neovim and Helix.\nIt reads JSON-RPC on standard input and writes it on standard output; nothing else is printed there."
)]
pub struct LspArgs {}

pub fn run(_a: LspArgs) -> Result<(), u8> {
    se_compile::lsp::serve_stdio().map_err(|e| {
        eprintln!("error: se-compile lsp: {e}");
        super::shared::EXIT_INVALID
    })
}
