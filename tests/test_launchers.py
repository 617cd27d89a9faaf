"""Launchers install JAX's accelerator build (never `make env`, the CPU one) and run a stage.

The scripts run here against stand-ins for gcloud, srun and python3 that log
what they were asked to do.
"""

import os
import subprocess
import sys
import tomllib

import pytest

from tests.helpers.procs import clean_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pyproject_extras_pick_the_jax_build():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    p = tomllib.load(f)
  extras = p["project"]["optional-dependencies"]
  assert extras["cpu"][0].startswith("jax[cpu]")
  assert extras["cuda"][0].startswith("jax[cuda12]")
  assert extras["tpu"][0].startswith("jax[tpu]")
  deps = " ".join(p["project"]["dependencies"])
  assert "jax[" not in deps                    # the accelerator comes only from an extra
  for pkg in ("flax", "orbax-checkpoint", "grain", "fsspec", "gcsfs", "s3fs"):
    assert pkg in deps
  found = p["tool"]["setuptools"]["packages"]["find"]["include"]
  for pkg in ("mode_jax", "clustering", "configs"):
    assert any(i.startswith(pkg) for i in found)


def _stub(folder, name, body):
  path = os.path.join(folder, name)
  with open(path, "w") as f:
    f.write("#!/usr/bin/env bash\n" + body)
  os.chmod(path, 0o755)


def test_slurm_script_installs_the_cuda_build_and_runs_the_stage(tmp_path):
  bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
  bin_dir.mkdir()
  # python3 -m venv DIR: a venv whose pip and python only log their arguments.
  _stub(bin_dir, "python3", f"""
if [ "$1" = -m ] && [ "$2" = venv ]; then
  mkdir -p "$3/bin"
  printf '#!/usr/bin/env bash\\necho pip "$@" >> {log}\\n' > "$3/bin/pip"
  printf '#!/usr/bin/env bash\\necho devices=$JAX_LOCAL_DEVICE_IDS >> {log}\\necho python "$@" >> {log}\\n' > "$3/bin/python"
  chmod +x "$3/bin/pip" "$3/bin/python"
fi
""")
  _stub(bin_dir, "srun", f'echo srun "$@" >> {log}\n"${{@:2}}"\n')
  work = tmp_path / "submit"
  work.mkdir()
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_SUBMIT_DIR=str(work),
             SLURM_GPUS_ON_NODE="4")
  r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "slurm.sbatch"), "seed",
                      "--config", "configs/demo.py", "--workdir", "/shared/w"],
                     env=env, capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  calls = log.read_text().splitlines()
  assert "pip install -q -e .[cuda]" in calls
  assert calls[-1] == "python launch.py seed --config configs/demo.py --workdir /shared/w"
  assert calls[-2] == "devices=0,1,2,3"    # one process drives all the node's GPUs
  assert not any("make" in c for c in calls)


def test_tpu_script_installs_the_tpu_build_and_starts_distributed(tmp_path):
  bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
  bin_dir.mkdir()
  _stub(bin_dir, "gcloud", f'printf "%s\\n" "$@" >> {log}\n')
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
  r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "tpu_vm.sh"), "my-tpu", "zone-a",
                      "seed --config configs/mode_b16.py --workdir gs://b/w"],
                     env=env, capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  args = log.read_text().splitlines()
  assert args[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"] and "--worker=all" in args
  command = args[args.index("--command") + 1]
  assert "pip install -q -e '.[tpu]'" in command and "make env" not in command
  assert command.startswith("cd ~/mode_jax && ")            # '~' left to the workers' shell
  assert command.endswith("MODE_JAX_DISTRIBUTED=on ~/mode_jax/.venv-tpu/bin/python launch.py "
                          "seed --config configs/mode_b16.py --workdir gs://b/w")


def test_distributed_on_from_the_environment_reaches_jax(tmp_path):
  """MODE_JAX_DISTRIBUTED=on (what tpu_vm.sh sets) makes distributed.initialize start JAX's."""
  code = ("import sys; sys.argv=['x']; from mode_jax import distributed; import jax\n"
          "called = []\n"
          "jax.distributed.initialize = lambda **kw: called.append(kw)\n"
          "print(distributed.initialize(None), called)")
  out = {}
  for mode in ("on", "off", "auto"):
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, text=True, capture_output=True,
                       env=clean_env(MODE_JAX_DISTRIBUTED=mode), timeout=120)
    assert r.returncode == 0, r.stderr
    out[mode] = r.stdout.strip()
  assert out == {"on": "True [{}]", "off": "False []",
                 "auto": "False []"}


@pytest.mark.parametrize("env, multi", [
    ({}, False),
    ({"JAX_COORDINATOR_ADDRESS": "h0:1234"}, True),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "4"}, True),     # inside srun
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, False),            # plain python in sbatch
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "1"}, False),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
    ({"TPU_WORKER_HOSTNAMES": "w0,w1"}, True),
    ({"TPU_WORKER_HOSTNAMES": "w0"}, False),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "c:1"}, True),
])
def test_auto_mode_detects_multi_process_environments(monkeypatch, env, multi):
  from mode_jax import distributed
  for k in list(os.environ):
    if k.startswith(("JAX_", "SLURM_", "OMPI_", "TPU_", "MEGASCALE_")):
      monkeypatch.delenv(k)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  assert distributed.environment_is_multiprocess() is multi
