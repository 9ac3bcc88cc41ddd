"""Diffusion maths of GLIDE / improved-diffusion as small pure functions: schedules, q and p, losses,
respacing and the per-step samplers."""

from glide_jax.diffusion.gaussian import GaussianDiffusion
from glide_jax.diffusion.losses import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    hybrid_loss,
    min_snr_weight,
    normal_kl,
    vb_terms_bpd,
)
from glide_jax.diffusion.respace import respace, space_timesteps
from glide_jax.diffusion.samplers import SAMPLERS, ddim_step, dpm_solver_pp_2m_step, p_sample_step, sample_loop
from glide_jax.diffusion.schedules import SCHEDULE_NAMES, get_named_beta_schedule

__all__ = [
    "SAMPLERS", "SCHEDULE_NAMES", "GaussianDiffusion", "approx_standard_normal_cdf", "ddim_step",
    "discretized_gaussian_log_likelihood", "dpm_solver_pp_2m_step", "get_named_beta_schedule", "hybrid_loss",
    "min_snr_weight", "normal_kl", "p_sample_step", "respace", "sample_loop", "space_timesteps", "vb_terms_bpd",
]
