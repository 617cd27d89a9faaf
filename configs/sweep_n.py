"""The paper's sweep over the number of experts n in {2, 4, 8, 16, 32}.

Prints one launch command per n, one workdir each: every workdir embeds the
shards, fits its own clustering and trains its own seed (27 of 32 epochs), so a
sweep of five n costs five seeds (sharing the seed across n is not done yet):

  python -m configs.sweep_n --model b16 --shards 'gs://b/{00000..31999}.tar' --root gs://b/sweep \
      --suite-root gs://b/clip_benchmark
"""

import argparse

from mode_jax import constants


def commands(model: str, shards: str, root: str, suite_root: str = "") -> list[str]:
  suite = f",root={suite_root}" if suite_root else ""
  return [f"python launch.py pipeline --config 'configs/mode_{model}.py:n={n},shards={shards}"
          f"{suite}' --workdir {root}/mode_{model}_n{n}" for n in constants.EXPERT_CHOICES]


if __name__ == "__main__":
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="b16", choices=["b32", "b16", "l14"])
  ap.add_argument("--shards", required=True,
                  help="img2dataset shards, e.g. gs://b/{00000..31999}.tar")
  ap.add_argument("--root", default="workdirs", help="where the workdirs go")
  ap.add_argument("--suite-root", default="", help="the CLIP_benchmark folders (evaluate.root)")
  args = ap.parse_args()
  print("\n".join(commands(args.model, args.shards, args.root, args.suite_root)))
