"""Corpus minimisation as afl-cmin does it, for when `cargo afl cmin` cannot run the harness
(it reports "no instrumentation output detected" for afl.rs's persistent harnesses here):
afl-showmap's directory mode writes each input's coverage (edge:bucket tuples), and for each
edge the smallest input that reaches it is kept (afl-cmin -e: edges, not hit counts).

usage: python3 cmin.py TARGET_BINARY IN_DIR OUT_DIR   (afl-showmap through `cargo afl showmap`)
"""
import os
import shutil
import subprocess
import sys
import tempfile


def main():
    binary, src, dst = sys.argv[1:4]
    with tempfile.TemporaryDirectory() as maps:
        subprocess.run(["cargo", "afl", "showmap", "-i", src, "-o", maps, "-t", "1000", "-m", "1024", "--", binary],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=dict(os.environ, AFL_QUIET="1"))
        best = {}  # tuple -> (size, name)
        for name in sorted(os.listdir(maps)):
            size = os.path.getsize(os.path.join(src, name))
            with open(os.path.join(maps, name)) as f:
                for t in {line.split(":")[0] for line in f.read().split()}:
                    if t not in best or (size, name) < best[t]:
                        best[t] = (size, name)
    keep = sorted({name for _, name in best.values()})
    os.makedirs(dst, exist_ok=True)
    for name in keep:
        shutil.copy(os.path.join(src, name), os.path.join(dst, name))
    print(f"{len(keep)} of {len(os.listdir(src))} inputs keep all {len(best)} edges")


main()
