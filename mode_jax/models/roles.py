"""What each CLIP parameter is, attached to the nnx.Param where it is created.

Rules that treat parameters by kind (weight decay: train/optimizer.py) read
this role from the parameter itself instead of guessing from its rank or
matching path strings. The rank stops telling a bias from a matrix once
`scan_layers` stacks the blocks on a depth axis (every bias becomes 2-d),
and a path pattern that matches nothing fails silently; a parameter without
a role makes `role_of` raise.
"""

from __future__ import annotations

from flax import nnx

METADATA_KEY = "param_role"

KERNEL = "kernel"            # matmul weights: qkv, out, c_fc, c_proj, patch embedding, projections
EMBEDDING = "embedding"      # the token embedding table
POSITION = "position"        # learned positional embeddings (both towers)
CLASS_TOKEN = "class_token"  # the image tower's class embedding
BIAS = "bias"                # biases of linear layers and LayerNorms
NORM = "norm"                # LayerNorm scales (gains)
LOGIT = "logit"              # logit scale and SigLIP's logit bias
ROLES = (KERNEL, EMBEDDING, POSITION, CLASS_TOKEN, BIAS, NORM, LOGIT)


def meta(role: str) -> dict:
  """Metadata for nnx.Param(value, **meta(role)) or a layer's *_metadata argument."""
  if role not in ROLES:
    raise ValueError(f"unknown parameter role {role!r}; choose from {ROLES}")
  return {METADATA_KEY: role}


def linear(*, bias: bool = True) -> dict:
  """Keyword arguments that give an nnx.Linear's kernel and bias their roles."""
  out = {"kernel_metadata": meta(KERNEL)}
  if bias:
    out["bias_metadata"] = meta(BIAS)
  return out


def layer_norm() -> dict:
  """Keyword arguments that give an nnx.LayerNorm's scale and bias their roles."""
  return {"scale_metadata": meta(NORM), "bias_metadata": meta(BIAS)}


def role_of(variable, where: str = "") -> str:
  """The role of one nnx.Variable; ValueError naming `where` when it has none."""
  role = variable.get_metadata().get(METADATA_KEY) if isinstance(variable, nnx.Variable) else None
  if role not in ROLES:
    raise ValueError(f"parameter {where or variable!s} carries no {METADATA_KEY!r} "
                     f"(one of {ROLES}): give it one where it is created (models/roles.py)")
  return role
