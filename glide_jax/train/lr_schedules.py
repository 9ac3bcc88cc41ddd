"""The learning rate after the warm-up, by name: config.train.lr_schedule (the validator reads this table)."""

from __future__ import annotations

from typing import Callable

import ml_collections
import optax


def constant(t: ml_collections.ConfigDict) -> optax.Schedule:
  """train.learning_rate throughout (the reference lesson's)."""
  return optax.constant_schedule(t.learning_rate)


def cosine(t: ml_collections.ConfigDict) -> optax.Schedule:
  """A half-cosine from learning_rate down to learning_rate · lr_end_factor at step num_steps (Loshchilov &
  Hutter 2017, eq. 5, without restarts), constant after it."""
  return optax.cosine_decay_schedule(t.learning_rate, max(t.num_steps - t.warmup_steps, 1), alpha=t.lr_end_factor)


LR_SCHEDULES: dict[str, Callable[[ml_collections.ConfigDict], optax.Schedule]] = {"constant": constant,
                                                                                    "cosine": cosine}
