"""Loss terms: the objective is ``sum(weight * term)`` over ``config.loss.terms``.

``config.loss.terms = {"info_nce": 1.0, "mae": 0.1}`` names the terms and their weights;
a weight of 0 turns a term off (it is not computed). The trainer sums what the config
names and knows no term by name. Each term is a pure function of the towers' outputs
(``Outputs``), the loss settings (``config.loss``) and the mesh, returning
``(value, metrics)``; its value is logged under ``Term.metric``.

To add a term: write its function here (the arithmetic itself belongs in
``jaxclap.losses``, tested against an unsharded reference) and register it in ``TERMS``,
with what it needs from the input (captions per clip) and from the model (the MAE
decoder's reconstruction, a learnable logit bias).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

from jaxclap import losses


class Outputs(NamedTuple):
  """What one forward pass of the two towers gives the terms."""
  audio: jax.Array           # [b, d] L2-normalised audio embeddings
  text: jax.Array            # [b, k, d] L2-normalised text embeddings, k captions per clip
  logit_scale: jax.Array     # scalar log multiplier, clamped to [0, ln 100]
  logit_bias: jax.Array | None       # SigLIP's bias (model.logit_bias_init set), else None
  reconstruction: tuple | None       # (pred, target, mask) of the MAE decoder, if asked


class Term(NamedTuple):
  fn: Callable[[Outputs, Any, Any], tuple[jax.Array, dict]]
  metric: str                        # the key its value is logged under
  captions_per_clip: int | None = None   # what input.captions_per_clip must be (None: any)
  uses_decoder: bool = False             # needs the audio tower's MAE reconstruction
  needs_bias: bool = False               # needs model.logit_bias_init
  min_batch: int = 1                     # global_batch_size it needs at least


def _info_nce(out: Outputs, cfg, mesh):
  # CLAP / SLAP / Speech-CLAP / CLSP stage 1: symmetric InfoNCE over the global batch.
  return losses.info_nce(out.audio, out.text[:, 0], out.logit_scale, mesh=mesh,
                         mode=cfg.mode)


def _sigmoid(out: Outputs, cfg, mesh):
  value, m = losses.sigmoid_loss(out.audio, out.text[:, 0], out.logit_scale,
                                 out.logit_bias, mesh=mesh, mode=cfg.mode)
  return value, {**m, "logit_bias": out.logit_bias}


def _multi_positive(out: Outputs, cfg, mesh):
  # CLSP stage 2: two captions per clip, multi_positive_lambda on the first.
  return losses.multi_positive_info_nce(out.audio, out.text, out.logit_scale, mesh=mesh,
                                        mode=cfg.mode, lam=float(cfg.multi_positive_lambda))


def _mae(out: Outputs, cfg, mesh):
  pred, target, mask = out.reconstruction
  return losses.mae_loss(pred, target, mask, norm_pix=bool(cfg.norm_pix)), {}


def _cka(out: Outputs, cfg, mesh):
  # AcuLa: the trained audio projection against the frozen teacher's projected pooled
  # states (its text head trains; the teacher tower sits in optim.frozen).
  return losses.cka_loss(out.audio, out.text[:, 0]), {}


TERMS: dict[str, Term] = {
    "info_nce": Term(_info_nce, "contrastive", captions_per_clip=1),
    "sigmoid": Term(_sigmoid, "contrastive", captions_per_clip=1, needs_bias=True),
    "multi_positive": Term(_multi_positive, "contrastive", captions_per_clip=2),
    "mae": Term(_mae, "mae", uses_decoder=True),
    # Gram matrices over the batch: one clip has no CKA.
    "cka": Term(_cka, "cka_loss", min_batch=2),
}


def active(config: Any) -> dict[str, float]:
  """The terms of ``config.loss.terms`` with a weight > 0, checked against the rest of
  the config before anything compiles; errors name the field."""
  weights = dict(config.loss.terms)
  unknown = sorted(set(weights) - set(TERMS))
  if unknown:
    raise ValueError(f"config.loss.terms: unknown term(s) {unknown}; use {sorted(TERMS)}")
  on = {name: float(w) for name, w in weights.items() if float(w) != 0.0}
  if any(w < 0 for w in on.values()):
    raise ValueError(f"config.loss.terms={weights}: weights must be >= 0")
  if not on:
    raise ValueError(f"config.loss.terms={weights}: no term has a weight > 0")
  metrics = [TERMS[n].metric for n in on]
  if len(set(metrics)) < len(metrics):
    raise ValueError(f"config.loss.terms={weights}: more than one contrastive term")
  k = int(config.input.captions_per_clip)
  for name in on:
    t = TERMS[name]
    if t.captions_per_clip is not None and t.captions_per_clip != k:
      raise ValueError(f"config.loss.terms.{name} with input.captions_per_clip={k}: "
                       f"{name!r} takes {t.captions_per_clip} caption(s) per clip")
    if t.needs_bias and config.model.logit_bias_init is None:
      raise ValueError(f"config.loss.terms.{name} needs a learnable bias: set "
                       "config.model.logit_bias_init (SigLIP: -10.0)")
    if int(config.global_batch_size) < t.min_batch:
      raise ValueError(f"config.loss.terms.{name} compares Gram matrices over the batch: "
                       f"global_batch_size must be >= {t.min_batch}")
  if k not in (1, 2):
    raise ValueError(f"config.input.captions_per_clip={k}: use 1, or 2 for multi_positive")
  return on


def uses_decoder(config: Any) -> bool:
  """Whether the model carries (and the loss runs) the audio tower's MAE decoder: the
  one criterion for training, ``init_from``, ``open_run`` and export."""
  return any(TERMS[n].uses_decoder for n, w in dict(config.loss.terms).items()
             if n in TERMS and float(w) != 0.0)


def total(weights: dict[str, float], out: Outputs, cfg, mesh) -> tuple[jax.Array, dict]:
  """``sum(weight * term)`` and every term's metrics (its value under ``Term.metric``)."""
  value, metrics = 0.0, {}
  for name, w in weights.items():
    t = TERMS[name]
    v, m = t.fn(out, cfg, mesh)
    value = value + w * v
    metrics.update({**m, t.metric: v})
  return value, metrics
