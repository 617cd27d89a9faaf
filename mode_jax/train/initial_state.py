"""The state a run trains from: resume, else fork, else pretrained, else fresh.

1. resume   the run's own newest checkpoint (params, moments, step, data position)
2. fork     another run's checkpoint at config.init.step (an expert from the seed);
            with init.continue_data also its data position (the dense baseline)
3. pretrained  converted public CLIP weights (params only) over a fresh state
4. fresh    init_fn(): parameters created already sharded
"""

from __future__ import annotations

import jax
from flax import nnx

from mode_jax import checkpoint as ckpt_lib
from mode_jax.models import loader as model_loader


def initial_state(config, ck, data, abstract, shardings, init_fn, desc: str):
  """The state to train from; moves `data` to the saved position when there is one."""
  if ck.latest_step() is not None:
    state, meta = ck.restore(ckpt_lib.abstract_with_shardings(abstract, shardings))
    if meta.get("data") is not None:
      data.set_state(meta["data"])
    print(f"[{desc}] resumed from {ck.directory} step {int(state['step'])}")
    return state
  if config.init.get("checkpoint"):
    state, meta = restore_fork(config, abstract, shardings)
    if config.init.get("continue_data"):
      data.set_state(meta["data"])
    print(f"[{desc}] forked from {config.init.checkpoint} at step {int(state['step'])}"
          + (f", data position {meta['data'].get('position')}"
             if config.init.get("continue_data") else ""))
    return state
  state = init_fn()
  if config.init.get("pretrained"):
    state = load_pretrained(config, state, shardings)
  return state


def restore_fork(config, abstract, shardings):
  """(state, meta) of another run (the seed) at config.init.step: how an expert starts.

  config.init.checkpoint is that run's checkpoint directory (its ckpt/).
  """
  ck = ckpt_lib.Checkpointer(config.init.checkpoint)
  step = config.init.step if config.init.get("step", -1) >= 0 else ck.latest_step()
  if step is None or step not in ck.all_steps():
    raise FileNotFoundError(f"config.init.checkpoint={config.init.checkpoint!r} has no step "
                            f"{step} (has {ck.all_steps()})")
  state, meta = ck.restore(ckpt_lib.abstract_with_shardings(abstract, shardings), step)
  ck.close()
  return state, meta


def load_pretrained(config, state, shardings):
  """`state` with its parameters replaced by config.init.pretrained's (layout per scan_layers)."""
  model, _ = model_loader.load_model(config.init.pretrained, model_cfg=config.model)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))   # fits config.model, or an error
  new = jax.tree.map(lambda x: x, state["params"])
  nnx.replace_by_pure_dict(new, params)
  return jax.device_put(dict(state, params=new), shardings)
