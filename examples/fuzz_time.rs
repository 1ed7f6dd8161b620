//! Times fuzz inputs through their target without AFL's instrumentation, to tell a real hang
//! from an input that was only slow under the fuzzer (fuzz/run.sh counts over 1 s as a hang):
//! `cargo run --release --example fuzz_time -- TARGET FILE...`.
fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_default();
    let Some((_, target)) = se_compile::fuzzing::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
    else {
        eprintln!(
            "error: unknown target `{name}`; the targets are in se_compile::fuzzing::TARGETS"
        );
        std::process::exit(2);
    };
    for a in args {
        let data = match std::fs::read(&a) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: {a}: {e}");
                std::process::exit(1);
            }
        };
        let t = std::time::Instant::now();
        target(&data);
        println!("{:.3} s {a}", t.elapsed().as_secs_f64());
    }
}
