"""muse_jax: Muse text-to-image masked generative transformers in JAX/Flax."""
__version__ = "0.1.0"
