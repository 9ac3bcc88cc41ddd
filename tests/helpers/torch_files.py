"""PyTorch zip-format checkpoint files written without PyTorch: the pickle opcodes torch.save emits for a
state dict of tensors (with the `_metadata` a module's state_dict() carries), views stated freely (for the
reader's bounds checks), and a file whose pickle calls something else (for refusal tests)."""

import dataclasses
import struct
import zipfile

import ml_dtypes
import numpy as np

_STORAGES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage",
             np.dtype(np.int64): "LongStorage", np.dtype(ml_dtypes.bfloat16): "BFloat16Storage"}


@dataclasses.dataclass
class View:
  """One tensor as the pickle states it: a view (in elements) of a named storage."""
  name: str
  storage: str
  storage_type: str  # torch.<storage_type>, e.g. "FloatStorage".
  numel: int  # The storage's element count, as the pickle states it.
  offset: int
  size: tuple
  stride: tuple


def _global(module: str, name: str) -> bytes:
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
  data = s.encode()
  return b"X" + struct.pack("<I", len(data)) + data


def _int(i: int) -> bytes:
  if -2**31 <= i < 2**31:
    return b"J" + struct.pack("<i", i)
  data = i.to_bytes((i.bit_length() + 8) // 8, "little", signed=True)
  return b"\x8a" + bytes([len(data)]) + data  # LONG1, as pickle writes ints beyond 32 bits.


def _ints(values) -> bytes:
  return b"(" + b"".join(_int(int(v)) for v in values) + b"t"


def _write(path: str, pickle_bytes: bytes, storages: dict[str, bytes]) -> None:
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr("archive/data.pkl", pickle_bytes)
    z.writestr("archive/byteorder", "little")
    z.writestr("archive/version", "3\n")
    for key, data in storages.items():
      z.writestr(f"archive/data/{key}", data)


def state_dict_pickle(views: list[View], metadata: bool = True) -> bytes:
  """The pickle torch.save writes for an OrderedDict of these views: _rebuild_tensor_v2 per tensor, each
  storage a persistent id; with `metadata`, the state dict's `_metadata` set by BUILD, as a module's has."""
  out = [b"\x80\x02", _global("collections", "OrderedDict"), b")R", b"("]
  for v in views:
    storage = (b"(" + _str("storage") + _global("torch", v.storage_type) + _str(v.storage) + _str("cpu")
               + _int(v.numel) + b"tQ")
    out += [_str(v.name), _global("torch._utils", "_rebuild_tensor_v2"), b"(", storage, _int(v.offset),
            _ints(v.size), _ints(v.stride), b"\x89", _global("collections", "OrderedDict"), b")R", b"tR"]
  out.append(b"u")
  if metadata:  # {"_metadata": OrderedDict([("", {"version": 1})])}
    out += [b"}", _str("_metadata"), _global("collections", "OrderedDict"), b")R", _str(""), b"}", _str("version"),
            _int(1), b"s", b"s", b"s", b"b"]
  return b"".join(out) + b"."


def write_views_pt(path: str, views: list[View], storages: dict[str, bytes], metadata: bool = True) -> None:
  _write(path, state_dict_pickle(views, metadata), storages)


def write_state_dict_pt(path: str, state_dict: dict[str, np.ndarray], metadata: bool = True) -> None:
  """As torch.save(module.state_dict()): one storage per tensor, rebuilt by _rebuild_tensor_v2."""
  views, storages = [], {}
  for i, (name, array) in enumerate(state_dict.items()):
    array = np.ascontiguousarray(array)
    storages[str(i)] = array.astype(array.dtype.newbyteorder("<")).tobytes()
    views.append(View(name, str(i), _STORAGES[array.dtype], array.size, 0, array.shape,
                      tuple(s // array.itemsize for s in array.strides)))
  write_views_pt(path, views, storages, metadata)


def write_pt_calling(path: str, module: str, name: str, argument: str) -> None:
  """A .pt whose pickle calls module.name(argument) when loaded (what a malicious checkpoint does)."""
  _write(path, b"\x80\x02" + _global(module, name) + b"(" + _str(argument) + b"tR.", {})
