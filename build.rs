//! Only for `--features cuda`: dfdx compiles some kernels at run time with NVRTC and bakes the
//! include directory it found at build time (`$CUDA_ROOT/include`) into the binary. Four headers
//! must be there on the machine that runs it. This script embeds them so that the binary can
//! write them at start-up when that directory is missing (a binary copied to a GPU machine).

use std::path::PathBuf;

const HEADERS: [&str; 4] = [
    "cuda_fp16.h",
    "cuda_fp16.hpp",
    "cuda_utils.cuh",
    "compatibility.cuh",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let vars = [
        "CUDA_PATH",
        "CUDA_ROOT",
        "CUDA_TOOLKIT_ROOT_DIR",
        "CUDNN_LIB",
    ];
    for v in vars {
        println!("cargo:rerun-if-env-changed={v}");
    }
    // The same search as dfdx's build script, so both name the same directory.
    let roots = ["/usr", "/usr/local/cuda", "/opt/cuda", "/usr/lib/cuda"];
    let root = vars
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .map(PathBuf::from)
        .chain(roots.iter().map(PathBuf::from))
        .find(|p| p.join("include").join("cuda.h").is_file())
        .expect("--features cuda needs a CUDA root with include/cuda.h: run scripts/build-cuda.sh");
    let include = root.join("include");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut listing = String::from("&[\n");
    for h in HEADERS {
        let src = include.join(h);
        let bytes = std::fs::read(&src).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; scripts/build-cuda.sh puts the NVRTC headers there",
                src.display()
            )
        });
        std::fs::write(out.join(h), bytes).expect("write to OUT_DIR");
        listing.push_str(&format!(
            "    ({h:?}, include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{h}\")).as_slice()),\n"
        ));
    }
    listing.push_str("]\n");
    std::fs::write(out.join("nvrtc_headers.rs"), listing).expect("write to OUT_DIR");
    println!(
        "cargo:rustc-env=SE_COMPILE_NVRTC_INCLUDE={}",
        include.display()
    );
}
