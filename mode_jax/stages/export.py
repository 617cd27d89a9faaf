"""Stage `export`: every finished model and what routing needs as one bundle (eval/bundle.py).

  python launch.py export --config configs/demo.py --workdir W [--config.export.out=DIR]

Every input is checked before anything is written (MissingInput names the
stage that makes it). On a pod every host restores the checkpoints (a
collective) and process 0 alone writes. Only reads the workdir.
"""

from mode_jax import workdir as wd
from mode_jax.eval import bundle, model_refs, report
from mode_jax.models import loader as model_loader
from mode_jax.models.clip import text_features
from mode_jax.train import runs


def run(config, workdir: str) -> str:
  """Writes the bundle (default <workdir>/bundle); returns its path."""
  if text_features(config.model):
    raise ValueError("config.model.text.features: a bundle holds Hugging Face CLIP models, and "
                     "a locked text tower (sentence features + a linear head) is not one; "
                     "export a model with a token text tower")
  out = bundle.export_config(config).out or wd.path(workdir, "bundle")
  models = runs.finished_models(config, workdir)
  centers, f2e, order = report.load_cluster(workdir)
  if len(order) != config.cluster.n:
    raise ValueError(f"cluster/expert_order.json has {len(order)} experts but "
                     f"config.cluster.n={config.cluster.n}")
  mesh = model_refs.eval_mesh()

  def params(ck, step):
    model, _ = model_loader.load_model(ck, model_cfg=config.model, step=step, mesh=mesh)
    return bundle.model_params(model)

  loaded = ((name, m.step, lambda m=m: params(m.ckpt_dir, m.step))
            for name, m in models.items())
  bundle.write_bundle(out, loaded, model_cfg=config.model, centers=centers, fine_to_expert=f2e,
                      order=order, embed_cfg=bundle.embed_config(config),
                      routing=bundle.routing_info(config),
                      provenance=bundle.provenance(config, workdir, models))
  return out
