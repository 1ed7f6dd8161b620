//! The compile-scaling benchmark: flat specs of about 10³, 10⁴ and 10⁵ layers, in the DSL and in
//! YAML (a stage repeated), each compiled through validation; median of 5 runs. Compile time
//! must stay linear in the layer count (the limit is 100,000 layers).
//!
//!     cargo run --release --example compile_scaling

fn dsl(n: usize) -> String {
    let mut s = String::from("model flat {\n  input(8, 8, 4)\n  layers {\n");
    for _ in 0..n {
        s.push_str("    relu\n");
    }
    s.push_str("  }\n}\n");
    s
}

fn yaml(n: usize) -> String {
    format!(
        "model: flat\ninput: [8, 8, 4]\nblocks:\n  one:\n    body: [relu]\nlayers:\n  - stage: {{block: one, repeat: {n}}}\n"
    )
}

fn median_ms(name: &str, text: &str) -> (f64, usize) {
    let mut times = vec![];
    let mut layers = 0;
    for _ in 0..5 {
        let src = se_compile::SourceFile::new(name, text);
        let t = std::time::Instant::now();
        let vg = se_compile::compile(&src).unwrap_or_else(|d| panic!("{name}: {}", d.message));
        times.push(t.elapsed().as_secs_f64() * 1e3);
        layers = vg.graph().nodes.len();
    }
    times.sort_by(f64::total_cmp);
    (times[2], layers)
}

fn main() {
    println!("| syntax | layers | compile ms (median of 5) | µs per layer |");
    println!("|---|---:|---:|---:|");
    for n in [999, 9_999, 99_990] {
        for (syntax, name, text) in [("DSL", "flat.se", dsl(n)), ("YAML", "flat.yaml", yaml(n))] {
            let (ms, layers) = median_ms(name, &text);
            println!(
                "| {syntax} | {layers} | {ms:.1} | {:.2} |",
                ms * 1e3 / layers as f64
            );
        }
    }
}
