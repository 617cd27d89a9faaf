"""What a model's text tower reads: CLIP BPE tokens, or a locked tower's sentence features.

A model with config.model.text.features > 0 (models/text.py FeatureText: LiT, Zhai et
al. 2022, with the text side locked) takes the frozen sentence encoder's embedding of a
caption instead of its tokens. In training these are the embed stage's rows
(embed/<stem>.npz: one caption per sample, the one the clustering read), matched to
samples by key, so the encoder never runs in the loop; evaluation encodes prompts and
captions with the same encoder (config.embed). The seed, experts and dense baseline then
depend on embed/ as well (runs.decide keys them by it).
"""

from __future__ import annotations

import functools
import json

import numpy as np

from mode_jax import provenance
from mode_jax import workdir as wd
from mode_jax.models.clip import text_features
from mode_jax.text import encoders

EMBED_STAGE = "embed"


def clip_tokenizer():
  """The CLIP BPE tokenizer; call as tok(texts, context_length=...)."""
  from mode_jax.text.clip_bpe import ClipTokenizer
  return ClipTokenizer()


class CaptionFeatures:
  """keys -> float32 [B, F]: each sample's caption embedding from embed/ (the loader calls
  it with the batch's keys: `by_key`)."""

  by_key = True

  def __init__(self, keys, emb: np.ndarray):
    self.row = {str(k): i for i, k in enumerate(keys)}
    self.emb = np.asarray(emb)

  @property
  def dim(self) -> int:
    return int(self.emb.shape[1])

  @classmethod
  def from_workdir(cls, workdir: str, shards) -> "CaptionFeatures":
    """The rows of embed/<stem>.npz of every shard (MissingInput naming `embed` if absent)."""
    keys, embs = [], []
    for shard in shards:
      z = wd.load_npz(wd.require(workdir, f"embed/{wd.shard_stem(shard)}.npz", EMBED_STAGE))
      keys.append(z["keys"].astype(str))
      embs.append(z["emb"])
    if not keys:
      raise wd.MissingInput(wd.path(workdir, "embed/<stem>.npz"), EMBED_STAGE)
    keys = np.concatenate(keys)
    if len(np.unique(keys)) != len(keys):   # samples are matched by key across shards
      raise ValueError(f"the training shards repeat sample keys ({len(keys)} rows, "
                       f"{len(np.unique(keys))} keys): a locked text tower needs keys unique "
                       "across shards (img2dataset's are)")
    return cls(keys, np.concatenate(embs))

  def __call__(self, texts, keys):
    rows = [self.row.get(k, -1) for k in keys]
    if min(rows, default=0) < 0:
      missing = [k for k, r in zip(keys, rows) if r < 0]
      raise KeyError(f"samples {missing[:3]} have no caption embedding in embed/: "
                     "run python launch.py embed (with this config) first")
    return self.emb[rows].astype(np.float32)


def check_dim(model_cfg, dim: int, what: str) -> None:
  if text_features(model_cfg) != dim:
    raise ValueError(f"config.model.text.features={text_features(model_cfg)} but {what} "
                     f"gives {dim}-dimensional embeddings")


def training_tokenize(config, workdir: str, index):
  """The loader's tokenize callable: CLIP tokens of config.model.context_length, or the
  embed stage's caption features of the index's shards."""
  if not text_features(config.model):
    return functools.partial(clip_tokenizer(), context_length=config.model.context_length)
  table = CaptionFeatures.from_workdir(workdir, index.shards)
  check_dim(config.model, table.dim, "embed/")
  return table


def features_input(workdir: str) -> dict:
  """{name: Input} a locked-text-tower run adds: the embed stage's finished outputs."""
  return {"caption features": provenance.upstream(workdir, EMBED_STAGE, EMBED_STAGE,
                                                  "caption embeddings")}


class PromptFeatures:
  """texts -> float32 [N, F] of a frozen sentence encoder, each distinct text encoded once per
  process: every expert, the seed and dense read the same prompts and captions of a task."""

  def __init__(self, encoder):
    self.encoder, self.dim, self.memo = encoder, encoder.dim, {}

  def __call__(self, texts, context_length=None):
    texts = [str(t) for t in texts]
    new = list(dict.fromkeys(t for t in texts if t not in self.memo))
    if new:
      self.memo.update(zip(new, self.encoder.encode(new, batch_size=256)))
    return np.stack([self.memo[t] for t in texts]) if texts else np.zeros((0, self.dim),
                                                                         np.float32)


@functools.lru_cache(maxsize=2)
def _prompt_features(embed_json: str) -> PromptFeatures:
  import ml_collections
  cfg = encoders.resolve_config(ml_collections.ConfigDict(json.loads(embed_json)))
  return PromptFeatures(encoders.make_encoder(cfg))


def eval_tokenizer(config, model_cfg):
  """tokenizer(texts, context_length=...) for models/embedders.make_embedders: CLIP tokens,
  or the sentence features of config.embed's encoder (the embed stage's)."""
  if not text_features(model_cfg):
    return clip_tokenizer()
  embed = config.get("embed")
  features = _prompt_features(json.dumps(embed.to_dict() if embed else {}, sort_keys=True))
  check_dim(model_cfg, features.dim, f"the sentence encoder {features.encoder.name!r}")
  return features
