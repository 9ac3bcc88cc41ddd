"""The device mesh, and how the batch, parameters and optimizer state are laid out on it.

Axes: "data" (pure data parallelism) and "fsdp" (data parallelism whose parameters, optimizer state and
EMA are also split along one dimension). The batch is split over both axes.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from glide_jax.errors import ConfigError, UserError

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Fills one -1 entry so the product is num_devices; pads a 1-axis shape with fsdp=1."""
  shape = tuple(int(s) for s in shape)
  if len(shape) == 1:
    shape = shape + (1,)
  if len(shape) != len(MESH_AXES) or shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ConfigError(f"config.mesh.shape = {shape!r} is invalid: give (data, fsdp) sizes, at most one -1, "
                      f"e.g. (-1, 1) for data parallelism over all {num_devices} devices.")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ConfigError(f"config.mesh.shape = {shape!r} does not divide the {num_devices} devices.")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ConfigError(f"config.mesh.shape = {shape!r} needs {math.prod(shape)} devices but {num_devices} are "
                      f"available; use -1 for one axis to take the rest.")
  return shape


def devices_for_batch(shape: Sequence[int], rows: int, num_devices: int) -> int:
  """The most devices, at most num_devices, that a mesh of this shape with a -1 axis spans while splitting
  `rows` (the examples of one microbatch, or of the batch) into equal whole parts; num_devices itself when
  the shape has no -1 (the user fixed the sizes) or when no count fits (the full count's error says why).

  On a CPU with one device per core, e.g. 6 cores and microbatches of 16 rows: 4 devices.
  """
  if -1 not in tuple(shape):
    return num_devices
  for count in range(num_devices, 0, -1):
    try:
      data, fsdp = resolve_mesh_shape(shape, count)
    except ConfigError:
      continue
    if rows % (data * fsdp) == 0:
      return count
  return num_devices


def make_mesh(shape: Sequence[int] = (-1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ("data", "fsdp") mesh over all (or the given) devices."""
  devices = list(devices if devices is not None else jax.devices())
  shape = resolve_mesh_shape(shape, len(devices))
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # Topology-aware placement is best effort (e.g. CPU devices of several processes).
    grid = np.array(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every mesh axis."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int = 2 ** 12) -> P:
  """Shards the largest dimension divisible by the fsdp axis; small or indivisible arrays stay replicated."""
  if fsdp_size == 1 or math.prod(shape) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(mesh: Mesh, abstract_state: Any) -> Any:
  """NamedShardings for a pytree of arrays (or ShapeDtypeStructs) under the fsdp partition rule."""
  fsdp_size = mesh.shape["fsdp"]
  return jax.tree_util.tree_map(
      lambda x: NamedSharding(mesh, fsdp_spec(getattr(x, "shape", ()), fsdp_size)), abstract_state)


def check_batch_divisible(global_batch: int, mesh: Mesh, what: str = "config.train.batch_size",
                          microbatches: int = 1) -> None:
  """Each of the mesh's batch-sharding devices must get the same whole number of rows of every microbatch."""
  devices = mesh.shape["data"] * mesh.shape["fsdp"]
  n = devices * microbatches
  if global_batch % n == 0:
    return
  where = f"the {devices} devices of the mesh {dict(mesh.shape)}"
  if microbatches == 1:
    raise UserError(f"{what} = {global_batch} is not divisible by {where}; use a multiple of {devices}, e.g. "
                    f"{-(-global_batch // devices) * devices}.")
  micro = global_batch // microbatches
  new_micro = -(-micro // devices) * devices
  raise UserError(f"{what} = {global_batch} in microbatches of {micro} (config.train.microbatch_size) does not "
                  f"split over {where}: each microbatch must be a multiple of {devices} examples, e.g. "
                  f"--config.train.microbatch_size={new_micro} --config.train.batch_size="
                  f"{-(-global_batch // new_micro) * new_micro}.")


def put_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice into global arrays sharded over the batch axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def to_host(x: jax.Array) -> np.ndarray:
  """The whole value of a (possibly multi-process) array as numpy, on every process."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


_barrier_count = itertools.count()


def wait_for_all_processes(name: str, timeout_s: int = 3600) -> None:
  """A barrier through jax.distributed's coordination service (a key-value wait, not a device collective)."""
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # The client Orbax's own barriers use; there is no public wrapper.
  distributed.global_state.client.wait_at_barrier(f"glide_jax/{name}/{next(_barrier_count)}",
                                                  timeout_in_ms=timeout_s * 1000)


def compiled_for_all_processes(jitted: Any, *args: Any) -> Any:
  """`jitted` compiled ahead of time for `args`, returned once every process has compiled it.

  A CPU collective across processes (gloo) waits only 30 s for its peers, and one process can finish compiling
  a train step much later than another; running the first step only after this barrier keeps them together.
  """
  compiled = jitted.lower(*args).compile()
  if jax.process_count() > 1:
    wait_for_all_processes("compiled")
  return compiled
