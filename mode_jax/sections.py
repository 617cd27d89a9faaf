"""A config section as a stage reads it: its defaults with the config's fields put over them.

Sections (config.cluster, config.embed, ...) may come as ConfigDicts, plain dicts or
None (a config without the section); a field the defaults do not have is a typo or
a field of another version, and stops the stage before any compute.
"""

import ml_collections


def overlay(defaults: ml_collections.ConfigDict, cfg, section: str) -> ml_collections.ConfigDict:
  """`defaults` with every field of `cfg` put over it; ValueError naming config.<section>.<field>
  for a field the defaults lack."""
  for key, value in (cfg or {}).items():
    if key not in defaults:
      known = ", ".join(sorted(defaults))
      raise ValueError(f"unknown config field {section}.{key}; known: {known}")
    defaults[key] = value
  return defaults
