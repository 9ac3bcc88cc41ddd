"""Sampling: the guided `lax.scan` sampler, batching over prompts and scales, prompts, images, `--mode=sample`."""
