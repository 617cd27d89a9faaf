"""The demo corpus's word tables, kept as data files (JSON) rather than code.

  caption_forms.json  [kind, needs, template] alt-text caption forms (data/corpus/captions.py)
  classnames.json     readable class names of the held-out zero-shot tasks, first canonical:
                      clipart_categories (Open Clip Art top-level folders),
                      tuxpaint_categories (Tux Paint stamp folders),
                      openmoji_groups (CLDR emoji groups, Unicode TR51)

Changing a table changes the corpus: bump data/corpus/build.py FORMAT_VERSION.
"""

import functools
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


@functools.cache
def load(name: str):
  """The table `name` (a file name here without .json)."""
  with open(os.path.join(HERE, name + ".json")) as f:
    return json.load(f)
