#!/usr/bin/env bash
# The fuzzing campaign (cargo-afl: AFL++ on stable Rust), one reader per target
# (se_compile::fuzzing::TARGETS), each on one core in turn.
#   bash fuzz/run.sh seed          writes fuzz/seeds/<target>/ from models/, tests/ and data/
#   bash fuzz/run.sh run [MINUTES] fuzzes each target MINUTES (default 15), hangs over 1 s and
#                                  memory over 1 GiB counting as crashes; then keeps the
#                                  minimised queue in fuzz/corpus/<target>/ and any crash in
#                                  fuzz/crashes/<target>/ (tests/fuzz_corpus.rs runs them all)
# Needs `cargo install cargo-afl` once (it builds AFL++ for this rustc).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd .. && pwd)
TARGETS=${TARGETS:-"spec_yaml spec_dsl weights run_files image shard lsp_edits"}
case "${1:-}" in
seed)
    want() { [[ " $TARGETS " == *" $1 "* ]]; }
    for t in $TARGETS; do rm -rf "seeds/$t" && mkdir -p "seeds/$t"; done
    want spec_yaml && find "$ROOT/models" "$ROOT/tests/ok" "$ROOT/tests/bad" -name '*.yaml' 2>/dev/null \
        | while read -r f; do cp "$f" "seeds/spec_yaml/$(basename "$(dirname "$f")")_$(basename "$f")"; done
    want spec_dsl && find "$ROOT/models" "$ROOT/tests/ok" "$ROOT/tests/bad" -name '*.se' 2>/dev/null \
        | while read -r f; do cp "$f" "seeds/spec_dsl/$(basename "$(dirname "$f")")_$(basename "$f")"; done
    want weights && cargo run --quiet --release --bin seed -- weights seeds/weights/checkpoint.safetensors
    # Editing sessions (open, edits, requests) on a third of the specs, for the language server.
    want lsp_edits && find "$ROOT/models" "$ROOT/tests/ok" "$ROOT/tests/bad" \( -name '*.yaml' -o -name '*.se' \) \
        | sort | sed -n '1~3p' | xargs cargo run --quiet --release --bin seed -- lsp_edits seeds/lsp_edits
    run="$ROOT/docs/src/fashion-mnist-full"
    if want run_files; then
        { printf '\0'; cat "$run/history.csv"; } > seeds/run_files/history_csv
        { printf '\1'; cat "$run/history.json"; } > seeds/run_files/history_json
        { printf '\2'; cat "$run/config.json"; } > seeds/run_files/config_json
    fi
    want image && find "$ROOT/data/fashion-mnist-mini" -name '*.png' | sort | sed -n '1,8p' \
        | while read -r f; do cp "$f" "seeds/image/$(basename "$(dirname "$f")")_$(basename "$f")"; done
    if want shard; then
        # Shards as se-compile writes them (webdataset's layout), from a few bundled images.
        sdir=$(mktemp -d)
        mkdir -p "$sdir/data/train/a" "$sdir/data/train/b"
        find "$ROOT/data/fashion-mnist-mini" -name '*.png' | sort | sed -n '1,3p' | xargs -I{} cp {} "$sdir/data/train/a/"
        find "$ROOT/data/fashion-mnist-mini" -name '*.png' | sort | sed -n '4,6p' | xargs -I{} cp {} "$sdir/data/train/b/"
        cargo run --quiet --release --manifest-path "$ROOT/Cargo.toml" -- shard "$sdir/data" -o "$sdir/shards" --shard-size 3 > /dev/null
        find "$sdir/shards" -name '*.tar' | sort | while read -r f; do cp "$f" "seeds/shard/$(basename "$f")"; done
        rm -rf "$sdir"
    fi
    # Dictionaries: the DSL grammar's literals, and the schema's keys and allowed words.
    mkdir -p dict
    grep -o '"[^"]*"' "$ROOT/grammar/se.pest" | sort -u | awk '{ printf "kw%d=%s\n", NR, $0 }' > dict/spec_dsl.dict
    cargo run --quiet --release --manifest-path "$ROOT/Cargo.toml" -- schema \
        | python3 -c 'import json,sys
words=set()
def walk(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "properties" and isinstance(x, dict): words.update(x.keys())
            if k == "enum" and isinstance(x, list): words.update(str(e) for e in x)
            if k == "const": words.add(str(x))
            walk(x)
    elif isinstance(v, list):
        for x in v: walk(x)
walk(json.load(sys.stdin))
for i, w in enumerate(sorted(words)):
    print("k%d=%s" % (i, json.dumps(w)))' > dict/spec_yaml.dict
    cat dict/spec_dsl.dict dict/spec_yaml.dict > dict/lsp_edits.dict
    for t in $TARGETS; do echo "$t: $(ls "seeds/$t" | wc -l) seeds"; done
    ;;
run)
    minutes=${2:-15}
    jobs_max=${JOBS:-1}
    cargo afl build --release --quiet
    mkdir -p out
    fuzz_one() {
        local t=$1
        rm -rf "out/$t"
        local dict=()
        [ -f "dict/$t.dict" ] && dict=(-x "dict/$t.dict")
        echo "== $t: ${minutes} min"
        AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
            timeout --signal=INT "$((minutes * 60 + 60))" \
            cargo afl fuzz -V "$((minutes * 60))" -t 1000 -m 1024 "${dict[@]}" \
            -i "seeds/$t" -o "out/$t" "target/release/$t" > "out-$t.log" 2>&1 || true
        rm -rf "corpus/$t.new" && mkdir -p "corpus/$t.new" "crashes/$t"
        if [ ! -d "out/$t/default/queue" ]; then
            echo "$t: AFL did not run; see fuzz/out-$t.log" >&2
            return 1
        fi
        # afl-cmin, or (where it cannot run afl.rs's persistent harness) the same selection
        # from afl-showmap's per-input coverage (cmin.py).
        cargo afl cmin -t 1000 -m 1024 -i "out/$t/default/queue" -o "corpus/$t.new" \
            -- "target/release/$t" > "cmin-$t.log" 2>&1 \
            || { rm -rf "corpus/$t.new" && python3 cmin.py "target/release/$t" "out/$t/default/queue" "corpus/$t.new" | tee -a "cmin-$t.log"; }
        rm -rf "corpus/$t" && mv "corpus/$t.new" "corpus/$t"
        for c in "out/$t/default/crashes"/id* "out/$t/default/hangs"/id*; do
            [ -f "$c" ] && cp "$c" "crashes/$t/$(basename "$(dirname "$c")")-$(md5sum < "$c" | cut -c1-8)"
        done
        grep -E "run_time|execs_done|execs_per_sec|corpus_count|saved_crashes|saved_hangs|bitmap_cvg" \
            "out/$t/default/fuzzer_stats" | tr -s ' ' > "stats-$t.txt"
    }
    for t in $TARGETS; do
        while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do sleep 5; done
        fuzz_one "$t" &
    done
    wait
    for t in $TARGETS; do echo "== $t"; cat "stats-$t.txt"; done
    ;;
*)
    sed -n '2,10p' "$0"
    exit 2
    ;;
esac
