//! Compiles a spec through the library API and prints its Keras-style summary.
//!
//!     cargo run --example compile_spec -- models/se_resnet50.yaml

use se_compile::diag::{render, Style};
use se_compile::report::summary::{render as summary, Options};

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/se_block.yaml".to_string());
    let src = match se_compile::load(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    match se_compile::compile(&src) {
        Ok(graph) => {
            print!("{}", summary(&graph, &src, &Options::default()));
            let t = graph.totals();
            println!(
                "\n{} layers, {} trainable parameters",
                graph.graph().nodes.len(),
                t.params.trainable
            );
        }
        Err(d) => {
            eprint!("{}", render(&d, &src, Style::Plain));
            std::process::exit(1);
        }
    }
}
