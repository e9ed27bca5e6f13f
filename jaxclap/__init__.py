"""jaxclap: contrastive language-audio pretraining in JAX/Flax."""

__version__ = "0.1.0"


def load(workdir: str, step: int | None = None):
  """``jaxclap.inference.load``: the trained model of a run folder."""
  from jaxclap.inference import load as _load
  return _load(workdir, step)
