"""Captions for icons, emoji and stamps, written the way web alt-text reads.

A web crawl's captions are not one template: the same picture is "grinning
face emoji", "Grinning face", "a grinning face, emoji icon" or "emoji:
grinning face (happy, smile)". Each image gets `k` distinct texts drawn
from many natural forms that combine its name, aliases, tags, category and
description; the draw is seeded by (seed, key), so it is stable whatever
else is in the corpus. None of these forms is a zero-shot template of
corpus_split (EVAL_TEMPLATES), so evaluation prompts are never trained on.
"""

from __future__ import annotations

import hashlib
import random
import re

from mode_jax.data.corpus import tables

MAX_TAGS = 3   # tags quoted in one caption; alt-text rarely lists more
_NO_ARTICLE = re.compile(r"^(\d|the |a |an |some |two |three |people|men|women|family|couple)")
_AN = re.compile(r"^(?:[aeio]|u(?!ni|s[aeiu]|tensil)|hour|honest|heir|x[ -]ray|8|11|18)")
_AN_LETTERS = "AEFHILMNORSX"   # letters read with a vowel sound: 'an SOS button', 'an MRI'



def readable(slug: str) -> str:
  """'grinning-face_with' -> 'grinning face with'; skin-tone colons kept as commas."""
  text = re.sub(r"[-_]+", " ", slug).replace(":", ",")
  return re.sub(r"\s+", " ", text).strip()


def _plural(name: str) -> bool:
  last = name.split(" ")[-1]
  return last.endswith("s") and not last.endswith(("ss", "us", "is", "os"))


def with_article(name: str) -> str:
  """'apple' -> 'an apple', 'unicorn' -> 'a unicorn', plurals and numbers as they are."""
  low = name.lower()
  if not name or _NO_ARTICLE.match(low) or _plural(low):
    return name
  first = name.split(" ")[0]
  acronym = len(first) > 1 and first.isupper() and first.isalpha()
  vowel = first[0] in _AN_LETTERS if acronym else bool(_AN.match(low))
  return ("an " if vowel else "a ") + name


def _letters(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "", text.lower())


def _cap(text: str) -> str:
  return text[:1].upper() + text[1:]


def _tags(name: str, tags) -> list[str]:
  """Tags that add something: not already words of the name, deduplicated."""
  words = set(name.lower().split())
  out = []
  for t in tags:
    t = readable(t).lower()
    if t and t not in words and t != name.lower() and t not in out:
      out.append(t)
  return out


# Each form (tables/caption_forms.json): (kind, needs, template). `needs` names the context fields it uses
# beyond the name; a form is skipped when one of them is empty. "descx" is the
# description when it says more than the name ("A frog." does not: no "A frog: A frog.").
FORMS = [(kind, tuple(needs), template)
         for kind, needs, template in tables.load("caption_forms")]
KINDS = ("emoji", "icon", "stamp")
# A field so informative that one caption always uses it: a stamp's sentence is
# the only text a person wrote about that very picture.
ALWAYS = {"stamp": "desc"}
_BY_KIND = {k: [(needs, t) for kd, needs, t in FORMS if kd == k] for k in KINDS}


def key_rng(seed: int, key: str) -> random.Random:
  """A generator that depends only on (seed, key): a record's texts never shift.

  random.Random, not numpy: 100k records would spend seconds creating numpy generators.
  """
  digest = hashlib.sha1(f"{seed}:{key}".encode()).digest()
  return random.Random(int.from_bytes(digest[:8], "little"))


def alt_texts(key: str, kind: str, name: str, *, raw: str = "", source: str = "", style: str = "",
              aliases=(), tags=(), category: str = "", description: str = "",
              k: int = 3, seed: int = 0) -> list[str]:
  """Up to k distinct captions for one image (fewer only when too few forms apply).

  `name` is what the image shows ('account circle'); `raw` its file name as
  published ('account-circle-outline'), quoted as is by a few forms, as
  alt-text copied from a file name would be; `style` says how it is drawn.
  """
  if kind not in KINDS:
    raise ValueError(f"kind {kind!r}: one of {KINDS}")
  name = readable(name)
  if not name:
    raise ValueError(f"{key}: empty name")
  rng = key_rng(seed, key)
  tag_list = _tags(name, tags)
  if len(tag_list) > MAX_TAGS:
    tag_list = [tag_list[i] for i in sorted(rng.sample(range(len(tag_list)), MAX_TAGS))]
  alias_list = [readable(a) for a in aliases if readable(a).lower() != name.lower()]
  ctx = {
      "n": name, "N": _cap(name), "raw": readable(raw) if raw else name,
      "an": with_article(name), "An": _cap(with_article(name)),
      "src": source, "style": style, "tags": ", ".join(tag_list),
      "cat": readable(category).lower() if category else "",
      "alias": rng.choice(alias_list) if alias_list else "",
      "desc": re.sub(r"\s+", " ", description).strip(),
  }
  bare = {_letters(name), _letters(with_article(name))}
  ctx["descx"] = ctx["desc"] if _letters(ctx["desc"]) not in bare else ""
  forms = [(needs, t) for needs, t in _BY_KIND[kind] if all(ctx[n] for n in needs)]
  rng.shuffle(forms)
  must = ALWAYS.get(kind)
  if must and ctx[must]:   # the first form that uses it moves to the front
    first = next(i for i, (needs, _) in enumerate(forms) if must in needs)
    forms.insert(0, forms.pop(first))
  forms = [t for _, t in forms]
  out, seen = [], set()
  for form in forms:
    text = form.format(**ctx)
    if text.lower() not in seen:
      seen.add(text.lower())
      out.append(text)
    if len(out) == k:
      break
  return out
