"""Helpers for looking into a finished workdir from a notebook.

`DemoRun(workdir)` reads the locked config and the clustering, shows which
samples each expert was trained on, and builds a MoDE zero-shot classifier:
the experts' class features for a task, weighted by the task's routing
weights (computed from the class names alone, docs/method.md step 8).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from mode_jax import workdir as wd
from mode_jax.data.io import loader, preprocess, webdataset as wds
from mode_jax.ensemble import routing
from mode_jax.eval import evaluate as ev
from mode_jax.eval import files, report, zeroshot
from mode_jax.eval import tasks as tasks_lib
from mode_jax.models import embedders
from mode_jax.models import loader as model_loader
from mode_jax.train import runs, text_inputs


class DemoRun:

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.config = ml_collections.ConfigDict(
        wd.read_json(wd.require(workdir, "config.json", "pipeline")))
    self.fine_centers, self.fine_to_expert, self.expert_order = report.load_cluster(workdir)
    self.n = len(self.expert_order)
    self.tasks = {n: t.spec() for n, t in tasks_lib.workdir_tasks(workdir).items()}

  def samples_per_expert(self, k: int = 6, seed: int = 0):
    """{expert: [(image uint8, caption), ...]}: k training samples of each expert."""
    out, rng = {c: [] for c in range(self.n)}, np.random.default_rng(seed)
    shards = loader.shard_paths(self.config.input.shards, self.workdir)
    for shard in rng.permutation(shards)[:3]:
      z = wd.load_npz(wd.path(self.workdir, "assign", wd.shard_stem(shard) + ".npz"))
      expert_of = dict(zip(z["keys"].astype(str), z["expert"].astype(int)))
      for s in wds.iter_shard(shard):
        c = expert_of.get(s["__key__"], -1)
        if c >= 0 and len(out[c]) < k and s["image"] is not None:
          out[c].append((s["image"], s["texts"][0]))
    return out

  def routing_weights(self, task: str) -> np.ndarray:
    emb = files.read_meta_emb(self.workdir, task)
    return np.asarray(routing.routing_weights(emb, self.fine_centers, self.fine_to_expert,
                                              self.n, mode=self.config.report.mode))

  def classifier(self, task: str):
    """Returns classify(images uint8 [B, H, W, 3]) -> (MoDE logits [B, N], weights [n])."""
    spec = self.tasks[task]
    models = runs.finished_models(self.config, self.workdir)
    tok = text_inputs.eval_tokenizer(self.config, self.config.model)
    weights = self.routing_weights(task)
    experts = []
    for c in range(self.n):
      m = models[f"expert_{c}"]
      model, _ = model_loader.load_model(m.ckpt_dir, model_cfg=self.config.model, step=m.step)
      embed_images, embed_texts = embedders.make_embedders(
          model, tok, context_length=self.config.model.context_length)
      feats = zeroshot.class_features(embed_texts, spec["classnames"],
                                      ev.spec_templates(task, spec))
      experts.append((embed_images, np.asarray(feats)))
    res = self.config.model.image_size

    def classify(images_u8):
      x = np.stack([preprocess.resize_center_crop(im, res) for im in images_u8])   # uint8
      logits = sum(w * (embed(x) @ feats.T) for w, (embed, feats) in zip(weights, experts))
      return logits, weights

    return classify
