"""glide-jax: GLIDE (text-conditional diffusion with classifier-free guidance) in JAX/Flax."""

__version__ = "0.1.0"
