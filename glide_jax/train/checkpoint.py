"""Orbax checkpoints: the parameters, their EMA and training's own state as separate items, and the config.

A training checkpoint's step directory holds `params`, `ema_params`, `training` (step, optimizer state,
non-finite streak) and `config` (JSON); a converted or imported model's holds `params` and `config` only,
and its parameters serve as its EMA. Sampling reads one parameter item, never the optimizer's moments.
Checkpoints written before the split hold everything in one `state` item; they are read in part, the same
way. Restoring builds its target from the *current* mesh, so a checkpoint restores onto any topology.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any, Callable, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from glide_jax.errors import UserError, is_disk_full
from glide_jax.saved_config import config_to_json

_UNSTARTED_WRITE = r"coroutine '.*write_fragment' was never awaited"


def _disk_full_is_a_user_error(method):
  """Checkpointer methods that write: a full disk becomes a UserError naming the checkpoint that is intact."""
  @functools.wraps(method)
  def wrapper(self, *args, **kwargs):
    try:
      return method(self, *args, **kwargs)
    except Exception as e:
      if not is_disk_full(e):
        raise
      # The failed save leaves Orbax's other fragment writes unstarted; Python would warn about each at exit,
      # after the error message that has to be the last thing printed.
      warnings.filterwarnings("ignore", message=_UNSTARTED_WRITE, category=RuntimeWarning)
      try:  # Earlier saves still in flight may have finished (or failed too).
        self.manager.wait_until_finished()
      except Exception:
        pass
      self.manager.reload()
      kept = [s for s in self.all_steps() if os.path.isdir(os.path.join(self.directory, str(s)))]
      intact = f"the checkpoint at step {max(kept)} is intact" if kept else "no earlier checkpoint exists"
      raise UserError(f"Cannot write a checkpoint in {self.directory}: the disk is full. Training stopped; "
                      f"{intact}. Free some space (or set --workdir on a larger disk, copying the workdir) and "
                      f"rerun the same command to resume.") from None
  return wrapper


def _write_each_array_whole_in_one_process() -> None:
  """Orbax splits each replicated array among its replicas so that several hosts share the writing; it
  slices with one small jitted program per array shape, compiled at a run's first save (about 60 for the
  UNet). With one process every replica is written by this process anyway: write each array whole."""
  global _arrays_written_whole
  if _arrays_written_whole or jax.process_count() > 1:
    return
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax warns that it replaces its default handler.
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
  finally:
    absl_logging.set_verbosity(verbosity)
  _arrays_written_whole = True


_arrays_written_whole = False


PARAM_ITEMS = ("params", "ema_params")
TRAINING_ITEM = "training"  # {"step", "opt_state", "nonfinite_streak"}: what only training reads.
LEGACY_ITEM = "state"  # The whole TrainState, as checkpoints were written before the items were split.
ITEMS = (*PARAM_ITEMS, TRAINING_ITEM, LEGACY_ITEM, "config")


def _restore_args(tree: Any) -> Any:
  return ocp.args.PyTreeRestore(item=tree, restore_args=ocp.checkpoint_utils.construct_restore_args(tree))


class Checkpointer:
  """Saves when told (the training loop decides when), keeps the last `keep`, restores the latest.

  A context manager: leaving the block waits for saves in flight and closes the manager.
  """

  def __init__(self, directory: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    # Partial saves of a killed run are removed, never read. (Read-only: no retention or save interval,
    # which Orbax would otherwise warn about overriding.)
    writable = dict(save_interval_steps=0) if read_only else dict(max_to_keep=keep)
    _write_each_array_whole_in_one_process()
    options = ocp.CheckpointManagerOptions(
        create=not read_only, read_only=read_only, enable_async_checkpointing=True,
        cleanup_tmp_directories=not read_only, **writable)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def items(self, step: int) -> set[str]:
    """The items the checkpoint at `step` holds."""
    return {name for name in ITEMS if os.path.isdir(os.path.join(self.directory, str(step), name))}

  @_disk_full_is_a_user_error
  def save(self, step: int, state: Any, config: ml_collections.ConfigDict) -> bool:
    """Starts an asynchronous save of a TrainState at `step`; returns whether one was started."""
    training = {"step": state.step, "opt_state": state.opt_state, "nonfinite_streak": state.nonfinite_streak}
    return self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.PyTreeSave(state.params), ema_params=ocp.args.PyTreeSave(state.ema_params),
        training=ocp.args.PyTreeSave(training), config=ocp.args.JsonSave(config_to_json(config))), force=True)

  @_disk_full_is_a_user_error
  def save_params(self, step: int, params: Any, config: ml_collections.ConfigDict) -> bool:
    """Starts an asynchronous save of a model's parameters alone (no EMA, no optimizer) at `step`."""
    return self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.PyTreeSave(params), config=ocp.args.JsonSave(config_to_json(config))), force=True)

  def saved_config(self, step: Optional[int] = None) -> dict:
    """The config saved with the checkpoint at `step` (default: the latest), as a dict."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f"No checkpoint in {self.directory}: train (or convert) a model there first.")
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def restore(self, targets: dict[str, Any], step: Optional[int] = None,
              check_config: Optional[Callable[[dict], None]] = None) -> tuple[dict[str, Any], dict]:
    """({item: its arrays} for the items of `targets` the checkpoint holds, the saved config as a dict) at
    `step` or the latest; each laid out as its target's abstract tree (ShapeDtypeStructs with shardings).

    `targets` names items of ITEMS (TRAINING_ITEM's target a dict of its three fields). Items the checkpoint
    lacks are left out, except that "ema_params" falls back to "params" (a converted model's parameters are
    its EMA). Only the arrays asked for are read. `check_config(saved_config)` runs first, so a checkpoint
    of another model is reported by it (a UserError naming the fields) rather than as a shape mismatch.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f"No checkpoint in {self.directory}: train first with --mode=train and the same --workdir.")
    if check_config is not None:
      check_config(self.saved_config(step))
    present = self.items(step)
    if LEGACY_ITEM in present:
      return self._restore_legacy(targets, step)
    source = {name: name if name in present else "params" for name in targets
              if name in present or (name == "ema_params" and "params" in present)}
    read = {item: targets[name] for name, item in source.items()}  # Each item read once.
    restored = self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore(), **{item: _restore_args(tree) for item, tree in read.items()}))
    return {name: restored[item] for name, item in source.items()}, restored["config"]

  def _restore_legacy(self, targets: dict[str, Any], step: int) -> tuple[dict[str, Any], dict]:
    """The same from a checkpoint of one `state` item (a TrainState), reading only the fields asked for."""
    tree = {k: v for name, target in targets.items()
            for k, v in (target.items() if name == TRAINING_ITEM else [(name, target)])}
    restored = self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore(), state=ocp.args.PyTreeRestore(
            item=tree, restore_args=ocp.checkpoint_utils.construct_restore_args(tree), partial_restore=True)))
    state = restored["state"]
    items = {name: ({k: state[k] for k in target} if name == TRAINING_ITEM else state[name])
             for name, target in targets.items()}
    return items, restored["config"]

  def restore_latest_readable(self, targets: dict[str, Any], check_config: Optional[Callable[[dict], None]] = None
                              ) -> tuple[dict[str, Any], dict, int]:
    """`restore` of the newest checkpoint that reads back, and its step; a damaged one is reported and skipped.

    Damaged checkpoints newer than the one restored are moved (never deleted) to
    `<workdir>/damaged_checkpoints` unless read-only, so training can save those steps again.
    Never falls back to a fresh start: if every checkpoint is damaged, that is an error.
    """
    failures, damaged = [], []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        items, config = self.restore(targets, step, check_config)
      except UserError:
        raise
      except Exception as e:  # Orbax/TensorStore raise many types for truncated or corrupted files.
        reason = " ".join(str(e).split())[:300]
        failures.append(f"step {step}: {type(e).__name__}: {reason}")
        damaged.append(step)
        warnings.warn(f"Checkpoint at step {step} in {self.directory} is damaged and was skipped "
                      f"({type(e).__name__}: {reason}).", stacklevel=2)
        continue
      self._set_aside(damaged)
      return items, config, step
    raise UserError(f"Every checkpoint in {self.directory} is damaged ({'; '.join(failures)}). Nothing was "
                    f"deleted; move the directory away to start from scratch.")

  def _set_aside(self, steps: list[int]) -> None:
    """Moves the given step directories to <workdir>/damaged_checkpoints (else a save at that step fails)."""
    if self.read_only or not steps:
      return
    aside = os.path.join(os.path.dirname(self.directory), "damaged_checkpoints")
    if jax.process_index() == 0:  # The checkpoint directory is shared by every process.
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        target, n = os.path.join(aside, str(step)), 1
        while os.path.exists(target):
          target, n = os.path.join(aside, f"{step}.{n}"), n + 1
        os.rename(os.path.join(self.directory, str(step)), target)
        warnings.warn(f"Moved the damaged checkpoint at step {step} to {target}.", stacklevel=3)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("glide_jax_damaged_checkpoints_moved")
    self.manager.reload()

  @_disk_full_is_a_user_error
  def wait(self) -> None:
    self.manager.wait_until_finished()

  @_disk_full_is_a_user_error
  def close(self) -> None:
    # Orbax's close() waits for saves but not for the clean-up that opening read-write started, which only a save
    # waits for; a process that exits without saving would be torn down under that thread.
    self.manager._maybe_await_cleanup_tmp_directory()
    self.manager.wait_until_finished()
    self.manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings, for Orbax to restore into."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)
