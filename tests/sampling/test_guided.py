"""The compiled guided sampler (GLIDE_REFERENCE.md §3 DDIM, §4 classifier-free guidance) on a tiny model.

References here are written independently of glide_jax.sampling: a plain Python loop over the steps with
two separate forward passes (conditional, empty prompt) per step, and the formulas of the reference doc.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from glide_jax import sharding as sharding_lib
from glide_jax.clip import ClipConfig, ImageEncoder, TextEncoder, get_clip_tokenizer, init_clip_params
from glide_jax.diffusion import GaussianDiffusion, respace, sample_loop, space_timesteps
from glide_jax.model import ModelConfig, Text2ImUNet, get_tokenizer, init_params
from glide_jax.sampling.guidance import GuidanceInputs, pack_clip_rows, projected_update
from glide_jax.sampling.guided import GuidedSampler, SamplerSpec

RESPACING = "5"
PROMPTS = ["7", "three"]
B = len(PROMPTS)


@pytest.fixture(scope="module")
def setup():
  config = tiny.get_config()
  tokenizer = get_tokenizer(config.model.tokenizer)
  model = Text2ImUNet(ModelConfig.from_config(config, tokenizer.vocab_size))
  # init_params, compiled without XLA's backend optimisations: the values are the same, the compile takes
  # seconds instead of ten on a small CPU.
  init = jax.jit(lambda rng: init_params(model, rng)).lower(jax.random.key(0)).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  params = init(jax.random.key(0))
  # The output layers are zero-initialised: perturb every parameter so ε, v and the text conditioning matter.
  # (numpy noise: one eager jax.random call per parameter shape would compile ~150 small programs.)
  noise = np.random.default_rng(1)
  params = jax.tree_util.tree_map(
      lambda leaf: jnp.asarray(np.asarray(leaf) + 0.01 * noise.standard_normal(leaf.shape).astype(np.float32)),
      params)
  base = GaussianDiffusion.from_schedule(config.diffusion.noise_schedule, config.diffusion.num_timesteps)
  tokens, mask = tokenizer.tokenize_batch(PROMPTS, config.model.text_ctx)
  empty_tokens, empty_mask = tokenizer.tokenize_batch([""] * B, config.model.text_ctx)
  assert np.all(empty_tokens == tokenizer.pad_id) and not empty_mask.any()
  forward = jax.jit(lambda p, x, t, tk, m: model.apply({"params": p}, x, t, tk, m))
  diffusion = respace(base, space_timesteps(base.num_timesteps, RESPACING))
  timestep_map = jnp.asarray(diffusion.timestep_map)

  @functools.partial(jax.jit, static_argnames=("sampler", "eta"))
  def plain_sample(params, tokens, mask, v_tokens, v_mask, x_T, loop_rng, sampler, eta=0.0):
    """The unguided sampler: ε from the network on one prompt batch alone (fed the original timesteps),
    v from the network on v_tokens (the same prompts, or the conditional ones: v is never guided)."""
    def model_fn(x, t):
      out = model.apply({"params": params}, x, timestep_map[t], tokens, mask)
      v_out = model.apply({"params": params}, x, timestep_map[t], v_tokens, v_mask)
      c = x.shape[-1]
      return jnp.concatenate([out[..., :c], v_out[..., c:]], axis=-1)
    return sample_loop(model_fn, diffusion, x_T, loop_rng, sampler, eta)

  return dict(config=config, model=model, params=params, base=base, tokenizer=tokenizer, tokens=tokens,
              mask=mask, empty_tokens=empty_tokens, empty_mask=empty_mask, forward=forward,
              plain_sample=plain_sample,
              shape=(B, config.data.image_size, config.data.image_size, config.data.channels))


def make_sampler(setup, sampler="ddpm", eta=0.0, mesh=None, **spec):
  """A sampler bound to the setup's parameters."""
  spec = SamplerSpec(sampler=sampler, respacing=RESPACING, eta=eta, **spec)
  return GuidedSampler(model=setup["model"], base_diffusion=setup["base"], spec=spec,
                       pad_id=setup["tokenizer"].pad_id, mesh=mesh).bind(setup["params"])


def respec(setup, sampler, **changes):
  """The same sampler with some spec fields changed (a new compiled sampler), bound to the same parameters."""
  return GuidedSampler(model=setup["model"], base_diffusion=setup["base"], spec=sampler.spec.replace(**changes),
                       pad_id=sampler.pad_id, mesh=sampler.mesh).bind(setup["params"])


@pytest.fixture(scope="module")
def ddpm(setup):
  return make_sampler(setup, "ddpm")


@pytest.fixture(scope="module")
def ddim(setup):
  return make_sampler(setup, "ddim", 0.0)


def split_like_sampler(setup, rng):
  """GuidedSampler's convention: (init_rng, loop_rng) = split(rng); x_T = normal(init_rng)."""
  init_rng, loop_rng = jax.random.split(rng)
  return jax.random.normal(init_rng, setup["shape"], jnp.float32), loop_rng


def run_plain(setup, sampler, x_T, loop_rng, empty=False, eta=0.0, v_from_conditional=False):
  """Unguided sampling on the conditional prompts, or the empty prompt when `empty` (with the variance
  output v taken from the conditional prompts instead when `v_from_conditional`)."""
  cond = setup["tokens"], setup["mask"]
  tokens, mask = (setup["empty_tokens"], setup["empty_mask"]) if empty else cond
  v_tokens, v_mask = cond if v_from_conditional else (tokens, mask)
  return np.asarray(setup["plain_sample"](setup["params"], tokens, mask, v_tokens, v_mask, x_T, loop_rng,
                                          sampler=sampler, eta=eta))


def apg_eps(x, eps_c, eps_u, abar, s, apg_eta, apg_r):
  """Adaptive projected guidance (arXiv:2410.02416) written out in float64 numpy on x̂_0 = (x − √(1−ᾱ) ε)/√ᾱ:
  Δ = x̂_0(c) − x̂_0(u), per sample scaled to norm ≤ r (r > 0), Δ∥ its projection on x̂_0(c), x̃_0 = x̂_0(c) +
  (s − 1)(Δ − Δ∥ + η Δ∥), returned as ε̃ = (x − √ᾱ x̃_0)/√(1−ᾱ)."""
  x, eps_c, eps_u, s = (np.asarray(a, np.float64) for a in (x, eps_c, eps_u, s))
  x0_c = (x - np.sqrt(1 - abar) * eps_c) / np.sqrt(abar)
  x0_u = (x - np.sqrt(1 - abar) * eps_u) / np.sqrt(abar)
  out = np.empty_like(x)
  for b in range(x.shape[0]):
    delta = x0_c[b] - x0_u[b]
    if apg_r > 0:
      delta = delta * min(1.0, apg_r / np.linalg.norm(delta))
    unit = x0_c[b] / np.linalg.norm(x0_c[b])
    parallel = np.sum(delta * unit) * unit
    x0 = x0_c[b] + (s[b, 0, 0, 0] - 1) * (delta - parallel + apg_eta * parallel)
    out[b] = (x[b] - np.sqrt(abar) * x0) / np.sqrt(1 - abar)
  return jnp.asarray(out, jnp.float32)


def reference_loop(setup, diffusion, scales, rng, sampler="ddpm", eta=0.0, interval=(0.0, 1.0), guide=None,
                   apg=None):
  """A plain Python loop over t = K−1 … 0: two forward passes, ε̃ = ε_u + s(ε_c − ε_u), v conditional; s = 1
  at the steps whose original timestep is outside the guidance interval (fractions of the base T). With
  `guide` parameters, ε_u is theirs on the prompt (autoguidance) instead of the model's on the empty prompt;
  with `apg` = (η, r), ε̃ is adaptive projected guidance's (`apg_eps`)."""
  x, loop_rng = split_like_sampler(setup, rng)
  c = x.shape[-1]
  abar_table = diffusion.alphas_cumprod
  for i in reversed(range(diffusion.num_timesteps)):
    t = jnp.full((B,), i, jnp.int32)
    original_t = jnp.full((B,), int(diffusion.timestep_map[i]), jnp.int32)
    guided = interval[0] <= diffusion.timestep_map[i] / setup["base"].num_timesteps < interval[1]
    s = jnp.asarray(scales if guided else [1.0] * B, jnp.float32)[:, None, None, None]
    cond = setup["forward"](setup["params"], x, original_t, setup["tokens"], setup["mask"])
    if guide is None:
      uncond = setup["forward"](setup["params"], x, original_t, setup["empty_tokens"], setup["empty_mask"])
    elif isinstance(guide, tuple):  # (forward, params) of another network.
      uncond = guide[0](guide[1], x, original_t, setup["tokens"], setup["mask"])
    else:
      uncond = setup["forward"](guide, x, original_t, setup["tokens"], setup["mask"])
    if apg is None:
      eps = uncond[..., :c] + s * (cond[..., :c] - uncond[..., :c])
    else:
      eps = apg_eps(x, cond[..., :c], uncond[..., :c], float(abar_table[i]), s, *apg)
    output = jnp.concatenate([eps, cond[..., c:]], axis=-1)
    noise = jax.random.normal(jax.random.fold_in(loop_rng, i), x.shape, x.dtype)
    pm = diffusion.p_mean_variance(output, x, t, clip_denoised=True)
    if sampler == "ddpm":
      x = pm["mean"] + (1.0 if i else 0.0) * jnp.exp(0.5 * pm["log_variance"]) * noise
    else:
      abar = float(abar_table[i])
      abar_prev = float(abar_table[i - 1]) if i else 1.0
      x0 = pm["pred_xstart"]  # Clipped to [−1, 1].
      eps = (np.sqrt(1 / abar) * x - x0) / np.sqrt(1 / abar - 1)  # Recomputed from the clipped x̂_0.
      sigma = eta * np.sqrt((1 - abar_prev) / (1 - abar)) * np.sqrt(1 - abar / abar_prev)
      x = np.sqrt(abar_prev) * x0 + np.sqrt(max(1 - abar_prev - sigma ** 2, 0.0)) * eps + (
          sigma * noise if i else 0.0)
  return np.asarray(x)


def sample(sampler, setup, scales, seed=0, tokens=None, mask=None):
  tokens = setup["tokens"] if tokens is None else tokens
  mask = setup["mask"] if mask is None else mask
  return np.asarray(sampler(tokens, mask, np.asarray(scales, np.float32), jax.random.key(seed)))


# --- (1) the scan sampler equals a plain loop --------------------------------------------------------------
@pytest.mark.parametrize("which,scales", [("ddpm", [3.0, 0.5]), ("ddim", [2.0, 1.0])])
def test_scan_sampler_equals_python_loop(setup, ddpm, ddim, which, scales):
  sampler = {"ddpm": ddpm, "ddim": ddim}[which]
  assert sampler.num_steps == 5
  assert sampler.diffusion.timestep_map.tolist() == [0, 25, 50, 74, 99]
  got = sample(sampler, setup, scales, seed=3)
  want = reference_loop(setup, sampler.diffusion, scales, jax.random.key(3), which)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  assert np.std(got) > 0.1


# --- (2) scale 1 = conditional, scale 0 = unconditional ------------------------------------------------------
@pytest.mark.parametrize("which", ["ddpm", "ddim"])
def test_guidance_scale_one_is_conditional_and_zero_is_unconditional(setup, ddpm, ddim, which):
  sampler = {"ddpm": ddpm, "ddim": ddim}[which]
  x_T, loop_rng = split_like_sampler(setup, jax.random.key(5))
  conditional = run_plain(setup, which, x_T, loop_rng)
  unconditional = run_plain(setup, which, x_T, loop_rng, empty=True)
  # The prompt must matter for this test to mean anything.
  assert np.abs(conditional - unconditional).max() > 0.05
  np.testing.assert_allclose(sample(sampler, setup, [1.0, 1.0], seed=5), conditional, atol=1e-5, rtol=0)
  # Scale 0 is the unconditional ε. The variance output v is not guided: it always comes from the
  # conditional branch (reference §4), so DDPM at scale 0 is the empty prompt's ε with the prompt's v.
  # DDIM does not use v: there scale 0 is exactly the unconditional sampler.
  zero = sample(sampler, setup, [0.0, 0.0], seed=5)
  uncond_eps = run_plain(setup, which, x_T, loop_rng, empty=True, v_from_conditional=True)
  np.testing.assert_allclose(zero, uncond_eps, atol=1e-5, rtol=0)
  if which == "ddim":
    np.testing.assert_allclose(zero, unconditional, atol=1e-5, rtol=0)
  else:
    assert np.abs(zero - unconditional).max() > 1e-3  # The unconditional v would change the variance.
  # Scales are per sample: row 0 unconditional, row 1 conditional in one batch.
  mixed = sample(sampler, setup, [0.0, 1.0], seed=5)
  np.testing.assert_allclose(mixed[0], uncond_eps[0], atol=1e-5, rtol=0)
  np.testing.assert_allclose(mixed[1], conditional[1], atol=1e-5, rtol=0)
  # The unguided sampler (one forward pass per sample) is the conditional one, at any scale.
  unguided = respec(setup, sampler, guidance="none")
  np.testing.assert_allclose(sample(unguided, setup, [7.0, 0.0], seed=5), conditional, atol=1e-5, rtol=0)
  # Guidance above 1 extrapolates away from the conditional sample.
  assert np.abs(sample(sampler, setup, [4.0, 4.0], seed=5) - conditional).max() > 0.05


# --- (2b) guidance limited to an interval of timesteps ---------------------------------------------------------
def test_guidance_interval_guides_only_the_steps_inside_it(setup, ddpm):
  # Steps at original t = 99, 74, 50, 25, 0 of T = 100: (0.3, 0.8) guides t = 74 and 50 only.
  interval = (0.3, 0.8)
  limited = respec(setup, ddpm, guidance_interval=interval)
  got = sample(limited, setup, [4.0, 2.0], seed=6)
  np.testing.assert_allclose(got, reference_loop(setup, ddpm.diffusion, [4.0, 2.0], jax.random.key(6),
                                                 interval=interval), atol=1e-5, rtol=0)
  everywhere = sample(ddpm, setup, [4.0, 2.0], seed=6)
  conditional = sample(ddpm, setup, [1.0, 1.0], seed=6)
  assert np.abs(got - everywhere).max() > 1e-2 and np.abs(got - conditional).max() > 1e-2
  # The full interval is ordinary guidance; one that holds no step is the conditional model throughout.
  np.testing.assert_array_equal(sample(respec(setup, ddpm, guidance_interval=(0.0, 1.0)), setup,
                                       [4.0, 2.0], seed=6), everywhere)
  empty = respec(setup, ddpm, guidance_interval=(0.8, 0.9))
  np.testing.assert_allclose(sample(empty, setup, [4.0, 2.0], seed=6), conditional, atol=1e-5, rtol=0)


# --- (2c) autoguidance: the unconditional pass replaced by a weaker network on the prompt ---------------------
def test_autoguidance_is_guided_by_the_guide_network_on_the_same_prompt(setup, ddpm):
  noise = np.random.default_rng(2)
  guide = jax.tree_util.tree_map(  # Another network of the same shape (an earlier checkpoint, in use).
      lambda leaf: jnp.asarray(np.asarray(leaf) + 0.01 * noise.standard_normal(leaf.shape).astype(np.float32)),
      setup["params"])
  auto = respec(setup, ddpm, guidance="autoguidance")
  with pytest.raises(ValueError, match="Autoguidance needs the guide's parameters"):
    sample(auto, setup, [2.0, 2.0])
  got = sample(auto.bind(setup["params"], guide=guide), setup, [3.0, 0.5], seed=7)
  np.testing.assert_allclose(got, reference_loop(setup, ddpm.diffusion, [3.0, 0.5], jax.random.key(7), guide=guide),
                             atol=1e-5, rtol=0)
  # Scale 1 is the model alone, whatever the guide; a guide equal to the model changes nothing at any scale.
  conditional = sample(ddpm, setup, [1.0, 1.0], seed=7)
  assert np.abs(got - conditional).max() > 1e-2
  np.testing.assert_allclose(sample(auto.bind(setup["params"], guide=guide), setup, [1.0, 1.0], seed=7),
                             conditional, atol=1e-5, rtol=0)
  np.testing.assert_allclose(sample(auto.bind(setup["params"], guide=setup["params"]), setup, [4.0, 4.0], seed=7),
                             conditional, atol=1e-5, rtol=0)


# --- (2d) adaptive projected guidance: CFG's update on x̂_0, bounded, without its part along x̂_0(c) ----------
def test_projected_update_bounds_the_norm_and_drops_the_parallel_part():
  rng = np.random.default_rng(0)
  delta, along = (jnp.asarray(rng.standard_normal((3, 4, 4, 1)), jnp.float32) for _ in range(2))
  norms = lambda v: np.sqrt(np.sum(np.square(np.asarray(v)), axis=(1, 2, 3)))
  orthogonal = projected_update(delta, along, eta=0.0, norm_threshold=0.0)
  np.testing.assert_allclose(np.sum(np.asarray(orthogonal) * np.asarray(along), axis=(1, 2, 3)), 0, atol=1e-5)
  np.testing.assert_allclose(projected_update(delta, along, eta=1.0, norm_threshold=0.0), delta, atol=1e-6)
  bounded = projected_update(delta, along, eta=1.0, norm_threshold=1.0)
  np.testing.assert_allclose(norms(bounded), np.minimum(norms(delta), 1.0), rtol=1e-5)
  np.testing.assert_allclose(projected_update(delta, along, eta=1.0, norm_threshold=1e6), delta, atol=1e-6)


def test_adaptive_projected_guidance_equals_a_step_by_step_loop(setup, ddpm):
  apg = respec(setup, ddpm, guidance="adaptive_projected", apg_eta=0.5, apg_norm_threshold=0.1)
  got = sample(apg, setup, [3.0, 0.5], seed=8)
  np.testing.assert_allclose(got, reference_loop(setup, ddpm.diffusion, [3.0, 0.5], jax.random.key(8),
                                                 apg=(0.5, 0.1)), atol=1e-5, rtol=0)
  # The bound (0.1: tight enough to bite on this random model's small guidance) and the projection change the
  # samples (without them APG's update is CFG's:
  # test_projected_update_bounds_the_norm_and_drops_the_parallel_part).
  assert np.abs(got - sample(ddpm, setup, [3.0, 0.5], seed=8)).max() > 1e-2
  # Scale 1 is the conditional model exactly, whatever η and r.
  np.testing.assert_allclose(sample(apg, setup, [1.0, 1.0], seed=8), sample(ddpm, setup, [1.0, 1.0], seed=8),
                             atol=1e-5, rtol=0)


def test_autoguidance_by_a_smaller_network(setup, ddpm):
  """The guide may be another, smaller network of the same text and images (the paper's usual guide)."""
  config = tiny.get_config()
  config.model.model_channels, config.model.num_groups, config.model.num_head_channels = 16, 8, 16
  small = Text2ImUNet(ModelConfig.from_config(config, setup["tokenizer"].vocab_size))
  noise = np.random.default_rng(3)
  guide = jax.tree_util.tree_map(
      lambda leaf: jnp.asarray(np.asarray(leaf) + 0.01 * noise.standard_normal(leaf.shape).astype(np.float32)),
      jax.jit(lambda rng: init_params(small, rng)).lower(jax.random.key(1)).compile(
          compiler_options={"xla_backend_optimization_level": 0})(jax.random.key(1)))
  auto = GuidedSampler(model=setup["model"], base_diffusion=setup["base"],
                       spec=ddpm.spec.replace(guidance="autoguidance"), pad_id=ddpm.pad_id,
                       guide_model=small).bind(setup["params"], guide=guide)
  forward = jax.jit(lambda p, x, t, tk, m: small.apply({"params": p}, x, t, tk, m))
  got = sample(auto, setup, [3.0, 0.5], seed=9)
  np.testing.assert_allclose(got, reference_loop(setup, ddpm.diffusion, [3.0, 0.5], jax.random.key(9),
                                                 guide=(forward, guide)), atol=1e-5, rtol=0)
  assert np.abs(got - sample(ddpm, setup, [1.0, 1.0], seed=9)).max() > 1e-2


def test_steps_outside_the_guidance_interval_run_one_forward_pass_per_sample(setup, ddpm, monkeypatch):
  """Forward passes per sample, counted as the compiled sampler runs them: 2 per guided step and 1 per other
  step (5 steps, of which (0.3, 0.8) guides 2: 7 passes, not 10); 2 per step when every step is guided."""
  rows = []
  denoise = GuidanceInputs.denoise

  def counted(self, x, t, *args, **kwargs):
    jax.debug.callback(lambda n: rows.append(int(n)), x.shape[0])
    return denoise(self, x, t, *args, **kwargs)

  monkeypatch.setattr(GuidanceInputs, "denoise", counted)
  for interval, passes in (((0.3, 0.8), 7), ((0.8, 0.9), 5), ((0.0, 1.0), 10)):
    rows.clear()
    sampler = respec(setup, ddpm, guidance_interval=interval)
    got = sample(sampler, setup, [4.0, 2.0], seed=6)
    jax.effects_barrier()
    assert sum(rows) == passes * B, (interval, rows)
    assert sampler.forward_passes_per_sample == passes
    assert np.isfinite(got).all()


# --- (3) DDIM with η = 0 is deterministic given x_T ----------------------------------------------------------
def test_ddim_eta_zero_is_deterministic_given_x_T_and_eta_positive_is_not(setup):
  x_T, rng_a = split_like_sampler(setup, jax.random.key(11))
  rng_b = jax.random.key(12)
  np.testing.assert_array_equal(run_plain(setup, "ddim", x_T, rng_a), run_plain(setup, "ddim", x_T, rng_b))
  noisy_a = run_plain(setup, "ddim", x_T, rng_a, eta=0.7)
  noisy_b = run_plain(setup, "ddim", x_T, rng_b, eta=0.7)
  assert np.abs(noisy_a - noisy_b).max() > 0.05
  np.testing.assert_array_equal(noisy_a, run_plain(setup, "ddim", x_T, rng_a, eta=0.7))
  # DDPM is stochastic given x_T as well.
  assert np.abs(run_plain(setup, "ddpm", x_T, rng_a) - run_plain(setup, "ddpm", x_T, rng_b)).max() > 0.05


# --- (4) outputs stay in [−1, 1] -----------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["ddpm", "ddim"])
def test_outputs_stay_in_range(setup, ddpm, ddim, which):
  sampler = {"ddpm": ddpm, "ddim": ddim}[which]
  for scales in ([0.0, 1.0], [10.0, 30.0]):
    x = sample(sampler, setup, scales, seed=2)
    assert x.shape == setup["shape"] and x.dtype == np.float32
    assert np.all(np.isfinite(x))
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert np.std(x) > 0.1
  x_T, loop_rng = split_like_sampler(setup, jax.random.key(2))
  x = run_plain(setup, "ddim", x_T, loop_rng, eta=0.7)
  assert np.all(np.isfinite(x)) and x.min() >= -1.0 and x.max() <= 1.0


# --- (5) seeds -----------------------------------------------------------------------------------------------
def test_same_seed_same_samples_different_seed_different(setup, ddpm):
  a = sample(ddpm, setup, [3.0, 3.0], seed=7)
  np.testing.assert_array_equal(a, sample(ddpm, setup, [3.0, 3.0], seed=7))
  b = sample(ddpm, setup, [3.0, 3.0], seed=8)
  assert np.abs(a - b).max() > 0.1
  # The two rows of one batch get different noise too.
  same_prompt = np.repeat(setup["tokens"][:1], B, axis=0), np.repeat(setup["mask"][:1], B, axis=0)
  rows = sample(ddpm, setup, [3.0, 3.0], seed=7, tokens=same_prompt[0], mask=same_prompt[1])
  assert np.abs(rows[0] - rows[1]).max() > 0.1


# --- (6) mesh ------------------------------------------------------------------------------------------------
def test_sampler_over_a_mesh_matches_no_mesh(setup, ddpm):
  devices = jax.devices()
  n = max(d for d in range(1, len(devices) + 1) if B % d == 0)
  mesh = sharding_lib.make_mesh((-1, 1), devices[:n])
  meshed = make_sampler(setup, "ddpm", mesh=mesh)
  out = meshed(setup["tokens"], setup["mask"], np.array([3.0, 0.5], np.float32), jax.random.key(4))
  assert out.sharding.is_equivalent_to(sharding_lib.batch_sharding(mesh), out.ndim)
  np.testing.assert_allclose(np.asarray(out), sample(ddpm, setup, [3.0, 0.5], seed=4), atol=1e-5, rtol=0)


# --- (7) invalid inputs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("scales", [[-1.0, 1.0], [1.0, float("nan")], [float("inf"), 1.0], [0.0, -1e-3]])
def test_bad_guidance_scales_are_refused(setup, ddpm, scales):
  with pytest.raises(ValueError, match="Guidance scales must be finite and >= 0"):
    sample(ddpm, setup, scales)


def test_scale_count_must_match_batch(setup, ddpm):
  with pytest.raises(ValueError, match="one guidance scale per sample"):
    sample(ddpm, setup, [1.0])


def test_an_unknown_sampler_or_guidance_rule_is_refused(setup):
  # (A config's sample.* values are checked by validate_config: tests/test_config.py.)
  with pytest.raises(ValueError, match=r"Unknown sampler 'euler'; choose one of \('ddpm', 'ddim', "
                     r"'dpm_solver_pp_2m'\)"):
    GuidedSampler(model=setup["model"], base_diffusion=setup["base"], spec=SamplerSpec(sampler="euler"))
  with pytest.raises(ValueError, match=r"Unknown guidance 'negative'; choose one of \('classifier_free', "
                     r"'adaptive_projected', 'autoguidance', 'none', 'clip'\)"):
    GuidedSampler(model=setup["model"], base_diffusion=setup["base"], spec=SamplerSpec(guidance="negative"))


def test_a_sampler_runs_bound_and_a_new_binding_compiles_nothing(setup, ddpm):
  unbound = GuidedSampler(model=setup["model"], base_diffusion=setup["base"], spec=ddpm.spec,
                          pad_id=ddpm.pad_id)
  with pytest.raises(ValueError, match=r"no parameters yet: sample with sampler.bind\(params\)"):
    unbound(setup["tokens"], setup["mask"], np.ones(B, np.float32), jax.random.key(0))
  sample(ddpm, setup, [3.0, 0.5], seed=1)  # Compiled (or loaded) once.
  compiles = []

  def count_compiles(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(duration)

  shifted = jax.tree_util.tree_map(lambda p: p * 1.5, setup["params"])
  jax.block_until_ready(shifted)
  jax.monitoring.register_event_duration_secs_listener(count_compiles)
  try:
    rebound = sample(ddpm.bind(shifted), setup, [3.0, 0.5], seed=1)
  finally:
    jax.monitoring.unregister_event_duration_listener(count_compiles)
  assert compiles == []
  assert np.abs(rebound - sample(ddpm, setup, [3.0, 0.5], seed=1)).max() > 1e-3  # The new parameters are used.


# --- CLIP guidance: the step moved by a noised CLIP's gradient ---------------------------------------------
@pytest.fixture(scope="module")
def clip_setup(setup):
  """A tiny noised CLIP of the tiny model's images (16 px grey, 100 timesteps), random weights, and the
  prompts in CLIP tokens packed beside the model's."""
  config = ClipConfig(image_size=16, image_channels=1, patch_size=4, n_timesteps=100, image_heads=2,
                      image_head_width=8, image_blocks=1, text_heads=2, text_head_width=8, text_blocks=1,
                      n_vocab=get_clip_tokenizer().vocab_size, max_text_len=8, embed_dim=16)
  params = jax.jit(lambda rng: init_clip_params(config, rng)).lower(jax.random.key(2)).compile(
      compiler_options={"xla_backend_optimization_level": 0})(jax.random.key(2))
  clip_tokens, clip_len = get_clip_tokenizer().encode_prompts(PROMPTS, config.max_text_len)
  tokens, mask = pack_clip_rows(setup["tokens"], setup["mask"], clip_tokens, clip_len)
  return dict(config=config, params=params, clip_tokens=clip_tokens, clip_len=clip_len, tokens=tokens, mask=mask)


def clip_sampler(setup, clip_setup, sampler="ddpm", **spec):
  spec = SamplerSpec(sampler=sampler, respacing=RESPACING, guidance="clip", **spec)
  return GuidedSampler(model=setup["model"], base_diffusion=setup["base"], spec=spec, pad_id=setup["tokenizer"].pad_id,
                       clip_config=clip_setup["config"]).bind(setup["params"], clip=clip_setup["params"])


def clip_reference_loop(setup, clip_setup, diffusion, scales, rng, sampler="ddpm", interval=(0.0, 1.0)):
  """A plain loop of glide-text2im's CLIP-guided sampling: the conditional network once per step; the CLIP
  gradient g = s ∇_x (100 · ⟨normalised image embedding of (x, original t), normalised text embedding⟩), s = 0
  outside the guidance interval; DDPM: mean + variance · g (`condition_mean`); DDIM (η = 0): ε from the
  clipped x̂_0, minus √(1 − ᾱ) g, x̂_0 from that ε unclipped (`condition_score`), then the DDIM update."""
  k, params = clip_setup["config"], clip_setup["params"]
  text = TextEncoder(k).apply({"params": params["text_enc"]}, clip_setup["clip_tokens"], clip_setup["clip_len"])
  text = text / (jnp.linalg.norm(text, axis=-1, keepdims=True) + 1e-12)

  def similarity(x, t):
    image = ImageEncoder(k).apply({"params": params["image_enc"]}, x, t)
    return 100.0 * jnp.sum(text * image / (jnp.linalg.norm(image, axis=-1, keepdims=True) + 1e-12))

  grad_fn = jax.jit(jax.grad(similarity))
  x, loop_rng = split_like_sampler(setup, rng)
  abar_table = diffusion.alphas_cumprod
  for i in reversed(range(diffusion.num_timesteps)):
    t = jnp.full((B,), i, jnp.int32)
    original_t = jnp.full((B,), int(diffusion.timestep_map[i]), jnp.int32)
    guided = interval[0] <= diffusion.timestep_map[i] / setup["base"].num_timesteps < interval[1]
    s = np.asarray(scales if guided else [0.0] * B, np.float32)[:, None, None, None]
    gradient = s * np.asarray(grad_fn(x, original_t))
    output = setup["forward"](setup["params"], x, original_t, setup["tokens"], setup["mask"])
    noise = jax.random.normal(jax.random.fold_in(loop_rng, i), x.shape, x.dtype)
    pm = diffusion.p_mean_variance(output, x, t, clip_denoised=True)
    if sampler == "ddpm":
      mean = pm["mean"] + jnp.exp(pm["log_variance"]) * gradient
      x = mean + (1.0 if i else 0.0) * jnp.exp(0.5 * pm["log_variance"]) * noise
    else:
      abar = float(abar_table[i])
      abar_prev = float(abar_table[i - 1]) if i else 1.0
      eps = (np.sqrt(1 / abar) * x - pm["pred_xstart"]) / np.sqrt(1 / abar - 1)
      eps = eps - np.sqrt(1 - abar) * gradient
      x0 = (x - np.sqrt(1 - abar) * eps) / np.sqrt(abar)
      x = np.sqrt(abar_prev) * x0 + np.sqrt(1 - abar_prev) * eps
  return np.asarray(x)


@pytest.mark.parametrize("which", ["ddpm", "ddim"])
def test_clip_guidance_equals_a_step_by_step_loop(setup, clip_setup, which):
  guided = clip_sampler(setup, clip_setup, which)
  tokens, mask = clip_setup["tokens"], clip_setup["mask"]
  got = sample(guided, setup, [60.0, 20.0], seed=13, tokens=tokens, mask=mask)
  # float32 rounding of the gradient, × 60; DDIM's ε from x̂_0 near t = 0 divides by √(1/ᾱ − 1) besides.
  np.testing.assert_allclose(got, clip_reference_loop(setup, clip_setup, guided.diffusion, [60.0, 20.0],
                                                      jax.random.key(13), which),
                             atol={"ddpm": 5e-5, "ddim": 3e-4}[which], rtol=0)
  # Scale 0 is the conditional model alone (guidance "none"); a positive scale moves the samples.
  unguided = sample(guided, setup, [0.0, 0.0], seed=13, tokens=tokens, mask=mask)
  np.testing.assert_allclose(unguided, sample(respec(setup, make_sampler(setup, which), guidance="none"), setup,
                                              [1.0, 1.0], seed=13), atol=2e-5, rtol=0)  # DDIM: x̂_0 → ε → x̂_0.
  assert np.abs(got - unguided).max() > 1e-2
  assert guided.forward_passes_per_sample == 5


def test_clip_guidance_moves_dpm_solver_steps_and_is_the_conditional_model_at_scale_zero(setup, clip_setup):
  guided = clip_sampler(setup, clip_setup, "dpm_solver_pp_2m")
  tokens, mask = clip_setup["tokens"], clip_setup["mask"]
  unguided = sample(guided, setup, [0.0, 0.0], seed=15, tokens=tokens, mask=mask)
  plain = respec(setup, make_sampler(setup, "dpm_solver_pp_2m"), guidance="none")
  # float32 rounding: two programs, fused differently, through the solver's second-order steps.
  np.testing.assert_allclose(unguided, sample(plain, setup, [1.0, 1.0], seed=15), atol=5e-5, rtol=0)
  assert np.abs(sample(guided, setup, [60.0, 20.0], seed=15, tokens=tokens, mask=mask) - unguided).max() > 1e-2


def test_clip_guidance_only_inside_the_guidance_interval(setup, clip_setup):
  guided = clip_sampler(setup, clip_setup, guidance_interval=(0.3, 0.8))
  got = sample(guided, setup, [60.0, 20.0], seed=14, tokens=clip_setup["tokens"], mask=clip_setup["mask"])
  np.testing.assert_allclose(got, clip_reference_loop(setup, clip_setup, guided.diffusion, [60.0, 20.0],
                                                      jax.random.key(14), interval=(0.3, 0.8)), atol=5e-5, rtol=0)


def test_clip_guidance_needs_its_clip(setup, clip_setup, ddpm):
  with pytest.raises(ValueError, match="CLIP guidance, and only it, needs a noised CLIP"):
    unbound = GuidedSampler(model=setup["model"], base_diffusion=setup["base"], pad_id=ddpm.pad_id,
                            spec=ddpm.spec.replace(guidance="clip"))
    unbound.bind(setup["params"])(setup["tokens"], setup["mask"], np.ones(B), jax.random.key(0))
  wrong = dataclasses.replace(clip_setup["config"], image_channels=3)
  with pytest.raises(ValueError, match="reads 16 px, 3-channel images at 100 timesteps; this model makes 16 px, "
                                       "1-channel ones"):
    GuidedSampler(model=setup["model"], base_diffusion=setup["base"], spec=ddpm.spec.replace(guidance="clip"),
                  pad_id=ddpm.pad_id, clip_config=wrong)
