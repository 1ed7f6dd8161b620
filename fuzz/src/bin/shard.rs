//! AFL harness: `se_compile::fuzzing::shard` on every input (see fuzz/run.sh).
fn main() {
    afl::fuzz!(|data: &[u8]| se_compile::fuzzing::shard(data));
}
