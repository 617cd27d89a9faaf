"""The paper's sweep over the number of experts n in {2, 4, 8, 16, 32}.

Prints one launch command per n (one workdir each; the shards, embeddings and
fine clusters can be shared by pointing the workdirs' shards/ and embed/ at
the same place):

  python configs/sweep_n.py --model b16 --shards 'gs://b/{00000..31999}.tar' --root gs://b/sweep
"""

import argparse

from mode_jax import constants


def commands(model: str, shards: str, root: str) -> list[str]:
  return [f"python launch.py pipeline --config configs/mode_{model}.py:n={n},shards={shards} "
          f"--workdir {root}/mode_{model}_n{n}" for n in constants.EXPERT_CHOICES]


if __name__ == "__main__":
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="b16", choices=["b32", "b16", "l14"])
  ap.add_argument("--shards", default="shards/train-*.tar")
  ap.add_argument("--root", default="workdirs")
  args = ap.parse_args()
  print("\n".join(commands(args.model, args.shards, args.root)))
