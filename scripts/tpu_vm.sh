#!/usr/bin/env bash
# Runs one launch.py command on every worker of a Cloud TPU VM slice at once.
#
#   scripts/tpu_vm.sh TPU_NAME ZONE "<stage> --config configs/mode_b16.py:n=4 --workdir gs://bucket/w"
#
# Every worker runs the same command; JAX finds its peers through the TPU
# metadata (mode_jax calls jax.distributed.initialize() when TPU_WORKER_HOSTNAMES
# lists several workers). The workdir must be shared (a GCS bucket).
set -euo pipefail
tpu=$1; zone=$2; shift 2
repo=${REPO_DIR:-~/mode_jax}
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd $repo && (test -x .venv/bin/python || make env) && .venv/bin/python launch.py $*"
