"""Respacing (GLIDE_REFERENCE.md §3 "Respacing"): kept timesteps, rebuilt betas, timestep_map, errors."""

import numpy as np
import pytest

from glide_jax.diffusion import GaussianDiffusion
from glide_jax.diffusion.respace import respace, space_timesteps
from glide_jax.errors import ConfigError


def reference_space_timesteps(num_timesteps, section_counts):
  """An independent transcription of improved-diffusion's `respace.space_timesteps` (plus glide's fast27)."""
  if section_counts == "fast27":
    steps = reference_space_timesteps(num_timesteps, "10,10,3,2,2")
    steps.remove(num_timesteps - 1)
    steps.add(num_timesteps - 3)
    return steps
  if isinstance(section_counts, str):
    if section_counts.startswith("ddim"):
      desired_count = int(section_counts[len("ddim"):])
      for i in range(1, num_timesteps):
        if len(range(0, num_timesteps, i)) == desired_count:
          return set(range(0, num_timesteps, i))
      raise ValueError(f"cannot create exactly {num_timesteps} steps with an integer stride")
    section_counts = [int(x) for x in section_counts.split(",")]
  size_per = num_timesteps // len(section_counts)
  extra = num_timesteps % len(section_counts)
  start_idx = 0
  all_steps = []
  for i, section_count in enumerate(section_counts):
    size = size_per + (1 if i < extra else 0)
    if size < section_count:
      raise ValueError(f"cannot divide section of {size} steps into {section_count}")
    if section_count <= 1:
      frac_stride = 1
    else:
      frac_stride = (size - 1) / (section_count - 1)
    cur_idx = 0.0
    taken_steps = []
    for _ in range(section_count):
      taken_steps.append(start_idx + round(cur_idx))
      cur_idx += frac_stride
    all_steps += taken_steps
    start_idx += size
  return set(all_steps)


REFERENCE_27 = [0, 22, 44, 66, 88, 111, 133, 155, 177, 199, 200, 222, 244, 266, 288, 311, 333, 355, 377, 399,
                400, 500, 599, 600, 799, 800, 999]


def test_100_over_1000_strides_with_round_half_to_even():
  steps = sorted(space_timesteps(1000, "100"))
  assert len(steps) == 100
  assert steps[:7] == [0, 10, 20, 30, 40, 50, 61]
  assert steps[-2:] == [989, 999]
  # The reference doc's formula: index = round(i * 999/99).
  assert steps == [round(i * 999 / 99) for i in range(100)]
  assert set(steps) == reference_space_timesteps(1000, "100")


@pytest.mark.parametrize("spec,num_timesteps", [
    ("100", 1000), ("50", 1000), ("250", 1000), ("10", 100), ("5", 100), ("7", 100), ("3", 10),
    ("10,10,3,2,2", 1000), ("1,2,3", 100), ("4,4,4", 50), ("10,5", 101), ("1", 1000),
    ("ddim50", 1000), ("ddim10", 100), ("ddim25", 1000), ("fast27", 1000),
])
def test_matches_improved_diffusion(spec, num_timesteps):
  assert space_timesteps(num_timesteps, spec) == reference_space_timesteps(num_timesteps, spec)


def test_half_to_even_rounding_inside_sections():
  # "3" over a 200-step section has stride 99.5: round(99.5) = 100 (half to even), not 99 or 100 by floor.
  assert sorted(space_timesteps(200, "3")) == [0, 100, 199]
  # "3" over 6 steps has stride 2.5: round(2.5) = 2 (half to even, where half-up would give 3).
  assert sorted(space_timesteps(6, "3")) == [0, 2, 5]


def test_sections_10_10_3_2_2_keep_the_reference_27_steps():
  assert sorted(space_timesteps(1000, "10,10,3,2,2")) == REFERENCE_27


def test_fast27_replaces_999_by_997():
  assert sorted(space_timesteps(1000, "fast27")) == REFERENCE_27[:-1] + [997]


def test_ddim50_keeps_every_20th():
  assert sorted(space_timesteps(1000, "ddim50")) == list(range(0, 1000, 20))
  assert sorted(space_timesteps(100, "ddim10")) == list(range(0, 100, 10))


@pytest.mark.parametrize("spec", ["", "1000", " 1000 "])
def test_all_steps(spec):
  assert space_timesteps(1000, spec) == set(range(1000))


@pytest.mark.parametrize("schedule", ["squaredcos_cap_v2", "linear"])
@pytest.mark.parametrize("spec", ["100", "10,10,3,2,2", "fast27", "ddim50", "7"])
def test_rebuilt_betas_reproduce_the_base_alphas_cumprod(schedule, spec):
  base = GaussianDiffusion.from_schedule(schedule, 1000)
  kept = sorted(space_timesteps(1000, spec))
  new = respace(base, set(kept))
  abar = base.alphas_cumprod
  assert new.num_timesteps == len(kept)
  # 1 - beta'_k = abar_{s_k} / abar_{s_{k-1}}, with abar before the first kept step = 1.
  previous = [1.0] + [abar[s] for s in kept[:-1]]
  expected_alphas = np.array([abar[s] / p for s, p in zip(kept, previous)])
  # (1 - beta' loses float64 digits where alpha' is ~1e-8: hence the tiny absolute tolerance.)
  np.testing.assert_allclose(1.0 - new.betas, expected_alphas, rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(new.alphas_cumprod, abar[kept], rtol=1e-8, atol=0)
  np.testing.assert_allclose(new.alphas_cumprod_prev[1:], abar[kept[:-1]], rtol=1e-8, atol=0)
  assert new.alphas_cumprod_prev[0] == 1.0
  # The derived arrays are rebuilt from beta' (not gathered from the base process).
  np.testing.assert_allclose(new.posterior_variance,
                             new.betas * (1 - new.alphas_cumprod_prev) / (1 - new.alphas_cumprod), rtol=1e-12)
  assert new.betas.dtype == np.float64
  # The network still receives the original timesteps.
  assert new.timestep_map.tolist() == kept


def test_respacing_all_steps_is_the_identity():
  base = GaussianDiffusion.from_schedule("squaredcos_cap_v2", 100)
  new = respace(base, space_timesteps(100, ""))
  np.testing.assert_allclose(new.betas, base.betas, rtol=1e-12)
  assert new.timestep_map.tolist() == list(range(100))


def test_timestep_map_composes_through_a_respaced_process():
  base = GaussianDiffusion.from_schedule("linear", 1000)
  once = respace(base, space_timesteps(1000, "100"))
  twice = respace(once, {0, 50, 99})
  assert twice.timestep_map.tolist() == [0, once.timestep_map[50], 999]
  np.testing.assert_allclose(twice.alphas_cumprod, base.alphas_cumprod[[0, once.timestep_map[50], 999]],
                             rtol=1e-10)


def test_cosine_respaced_to_100_matches_the_reference_numbers():
  base = GaussianDiffusion.from_schedule("squaredcos_cap_v2", 1000)
  new = respace(base, space_timesteps(1000, "100"))
  assert new.betas[0] == pytest.approx(4.13e-5, rel=2e-3)
  assert new.betas[0] == base.betas[0]
  assert new.betas[99] == pytest.approx(0.99999, abs=5e-6)
  assert new.betas[99] < 1.0
  # beta'_99 = 1 - abar_999/abar_989: eleven steps of the cosine schedule, the last capped at 0.999.
  assert new.betas[99] == pytest.approx(1 - base.alphas_cumprod[999] / base.alphas_cumprod[989], rel=1e-12)


@pytest.mark.parametrize("spec,match", [
    ("abc", r"Unknown respacing 'abc'"),
    ("ddimx", r"ddimN"),
    ("ddim999", r"no integer stride gives exactly 999"),
    ("ddim0", r"no integer stride gives exactly 0"),
    ("0", r"at least 1 step"),
    ("10,0", r"at least 1 step"),
    ("-5", r"at least 1 step"),
    ("300,300,300,300", r"a section of 250 steps cannot hold 300"),
    ("1001", r"a section of 1000 steps cannot hold 1001"),
    ("10,,3", r"Unknown respacing"),
    ("2.5", r"Unknown respacing"),
])
def test_bad_strings_are_config_errors(spec, match):
  with pytest.raises(ConfigError, match=match):
    space_timesteps(1000, spec)
