"""What the demo-corpus sources share: the missing-source error and caption templating."""

from __future__ import annotations

import numpy as np


class MissingSource(FileNotFoundError):
  """A data package of DATA.md is not installed; the message names the install command."""

  def __init__(self, what: str, path: str, install: str):
    self.what, self.path, self.install = what, path, install
    super().__init__(f"{what} not found at {path}: install it with `{install}`")


def templated_texts(rng: np.random.Generator, names: list[str], templates: list[str],
                    k: int) -> list[str]:
  """k distinct captions template.format(name), drawn uniformly from names x templates.

  Several captions per image, as web pairs often have (alt text, title, ...):
  the embed stage picks one at random, the trainer may pick another.
  """
  combos = [(n, t) for n in names for t in templates]
  pick = rng.choice(len(combos), size=min(k, len(combos)), replace=False)
  return [combos[i][1].format(combos[i][0]) for i in sorted(pick)]
