"""benchmarks/gpu_check.sh and benchmarks/train_peer.py, checked on the CPU.

The GPU check itself runs only on a lent NVIDIA machine; here: the script
parses, its wheel list covers requirements.txt's runtime packages (each in
exactly one of CARRY / ON_MACHINE / NOT_NEEDED, CARRY at the same pins), and
train_peer.py's smoke run prints both frameworks' figures and a ratio.
"""

import json
import math
import os
import re
import subprocess
import sys

from tests.helpers.procs import ROOT, clean_env

SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")


def _norm(name):
  return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> dict:
  """requirements.txt's runtime packages: normalised name -> pinned version."""
  out = {}
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    for line in f:
      line = line.split("#")[0].strip()
      if not line or line.startswith("-"):
        continue
      name, _, version = line.partition("==")
      out[_norm(re.sub(r"\[.*\]", "", name))] = version.strip()
  return out


def script_lists() -> dict:
  code = (f"source {SCRIPT} --print-carry >/dev/null; for l in CARRY ON_MACHINE NOT_NEEDED; do "
          'eval "printf \\"$l %s\\n\\" \\"\\${$l[@]}\\""; done')
  p = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=30, check=True)
  lists = {"CARRY": [], "ON_MACHINE": [], "NOT_NEEDED": []}
  for line in p.stdout.split("\n"):
    if line.strip():
      key, item = line.split(" ", 1)
      lists[key].append(item)
  return lists


def test_script_parses():
  p = subprocess.run(["bash", "-n", SCRIPT], capture_output=True, text=True, timeout=30)
  assert p.returncode == 0, p.stderr
  p = subprocess.run(["bash", "-n", os.path.join(ROOT, "scripts", "gpu_wheels.sh")],
                     capture_output=True, text=True, timeout=30)
  assert p.returncode == 0, p.stderr


def test_wheels_cover_requirements():
  req = requirements()
  lists = script_lists()
  carry = dict(item.split("==") for item in lists["CARRY"])
  carry = {_norm(k): v for k, v in carry.items()}
  where = {}
  for key, names in (("CARRY", carry), ("ON_MACHINE", lists["ON_MACHINE"]),
                     ("NOT_NEEDED", lists["NOT_NEEDED"])):
    for n in names:
      where.setdefault(_norm(n), []).append(key)
  missing = sorted(n for n in req if n not in where)
  assert not missing, f"requirements.txt packages in no list of gpu_check.sh: {missing}"
  twice = {n: k for n, k in where.items() if len(k) > 1}
  assert not twice, f"packages in more than one list: {twice}"
  stale = {n: (v, req[n]) for n, v in carry.items() if n in req and v != req[n]}
  assert not stale, f"CARRY pins differ from requirements.txt: {stale}"


def test_train_peer_smoke(tmp_path):
  out = tmp_path / "peer.json"
  p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "train_peer.py"),
                      "--smoke", "--out", str(out)], capture_output=True, text=True,
                     timeout=180, cwd=ROOT, env=clean_env(OUT=str(tmp_path)))
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
  assert re.search(r"mu/8\s+jax .*\s\d+\s+[\d.]+", p.stdout), p.stdout
  assert re.search(r"mu/8\s+torch\s+\d+\s+[\d.]+", p.stdout), p.stdout
  assert "ratio JAX/PyTorch" in p.stdout, p.stdout
  (row,) = json.loads(out.read_text())["rows"]
  for fw in ("jax", "torch"):
    assert "error" not in row[fw], row[fw]
    assert row[fw]["examples_per_s"] > 0 and row[fw]["batch"] == 8
    assert math.isfinite(row[fw]["loss"]) and row[fw]["mfu"] > 0
  assert row["jax"]["flops_per_step"] > 0 and math.isfinite(row["ratio"])
