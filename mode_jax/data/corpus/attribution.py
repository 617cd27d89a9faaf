"""LICENSES.md and attribution.json beside a corpus: each family's licence and source package.

CC BY, CC BY-SA and GPL art may be redistributed only with credit and the
licence named, so a corpus built from these packages carries, per (family,
source, version, licence), the attribution line and how many images it used.
"""

from __future__ import annotations

import collections
import json

from mode_jax import workdir as wd


def entries(records: list[dict]) -> list[dict]:
  """One entry per (family, source, version, licence), with the images counted.

  Sources whose attribution is per image (OpenMoji names each emoji's
  author) get their distinct lines listed under `attributions`.
  """
  groups = collections.OrderedDict()
  for r in sorted(records, key=lambda r: (r["family"], r["source"], r["key"])):
    k = (r["family"], r["source"], r["version"], r["licence"])
    groups.setdefault(k, []).append(r)
  out = []
  for (family, source, version, licence), recs in groups.items():
    lines = list(dict.fromkeys(_without_file(r["attribution"]) for r in recs))
    out.append({"family": family, "source": source, "version": version, "licence": licence,
                "images": len(recs), "attributions": lines})
  return out


def _without_file(line: str) -> str:
  """'... via npm x@1 (color/svg/1F600.svg)' -> '... via npm x@1': one line per package."""
  return line.rsplit(" (", 1)[0] if line.endswith(")") and "/" in line.rsplit(" (", 1)[-1] else line


def write(records: list[dict], out_dir: str, extra: list[dict] = ()) -> dict:
  """Writes out_dir/LICENSES.md and out_dir/attribution.json (local or object store).

  `extra`: entries of sources that are not records (clip art, Fashion-MNIST),
  in the shape entries() returns. Returns the two paths.
  """
  items = entries(records) + list(extra)
  paths = {"json": wd.path(out_dir, "attribution.json"), "md": wd.path(out_dir, "LICENSES.md")}
  wd.write_text(paths["json"], json.dumps(items, indent=1))
  lines = ["# Licences of the images in this corpus", "",
           "Each family's images keep their licence; credit as below when redistributing.", "",
           "| family | source | version | licence | images |", "|---|---|---|---|---|"]
  lines += [f"| {e['family']} | {e['source']} | {e['version']} | {e['licence']} | {e['images']} |"
            for e in items]
  for e in items:
    lines += ["", f"## {e['family']}: {e['source']} {e['version']} ({e['licence']})", ""]
    lines += [f"- {a}" for a in e["attributions"]]
  wd.write_text(paths["md"], "\n".join(lines) + "\n")
  return paths
