"""PyTorch zip-format checkpoint files written without PyTorch: the pickle opcodes torch.save emits for a
state dict of contiguous tensors, and a file whose pickle calls something else (for refusal tests)."""

import struct
import zipfile

import numpy as np

_STORAGES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage",
             np.dtype(np.int64): "LongStorage"}


def _global(module: str, name: str) -> bytes:
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
  data = s.encode()
  return b"X" + struct.pack("<I", len(data)) + data


def _int(i: int) -> bytes:
  return b"J" + struct.pack("<i", i)


def _ints(values) -> bytes:
  return b"(" + b"".join(_int(int(v)) for v in values) + b"t"


def _write(path: str, pickle_bytes: bytes, storages: dict[str, bytes]) -> None:
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr("archive/data.pkl", pickle_bytes)
    z.writestr("archive/byteorder", "little")
    z.writestr("archive/version", "3\n")
    for key, data in storages.items():
      z.writestr(f"archive/data/{key}", data)


def write_state_dict_pt(path: str, state_dict: dict[str, np.ndarray]) -> None:
  """As torch.save(OrderedDict of tensors): one storage per tensor, rebuilt by _rebuild_tensor_v2."""
  out = [b"\x80\x02", _global("collections", "OrderedDict"), b")R", b"("]
  storages = {}
  for i, (name, array) in enumerate(state_dict.items()):
    array = np.ascontiguousarray(array)
    key = str(i)
    storages[key] = array.astype(array.dtype.newbyteorder("<")).tobytes()
    strides = [s // array.itemsize for s in array.strides]
    storage = (b"(" + _str("storage") + _global("torch", _STORAGES[array.dtype]) + _str(key) + _str("cpu")
               + _int(array.size) + b"tQ")
    out += [_str(name), _global("torch._utils", "_rebuild_tensor_v2"), b"(", storage, _int(0), _ints(array.shape),
            _ints(strides), b"\x89", _global("collections", "OrderedDict"), b")R", b"tR"]
  out += [b"u", b"."]
  _write(path, b"".join(out), storages)


def write_pt_calling(path: str, module: str, name: str, argument: str) -> None:
  """A .pt whose pickle calls module.name(argument) when loaded (what a malicious checkpoint does)."""
  _write(path, b"\x80\x02" + _global(module, name) + b"(" + _str(argument) + b"tR.", {})
