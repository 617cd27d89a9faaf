"""Writes configs/eval_data/openai_prompts.json from OpenAI CLIP's data/prompts.md.

  python scripts/openai_prompts.py /path/to/CLIP/data/prompts.md

prompts.md (github.com/openai/CLIP, MIT licence, Copyright (c) 2021 OpenAI)
lists the class names and templates behind the CLIP paper's zero-shot
scores for 26 data sets, as Python lists in markdown. The evaluation suites
(configs/eval_mode26.py) use them where a task folder has no classnames.txt
and the clip-benchmark package has no list. Parsed with `ast`, never executed.
"""

import ast
import json
import os
import re
import sys

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "configs", "eval_data", "openai_prompts.json")


def parse(text: str) -> dict:
  out = {}
  for section in re.split(r"^## ", text, flags=re.M)[1:]:
    name = section.splitlines()[0].strip()
    lists = dict(re.findall(r"^(classes|templates) = (\[.*?^\])", section, flags=re.M | re.S))
    if set(lists) == {"classes", "templates"}:
      out[name] = {k: ast.literal_eval(v) for k, v in lists.items()}
  return out


def main(path):
  with open(path) as f:
    data = parse(f.read())
  doc = {"source": "https://github.com/openai/CLIP/blob/main/data/prompts.md (MIT licence, "
                   "Copyright (c) 2021 OpenAI); templates spell the slot {}",
         "datasets": data}
  with open(OUT, "w") as f:
    json.dump(doc, f, indent=1)
  print(f"{OUT}: {len(data)} data sets")


if __name__ == "__main__":
  main(sys.argv[1])
