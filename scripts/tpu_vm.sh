#!/usr/bin/env bash
# Runs one launch.py command on every worker of a Cloud TPU VM slice at once.
#
#   scripts/tpu_vm.sh TPU_NAME ZONE "<stage> --config 'configs/mode_b16.py:n=4,shards=gs://bucket/data/{00000..00999}.tar,root=gs://bucket/cb' --workdir gs://bucket/w"
#   scripts/tpu_vm.sh TPU_NAME ZONE --install     # once: venv + JAX's TPU build on every worker
#
# Every worker runs the same command. MODE_JAX_DISTRIBUTED=on makes launch.py call
# jax.distributed.initialize() before anything else; JAX finds its peers through
# the TPU VM metadata. The workdir must be shared: a gs:// bucket or a
# filesystem mounted on every worker. Multi-host Orbax saves to gs:// pass on the
# GCS emulator (docs/pods.md) but are untested on real GCS; if they stall, add
# --config.checkpoint_root=<shared folder>. The repository must be
# checked out at $REPO_DIR (default ~/mode_jax) on every worker.
set -euo pipefail
tpu=$1; zone=$2; shift 2
repo=${REPO_DIR:-'~/mode_jax'}   # '~' expands on the workers
venv=${VENV_DIR:-$repo/.venv-tpu}
ssh() { gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$1"; }
install="cd $repo && (test -x $venv/bin/python || python3 -m venv $venv) && \
$venv/bin/pip install -q --upgrade pip && $venv/bin/pip install -q -e '.[tpu]' && \
$venv/bin/pip install -q --no-deps -r requirements-files.txt"
if [ "${1:-}" = "--install" ]; then
  ssh "$install"
  exit
fi
# Installs on first use (never `make env`: that is the CPU build).
ssh "cd $repo && (test -x $venv/bin/python || ($install)) && \
MODE_JAX_DISTRIBUTED=on $venv/bin/python launch.py $*"
