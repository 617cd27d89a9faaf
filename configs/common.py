"""Config helpers in the big_vision idiom.

`--config configs/x.py:key=val,runlocal` passes the text after ':' to
`get_config(arg)`; `parse_arg` turns it into a typed ConfigDict: defaults fix
the types, a bare key means True.
"""

import ml_collections


def parse_arg(arg, **defaults) -> ml_collections.ConfigDict:
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    default = defaults[key]
    if not eq:
      value = True
    elif isinstance(default, bool):
      value = value.lower() in ("1", "true", "yes", "on")
    elif isinstance(default, int):
      value = int(value)
    elif isinstance(default, float):
      value = float(value)
    out[key] = value
  return out
