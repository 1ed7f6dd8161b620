#!/usr/bin/env bash
# Creates (once) the Python virtual environment the export tests use, with the packages of
# tests/python/requirements.txt, and prints its python's path. The environment lives outside
# the clone, keyed by the requirements' hash:
#   ${SE_COMPILE_PYENV_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/se-compile}/pyenv-<hash>
# A cold install (torch's CUDA wheel included) takes about 2 minutes on a fast network.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
req="$root/tests/python/requirements.txt"
hash="$(sha256sum "$req" | cut -c1-12)"
base="${SE_COMPILE_PYENV_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/se-compile}"
env="$base/pyenv-$hash"
mkdir -p "$base"
exec 9>"$base/.lock-$hash"
flock 9
if [ ! -x "$env/bin/python" ] || [ ! -f "$env/.complete" ]; then
  rm -rf "$env"
  echo "pyenv: installing $req into $env" >&2
  python3 -m venv "$env" >&2
  "$env/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  touch "$env/.complete"
fi
echo "$env/bin/python"
