"""Diffusion maths of GLIDE / improved-diffusion as small pure functions."""

from glide_jax.diffusion.schedules import get_named_beta_schedule
from glide_jax.diffusion.gaussian import GaussianDiffusion
from glide_jax.diffusion.losses import (
    approx_standard_normal_cdf, discretized_gaussian_log_likelihood, hybrid_loss, normal_kl, vb_terms_bpd)

__all__ = [
    "GaussianDiffusion", "approx_standard_normal_cdf", "discretized_gaussian_log_likelihood",
    "get_named_beta_schedule", "hybrid_loss", "normal_kl", "vb_terms_bpd",
]
