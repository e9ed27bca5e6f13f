"""jaxclap: contrastive language-audio pretraining in JAX/Flax."""

__version__ = "0.1.0"
