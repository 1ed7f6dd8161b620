//! Writes the seeds that are not plain files (fuzz/run.sh seed):
//!   seed weights OUT.safetensors      a checkpoint of the `weights` target's network
//!   seed lsp_edits OUT_DIR SPEC...    an editing session on each spec (`lsp_edits`)
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["weights", out] => se_compile::fuzzing::weights_seed(std::path::Path::new(out)),
        ["lsp_edits", dir, specs @ ..] => specs.iter().try_for_each(|s| {
            let path = std::path::Path::new(s);
            let text = std::fs::read_to_string(path).map_err(|e| format!("{s}: {e}"))?;
            let yaml = s.ends_with(".yaml");
            let seed = se_compile::fuzzing::lsp_edits_seed(&text, yaml);
            let name = format!(
                "{}_{}",
                path.parent().and_then(|p| p.file_name()).map_or("".into(), |n| n.to_string_lossy()),
                path.file_name().map_or("".into(), |n| n.to_string_lossy())
            );
            std::fs::write(std::path::Path::new(dir).join(name), seed).map_err(|e| format!("{dir}: {e}"))
        }),
        _ => Err("usage: seed weights OUT.safetensors | seed lsp_edits OUT_DIR SPEC...".into()),
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
