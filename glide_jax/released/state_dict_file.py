"""A state dict read from a file without running any code the file carries.

A checkpoint is untrusted input: Python's pickle, which PyTorch's `.pt` files are made of, can call any
function while loading. An `.npz` is read with `allow_pickle=False`, a `.safetensors` file by its own package
(a JSON header and raw bytes, checked against each other). A `.pt` (PyTorch's zip format, the
default since PyTorch 1.6) is read here without PyTorch, through an unpickler that knows only what a state
dict of tensors needs (the same allow-list idea as `torch.load(weights_only=True)`): an ordered dict,
tensors rebuilt from their storages, and the storage types. Anything else in the pickle is refused before
it is called, and every number the file states (storage sizes, view offsets, sizes and strides, zip entry
sizes) is checked before memory is touched: a crafted file is refused, never read out of bounds.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
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
# A state dict's pickle is names and small tuples (about 100 KB for GLIDE's largest model); one this large is
# not a state dict, and reading it whole would only spend memory.
_MAX_PICKLE_BYTES = 64 * 2**20
# Weights barely compress (float32 noise: about 1.1x); an entry that inflates more than this is a zip bomb.
_BOMB_RATIO = 100


class _Malformed(ValueError):
  """A structure in the file that no torch.save of a state dict writes: what, in words."""


def _index(value: Any, what: str) -> int:
  """A non-negative Python int from the pickle (size, stride, offset, element count), or _Malformed."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise _Malformed(f"a tensor's {what} is {str(value)[:40]}, not a non-negative integer")
  return value


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *unused) -> np.ndarray:
  """torch._utils._rebuild_tensor_v2: a copy of the view of `storage` (in elements) with the given size and
  strides, after checking that the view lies inside the storage; as_strided itself would read past it."""
  del unused  # requires_grad, backward hooks, metadata.
  if not isinstance(storage, np.ndarray) or storage.ndim != 1:
    raise _Malformed("a tensor is rebuilt from something that is not a tensor storage")
  if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride):
    raise _Malformed(f"a tensor's size {str(size)[:40]} and stride {str(stride)[:40]} are not tuples of one length")
  offset = _index(offset, "storage offset")
  size = tuple(_index(n, "size") for n in size)
  stride = tuple(_index(n, "stride") for n in stride)
  count = math.prod(size)
  if count:
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
      raise _Malformed(f"a tensor of size {size} (stride {stride}, offset {offset}) reaches element {last:,} of a "
                       f"storage of {storage.size:,}")
    if count > storage.size:  # Only a broadcast (stride 0) view can; a parameter never is one.
      raise _Malformed(f"a tensor of {count:,} elements is a view of a storage of only {storage.size:,}")
  elif offset > storage.size:
    raise _Malformed(f"an empty tensor starts at element {offset:,} of a storage of {storage.size:,}")
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], size, tuple(s * itemsize for s in stride))
  return np.array(view)


def _rebuild_parameter(data: Any, *unused) -> np.ndarray:
  """torch._utils._rebuild_parameter: an nn.Parameter is its data."""
  if not isinstance(data, np.ndarray):
    raise _Malformed("a parameter holds something that is not a tensor")
  return data


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
  """What the pickle's torch.<X>Storage names: a dtype in a record that can be neither called nor altered."""
  dtype: np.dtype


class _StateDictUnpickler(pickle._Unpickler):
  """Loads a PyTorch state dict's pickle, its storages read from the zip archive; nothing else.

  The pure-Python unpickler, not the C one: its opcode table can be narrowed. BUILD (setting an object's
  state) is allowed only on the state dict itself (torch.save stores the module's `_metadata` so); on
  anything else, an array or a dtype, it would reach C code that trusts its input.
  """

  _ALLOWED = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  }
  dispatch = dict(pickle._Unpickler.dispatch)

  def load_build(self) -> None:
    inst, state = self.stack[-2:]
    if type(inst) is not collections.OrderedDict or not isinstance(state, dict):
      raise _Malformed(f"its pickle sets the state of an object of type {type(inst).__name__}")
    pickle._Unpickler.load_build(self)

  dispatch[pickle.BUILD[0]] = load_build

  def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
    super().__init__(io.BytesIO(data))
    self.archive, self.prefix = archive, prefix
    self.storages: dict[str, np.ndarray] = {}  # Tensors that share a storage share its one copy.

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
    raise pickle.UnpicklingError(f"it asks to load {module}.{name}")

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f"it holds a persistent object {str(pid)[:80]} that is not a tensor storage")
    _, storage_type, key, _, numel = pid
    dtype = storage_type.dtype
    if not isinstance(key, str):
      raise _Malformed(f"a storage is named {str(key)[:40]}, not a string")
    if key not in self.storages:
      numel = _index(numel, "storage element count")
      try:
        entry = self.archive.getinfo(f"{self.prefix}data/{key}")
      except KeyError:
        raise _Malformed(f"the storage data/{key[:40]} is missing from the archive") from None
      if entry.file_size != numel * dtype.itemsize:  # Checked before reading: the entry may claim any size.
        raise _Malformed(f"the storage data/{key[:40]} holds {entry.file_size:,} bytes, not the {numel:,} "
                         f"{dtype.name} elements ({numel * dtype.itemsize:,} bytes) its tensors say")
      if entry.compress_type != zipfile.ZIP_STORED and entry.file_size > _BOMB_RATIO * max(entry.compress_size, 2**14):
        raise _Malformed(f"the storage data/{key[:40]} inflates {entry.compress_size:,} bytes to "
                         f"{entry.file_size:,}: a zip bomb, not weights (torch.save does not compress)")
      data = self.archive.read(entry)
      if len(data) != entry.file_size:
        raise _Malformed(f"the storage data/{key[:40]} holds {len(data):,} bytes, not the {entry.file_size:,} its "
                         f"zip entry states")
      self.storages[key] = np.frombuffer(data, dtype.newbyteorder("<"))
    elif self.storages[key].dtype != dtype.newbyteorder("<"):
      raise _Malformed(f"the storage data/{key[:40]} is read as two types")
    return self.storages[key]


def _damaged(path: str, reason: str) -> UserError:
  return UserError(f"{path} is damaged or not a state dict ({reason}); download it again.")


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
  # Any failure below is a file that torch.save did not write: flipped bits in the zip directory or the
  # pickle, a cut-off entry, a compression method zipfile lacks, an absurd structure. Each is reported as
  # damage; nothing in it is trusted before it is checked.
  try:
    with zipfile.ZipFile(path) as archive:
      pickles = [info for info in archive.infolist() if info.filename.endswith("data.pkl")
                 and info.filename.count("/") == 1]
      if len(pickles) != 1:
        raise UserError(f"{path} is a zip file but not a PyTorch checkpoint (no single */data.pkl in it).")
      if pickles[0].file_size > _MAX_PICKLE_BYTES:
        raise _Malformed(f"its data.pkl claims {pickles[0].file_size:,} bytes, more than any state dict's")
      prefix = pickles[0].filename[:-len("data.pkl")]
      byteorder = f"{prefix}byteorder"
      if byteorder in archive.namelist():
        if archive.getinfo(byteorder).file_size > 16:
          raise _Malformed("its byteorder record is not a word")
        if archive.read(byteorder).strip() != b"little":
          raise UserError(f"{path} was saved on a big-endian machine; glide-jax reads little-endian checkpoints.")
      return _StateDictUnpickler(archive.read(pickles[0]), archive, prefix).load()
  except UserError:
    raise
  except pickle.UnpicklingError as e:
    if str(e).startswith(("it asks to load", "it holds a persistent object")):
      raise UserError(f"Refused {path}: {e}, which a state dict of tensors never needs. A checkpoint file can run "
                      f"code when unpickled, so glide-jax loads tensors only; use the released file as "
                      f"downloaded.") from None
    raise _damaged(path, f"UnpicklingError: {str(e)[:200]}") from None
  except _Malformed as e:
    raise _damaged(path, str(e)) from None
  except RecursionError:
    raise _damaged(path, "its pickle nests deeper than any state dict's") from None
  except MemoryError:
    raise _damaged(path, "it asks for more memory than this machine has") from None
  except Exception as e:  # zipfile's, zlib's and pickle's many ways to meet bad bytes.
    raise _damaged(path, f"{type(e).__name__}: {str(e)[:200] or 'it ends part way'}") from None


def _read_safetensors(path: str) -> tuple[dict[str, np.ndarray], Optional[dict]]:
  """A .safetensors file through the safetensors package, which checks its header against the file."""
  from safetensors import SafetensorError, safe_open

  try:
    with safe_open(path, framework="np") as f:
      return {name: f.get_tensor(name) for name in f.keys()}, None
  except (SafetensorError, KeyError, ValueError, TypeError, OSError) as e:
    raise _damaged(path, f"{type(e).__name__}: {str(e)[:200]}") from None


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
  """(name → array, the model options the file records or None) from a `.pt`, `.safetensors` or `.npz` state dict.

  An `.npz` holds the state dict's arrays under their PyTorch names, or under "state_dict/<name>" beside an
  "options_json" (the reference goldens' layout). Bad files are UserErrors that say what is wrong.
  """
  if not os.path.isfile(path):
    raise UserError(f"--checkpoint {path} does not exist; give the path of a downloaded .pt (or a .safetensors or "
                    f".npz) file.")
  extension = os.path.splitext(path)[1].lower()
  if extension == ".npz":
    state_dict, options = _read_npz(path)
  elif extension in (".pt", ".pth", ".bin"):
    state_dict, options = _read_pt(path), None
  elif extension == ".safetensors":
    state_dict, options = _read_safetensors(path)
  else:
    raise UserError(f"--checkpoint {path}: give a PyTorch .pt file, a .safetensors file or an .npz of arrays.")
  if not (isinstance(state_dict, dict) and state_dict
          and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state_dict.items())):
    raise UserError(f"{path} does not hold a state dict (a mapping of parameter names to tensors).")
  return dict(state_dict), options
