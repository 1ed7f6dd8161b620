//! Writes the `weights` target's seed: a checkpoint of its network (fuzz/run.sh seed).
fn main() {
    let path = std::env::args().nth(1).expect("usage: seed OUT.safetensors");
    if let Err(e) = se_compile::fuzzing::weights_seed(std::path::Path::new(&path)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
