//! Files written whole or not at all.

use std::path::Path;

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash never leaves a
/// truncated file where a good one was; on an error the temporary file goes too.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}
