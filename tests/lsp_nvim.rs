//! A real editor's LSP client: Debian's Neovim, headless, runs `tests/lsp/nvim.lua` against
//! `se-compile lsp` on a broken spec: the diagnostic it shows, the fix typed into the buffer
//! clearing it, and the hover on the fixed line. `.ci/run` installs `neovim`; without `nvim` on
//! PATH the test fails under CI and is skipped (with a note) elsewhere.

use se_compile::ir::keras_shape;
use se_compile::report::thousands;
use se_compile::{compile, SourceFile};
use std::process::Command;

#[test]
fn neovim_shows_diagnostics_and_hover() {
    if Command::new("nvim").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "nvim is missing: .ci/run installs Debian's neovim"
        );
        eprintln!("skipped: no nvim on PATH (apt-get install neovim)");
        return;
    }
    let tiny = include_str!("lsp/tiny.se");
    let dir = std::env::temp_dir().join(format!("se-lsp-nvim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.se");
    std::fs::write(
        &file,
        tiny.replace("conv2d(filters = 16", "conv2dd(filters = 16"),
    )
    .unwrap();
    let out = dir.join("out.txt");
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new("timeout")
        .args(["120", "nvim", "--headless", "--clean", "-c"])
        .arg(format!(
            "luafile {}/tests/lsp/nvim.lua",
            env!("CARGO_MANIFEST_DIR")
        ))
        .env("SE_FILE", &file)
        .env("SE_COMPILE", env!("CARGO_BIN_EXE_se-compile"))
        .env("SE_CONFIG", format!("{root}/editors/neovim/se-compile.lua"))
        .env("SE_OUT", &out)
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "nvim: {status}");
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let line = tiny
        .lines()
        .position(|l| l.contains("conv2d(filters = 16"))
        .unwrap()
        + 1;
    let vg = compile(&SourceFile::new("tiny.se", tiny)).unwrap();
    let g = vg.graph();
    let stem = g.ids().find(|&i| g.node(i).name == "conv2d").unwrap();
    let st = vg.stats(stem);
    assert_eq!(lines[0], "filetype se", "{text}");
    assert_eq!(lines[1], "diagnostics true", "{text}");
    assert_eq!(
        lines[2],
        format!("diagnostic {line}:5 spec::unknown-layer unknown layer or block `conv2dd` (unknown layer) | help: did you mean `conv2d`?")
    );
    assert_eq!(lines[3], "cleared true", "{text}");
    assert!(
        lines[4].starts_with("hover **conv2d** `conv2d` (Conv2D)"),
        "{text}"
    );
    assert!(
        lines[4].contains(&format!(
            "| `{}` | {} | {} |",
            keras_shape(&g.node(stem).shape),
            thousands(st.params.total()),
            thousands(st.macs)
        )),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The README's Neovim lines are the configuration the test above runs.
#[test]
fn readme_has_the_tested_neovim_configuration() {
    let readme = include_str!("../README.md");
    let config = include_str!("../editors/neovim/se-compile.lua");
    assert!(readme.contains(&format!("```lua\n{config}```")));
}
