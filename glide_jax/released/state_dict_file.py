"""A state dict read from a file without running any code the file carries.

A checkpoint is untrusted input: Python's pickle, which PyTorch's `.pt` files are made of, can call any
function while loading. An `.npz` is read with `allow_pickle=False`. A `.pt` (PyTorch's zip format, the
default since PyTorch 1.6) is read here without PyTorch, through an unpickler that knows only what a state
dict of tensors needs (the same allow-list idea as `torch.load(weights_only=True)`): an ordered dict,
tensors rebuilt from their storages, and the storage types. Anything else in the pickle is refused before
it is called.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import zipfile
from typing import Any, Optional

import ml_dtypes
import numpy as np

from glide_jax.errors import UserError

# PyTorch storage classes → the dtype of their bytes.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
# The goldens' layout: the state dict under this prefix, beside the model's options.
_NPZ_PREFIX = "state_dict/"


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *unused) -> np.ndarray:
  """torch._utils._rebuild_tensor_v2: a view of `storage` (in elements) with the given size and strides."""
  del unused  # requires_grad, backward hooks, metadata.
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], tuple(size), tuple(s * itemsize for s in stride))
  return np.array(view)


def _rebuild_parameter(data: np.ndarray, *unused) -> np.ndarray:
  """torch._utils._rebuild_parameter: an nn.Parameter is its data."""
  return data


class _StateDictUnpickler(pickle.Unpickler):
  """Loads a PyTorch state dict's pickle, its storages read from the zip archive; nothing else."""

  _ALLOWED = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  }

  def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
    super().__init__(io.BytesIO(data))
    self.archive, self.prefix = archive, prefix

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return np.dtype(_STORAGE_DTYPES[name])
    raise pickle.UnpicklingError(f"it asks to load {module}.{name}")

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], np.dtype)):
      raise pickle.UnpicklingError(f"it holds a persistent object {str(pid)[:80]} that is not a tensor storage")
    _, dtype, key, _, numel = pid
    data = self.archive.read(f"{self.prefix}data/{key}")
    return np.frombuffer(data, dtype.newbyteorder("<"), count=int(numel))


def _read_pt(path: str) -> Any:
  if not zipfile.is_zipfile(path):
    with open(path, "rb") as f:
      head = f.read(4)
    if head == b"PK\x03\x04":  # A zip's start without its end: the download stopped part way.
      raise UserError(f"{path} is cut off ({os.path.getsize(path):,} bytes; its zip directory is missing): the "
                      f"download did not finish. Download it again.")
    if head[:1] != b"\x80":  # Not a pickle either: no PyTorch format at all.
      raise UserError(f"{path} is not a PyTorch checkpoint (neither its zip format nor its legacy one); download "
                      f"the released file again.")
    raise UserError(f"{path} is not a PyTorch zip-format checkpoint (the format torch.save writes since PyTorch "
                    f"1.6). Re-save it with PyTorch: torch.save(torch.load(OLD, weights_only=True), NEW).")
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise UserError(f"{path} is a zip file but not a PyTorch checkpoint (no single */data.pkl in it).")
    prefix = pickles[0][:-len("data.pkl")]
    byteorder = f"{prefix}byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
      raise UserError(f"{path} was saved on a big-endian machine; glide-jax reads little-endian checkpoints.")
    try:
      return _StateDictUnpickler(archive.read(pickles[0]), archive, prefix).load()
    except pickle.UnpicklingError as e:
      raise UserError(f"Refused {path}: {e}, which a state dict of tensors never needs. A checkpoint file can run "
                      f"code when unpickled, so glide-jax loads tensors only; use the released file as "
                      f"downloaded.") from None
    except (EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as e:
      raise UserError(f"{path} is damaged or not a state dict ({type(e).__name__}: {e}); download it again.") from None


def _read_npz(path: str) -> tuple[dict[str, np.ndarray], Optional[dict]]:
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except ValueError as e:
    raise UserError(f"Refused {path}: it holds pickled Python objects ({e}). A state dict is arrays only.") from None
  except (OSError, zipfile.BadZipFile, EOFError) as e:
    raise UserError(f"{path} is not a readable .npz file ({e}).") from None
  options = None
  if any(k.startswith(_NPZ_PREFIX) for k in arrays):
    if "options_json" in arrays:
      options = json.loads(str(arrays["options_json"]))
    arrays = {k[len(_NPZ_PREFIX):]: v for k, v in arrays.items() if k.startswith(_NPZ_PREFIX)}
  return arrays, options


def read_state_dict(path: str) -> tuple[dict[str, np.ndarray], Optional[dict]]:
  """(name → array, the model options the file records or None) from a `.pt` or `.npz` state dict.

  An `.npz` holds the state dict's arrays under their PyTorch names, or under "state_dict/<name>" beside an
  "options_json" (the reference goldens' layout). Bad files are UserErrors that say what is wrong.
  """
  if not os.path.isfile(path):
    raise UserError(f"--checkpoint {path} does not exist; give the path of a downloaded .pt (or an .npz) file.")
  extension = os.path.splitext(path)[1].lower()
  if extension == ".npz":
    state_dict, options = _read_npz(path)
  elif extension in (".pt", ".pth", ".bin"):
    state_dict, options = _read_pt(path), None
  else:
    raise UserError(f"--checkpoint {path}: give a PyTorch .pt file or an .npz of arrays.")
  if not (isinstance(state_dict, dict) and state_dict
          and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state_dict.items())):
    raise UserError(f"{path} does not hold a state dict (a mapping of parameter names to tensors).")
  return dict(state_dict), options
