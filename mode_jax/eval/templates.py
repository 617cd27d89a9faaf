"""Class names and prompt templates, read from files that ship in installed packages.

Sources (read as files, never imported: importing open_clip pulls torch):
* open-clip-torch `open_clip/zero_shot_metadata.py`: the 80 OpenAI ImageNet
  templates (as `lambda c: f'...'`, parsed with `ast`) and the 1,000
  ImageNet class names (OpenAI's cleaned list).
* clip-benchmark `clip_benchmark/datasets/en_classnames.json` and
  `en_zeroshot_classification_templates.json`: class names of 17 data sets
  and per-data-set templates of 33 (templates spell the slot `{c}`).

A template is a string with one slot, `{c}` or `{}`. A class is a list of
names (synonyms); its feature averages every (name, template) prompt, so a
plain string is a class with one name.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
from typing import Sequence

OPEN_CLIP_INSTALL = "pip install --no-deps open-clip-torch"
CLIP_BENCHMARK_INSTALL = "pip install --no-deps clip-benchmark"


def package_file(package: str, rel: str, install: str) -> str:
  """Path of a data file inside an installed package, without importing the package."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"package `{package}` is not installed: {install}")
  p = os.path.join(list(spec.submodule_search_locations)[0], rel)
  if not os.path.exists(p):
    raise FileNotFoundError(f"{p} missing from `{package}`: {install}")
  return p


def _lambda_template(node: ast.AST) -> str:
  """`lambda c: f'a photo of a {c}.'` -> 'a photo of a {c}.'."""
  if not (isinstance(node, ast.Lambda) and isinstance(node.body, ast.JoinedStr)):
    raise ValueError(f"unexpected template node {ast.dump(node)[:80]}")
  parts = []
  for v in node.body.values:
    if isinstance(v, ast.Constant):
      parts.append(v.value)
    elif isinstance(v, ast.FormattedValue):
      parts.append("{c}")
    else:
      raise ValueError("unexpected f-string part")
  return "".join(parts)


@functools.cache
def _open_clip_metadata() -> dict[str, tuple]:
  """Top-level tuple assignments of open_clip/zero_shot_metadata.py, parsed, not executed."""
  p = package_file("open_clip", "zero_shot_metadata.py", OPEN_CLIP_INSTALL)
  with open(p) as f:
    tree = ast.parse(f.read())
  out = {}
  for node in tree.body:
    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
      name = node.targets[0].id
      elts = node.value.elts
      if elts and isinstance(elts[0], ast.Lambda):
        out[name] = tuple(_lambda_template(e) for e in elts)
      else:
        out[name] = tuple(ast.literal_eval(node.value))
  return out


def openai_imagenet_templates() -> list[str]:
  """The 80 prompt templates of OpenAI CLIP's ImageNet evaluation."""
  return list(_open_clip_metadata()["OPENAI_IMAGENET_TEMPLATES"])


def imagenet_classnames() -> list[str]:
  """The 1,000 ImageNet class names in label order (OpenAI's cleaned names)."""
  return list(_open_clip_metadata()["IMAGENET_CLASSNAMES"])


@functools.cache
def _clip_benchmark_json(name: str) -> dict:
  p = package_file("clip_benchmark", os.path.join("datasets", name), CLIP_BENCHMARK_INSTALL)
  with open(p) as f:
    return json.load(f)


def benchmark_classnames(task: str) -> list[str] | None:
  """Class names of a CLIP-benchmark data set ('mnist', 'pets', ...), or None if unknown."""
  return _clip_benchmark_json("en_classnames.json").get(task)


def benchmark_templates(task: str) -> list[str] | None:
  """Per-data-set templates of the CLIP benchmark, or None if it has none for `task`."""
  return _clip_benchmark_json("en_zeroshot_classification_templates.json").get(task)


def task_templates(task: str) -> list[str]:
  """The data set's own templates when the CLIP benchmark has them, else the 80 OpenAI ones."""
  if task in ("imagenet", "imagenet1k"):
    return openai_imagenet_templates()
  return benchmark_templates(task) or openai_imagenet_templates()


def fill(template: str, name: str) -> str:
  """Puts a class name into a template's slot (`{c}` or `{}`); str.replace, so braces in
  names are safe."""
  if "{c}" in template:
    return template.replace("{c}", name)
  if "{}" in template:
    return template.replace("{}", name)
  raise ValueError(f"template {template!r} has no slot ({{c}} or {{}})")


def as_synonyms(classnames: Sequence[str | Sequence[str]]) -> list[list[str]]:
  """Each class as a non-empty list of names: 'cat' -> ['cat']; ['cat', 'kitty'] stays."""
  out = []
  for c in classnames:
    names = [c] if isinstance(c, str) else list(c)
    if not names:
      raise ValueError("a class needs at least one name")
    out.append(names)
  return out


def class_prompts(classnames, templates: Sequence[str]) -> list[list[str]]:
  """Per class, every (name, template) prompt: len(names) x len(templates) strings."""
  if not templates:
    raise ValueError("no templates")
  return [[fill(t, n) for n in names for t in templates] for names in as_synonyms(classnames)]
