#!/usr/bin/env bash
# The GPU check of issue 11, for a lent NVIDIA machine (Python 3.12, JAX 0.11
# with CUDA, PyTorch; no network), in under 8 minutes, each part with its own
# time limit:
#   1. install the carried wheels (.gpu/wheels, from scripts/gpu_wheels.sh) over
#      the machine's Python without touching its jax or torch; print versions
#   2. benchmarks/train_peer.py: our CLIP B/32 and B/16 train step against
#      transformers.CLIPModel at the largest batch that fits, MFU and ratio
#   3. the runlocal pipeline on the GPU from the carried prepared shards
#      (.gpu/demo) with the carried random sentence encoder (.gpu/bert)
# Prepare here: bash scripts/gpu_wheels.sh; then, with the device tool:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=540)
# Results: $OUT/train_peer.json, $OUT/results.md, $OUT/gpu_check.log.
# `bash benchmarks/gpu_check.sh --print-carry` prints the wheel list.

# Runtime packages of requirements.txt, each in exactly one list (tests/test_gpu_check.py).
# Carried: ours pinned (the machine's flax/optax/orbax may be other versions), plus the
# dependencies the machine lacks (array-record, portpicker: grain's) and open-clip-torch
# for the CLIP BPE vocabulary file it ships (found as a file, never imported).
CARRY=(flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8 ml-collections==1.1.0
       grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 tensorboardX==2.6.5
       simplejpeg==1.9.0 ftfy==6.3.1 wcwidth==0.9.4 open-clip-torch==3.3.0)
# On the machine already (docs/corpus.md's package list); the machine's versions are used.
ON_MACHINE=(jax jaxlib numpy safetensors tokenizers tqdm matplotlib fsspec pillow absl-py
            regex)
# Not used by this check: object-store workdirs (gcsfs, s3fs), clip-art rendering (CairoSVG:
# `prepare` ran where the wheels were made), TFDS readers (tensorflow-datasets), img2dataset's
# parquet captions (pyarrow: the demo shards have none, so it is never imported).
NOT_NEEDED=(gcsfs s3fs CairoSVG tensorflow-datasets pyarrow)

if [[ "${1:-}" == --print-carry ]]; then
  printf '%s\n' "${CARRY[@]}"
  return 0 2>/dev/null || exit 0
fi

set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
TOTAL_S="${GPU_CHECK_SECONDS:-465}"   # the whole script, under 8 minutes
START=$(date +%s)
exec > >(tee "$OUT/gpu_check.log") 2>&1
SUMMARY=()

# part NAME CAP_SECONDS CMD...: runs CMD under min(CAP, time left), logs rc and seconds.
part() {
  local name=$1 cap=$2; shift 2
  local left=$(( TOTAL_S - ($(date +%s) - START) ))
  local limit=$(( cap < left ? cap : left ))
  if (( limit < 10 )); then
    echo "==== $name: skipped, ${left} s left"; SUMMARY+=("$name: skipped (time)"); return 1
  fi
  echo "==== $name (limit ${limit} s)"
  local t0=$(date +%s)
  timeout -k 5 "$limit" "$@"
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  [[ $rc == 124 || $rc == 137 ]] && echo "==== $name: TIMED OUT after ${dt} s"
  SUMMARY+=("$name: rc=$rc, ${dt} s")
  return $rc
}

# ---- 1. wheels and versions -------------------------------------------------------
if ls .gpu/wheels/*.whl >/dev/null 2>&1; then
  part install 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .gpu/wheels/*.whl
  export PYTHONPATH="/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no .gpu/wheels: run scripts/gpu_wheels.sh here and carry .gpu"; SUMMARY+=("install: no wheels")
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi -L || echo "nvidia-smi failed"
part versions 60 "$PY" -c '
import sys, importlib.metadata as md
print("python", sys.version.split()[0])
for n in ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "grain",
          "torch", "transformers", "numpy"):
  try:
    print(f"  {n} {md.version(n)}")
  except md.PackageNotFoundError:
    print(f"  {n} missing")
import jax, flax, torch
print("jax devices:", jax.devices(), "| flax from", flax.__file__)
print("torch cuda:", torch.cuda.is_available(), torch.version.cuda)
'

# ---- 2. train step: JAX vs PyTorch ------------------------------------------------------
part train_peer 300 "$PY" benchmarks/train_peer.py --budget 270 --out "$OUT/train_peer.json"

# ---- 3. the runlocal pipeline on the GPU ---------------------------------------------------
demo() {
  rm -rf /tmp/gpu_demo && mkdir -p /tmp/gpu_demo
  [[ -d .gpu/demo/shards ]] && cp -r .gpu/demo/shards /tmp/gpu_demo/
  "$PY" launch.py pipeline --config configs/demo.py:runlocal --workdir /tmp/gpu_demo \
    --config.embed.encoder="$ROOT/.gpu/bert" || return $?
  cat /tmp/gpu_demo/report/results.md && cp /tmp/gpu_demo/report/results.md "$OUT/"
}
export -f demo; export PY ROOT OUT
part pipeline 240 bash -c demo

echo "==== summary ($(( $(date +%s) - START )) s in all)"
printf '  %s\n' "${SUMMARY[@]}"
