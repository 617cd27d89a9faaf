#!/usr/bin/env bash
# Prepares .gpu/ (ignored by git) for benchmarks/gpu_check.sh on a lent NVIDIA
# machine: Python 3.12, JAX 0.11 with CUDA and PyTorch installed, no network.
#   .gpu/wheels/  our pins of the packages that machine lacks (or has in another
#                 version), downloaded here for CPython 3.12 manylinux x86-64
#                 with --no-deps, so nothing pulls in jax, torch or CUDA
#   .gpu/demo/    the runlocal demo's prepared shards (stage `prepare`, built
#                 here: the clip-art, Fashion-MNIST and MNIST sources are
#                 Debian/PyPI data packages that machine does not have)
#   .gpu/bert/    a random-weight BERT over the demo's caption words, the
#                 sentence encoder there (all-MiniLM-L6-v2's 88 MB package
#                 would not fit the 64 MiB the working tree may carry)
# Which packages: benchmarks/gpu_check.sh's CARRY list (tests/test_gpu_check.py
# checks it covers requirements.txt). Usage: bash scripts/gpu_wheels.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
DEST=.gpu
source benchmarks/gpu_check.sh --print-carry >/dev/null   # defines CARRY

# ---- wheels ------------------------------------------------------------------
rm -rf "$DEST/wheels" && mkdir -p "$DEST/wheels"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d "$DEST/wheels" "${CARRY[@]}"
ls "$DEST/wheels"

# ---- the demo's prepared shards and the random sentence encoder ---------------
rm -rf "$DEST/demo" "$DEST/bert"
"$PY" launch.py prepare --config configs/demo.py:runlocal --workdir "$DEST/demo"
"$PY" - "$DEST" <<'EOF'
import glob, re, sys
sys.path.insert(0, ".")
from mode_jax.data.io import webdataset
from mode_jax.text import random_bert
dest = sys.argv[1]
words = set()
for shard in sorted(glob.glob(f"{dest}/demo/shards/**/*.tar", recursive=True)):
  for s in webdataset.iter_shard(shard, with_images=False):
    for t in s.get("texts") or []:
      words.update(re.findall(r"\w+", t.lower()))
random_bert.write_random_bert(f"{dest}/bert", sorted(words), hidden=64, max_positions=64)
print(f"random BERT over {len(words)} caption words: {dest}/bert")
EOF
du -sh "$DEST/wheels" "$DEST/demo" "$DEST/bert" "$DEST"
