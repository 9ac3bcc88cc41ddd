"""The .pt reader cannot be tricked: 209 mutated checkpoints, each read in a separate process that may not
crash, hang or raise anything but the project's one-paragraph error.

Every file is a mutation of one state dict torch.save could have written (float32, a transposed float16
view, int64, bfloat16, two tensors sharing a storage, the module's `_metadata`). A random byte flip may leave
a readable file (a tensor's name changed, say): that is allowed, the reader's job is to read what is there
or refuse it. The targeted mutations (views outside their storage, negative or huge sizes, wrong storage
types, truncation, zip bombs) must all be refused.
"""

import collections
import json
import os
import struct
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np

from helpers.paths import REPO
from helpers.torch_files import View, state_dict_pickle, write_state_dict_pt, write_views_pt

READER = """
import json, sys, time
from glide_jax.errors import UserError
from glide_jax.released.state_dict_file import read_state_dict
with open(sys.argv[1]) as cases, open(sys.argv[2], "w") as out:
  for line in cases:
    case = json.loads(line)
    print(json.dumps(dict(case, outcome="started")), file=out, flush=True)
    start = time.perf_counter()
    try:
      state_dict, _ = read_state_dict(case["path"])
      outcome, message = "read", ",".join(f"{k}{list(v.shape)}" for k, v in state_dict.items())
    except UserError as e:
      outcome, message = "refused", str(e)
    except BaseException as e:
      outcome, message = "escaped", f"{type(e).__name__}: {e}"
    print(json.dumps(dict(case, outcome=outcome, message=message[:300], seconds=time.perf_counter() - start)),
          file=out, flush=True)
"""

# The base file: storage 0 is shared by two tensors; "h" is a transposed (non-contiguous) view.
BASE_STORAGES = {
    "0": np.arange(12, dtype=np.float32).tobytes(),
    "1": np.arange(12, dtype=np.float16).tobytes(),
    "2": np.arange(5, dtype=np.int64).tobytes(),
    "3": np.arange(4, dtype=np.float32).astype(ml_dtypes.bfloat16).tobytes(),
}
BASE_VIEWS = [
    View("w", "0", "FloatStorage", 12, 0, (2, 3), (3, 1)),
    View("w_tail", "0", "FloatStorage", 12, 6, (6,), (1,)),
    View("h", "1", "HalfStorage", 12, 0, (4, 3), (1, 4)),
    View("steps", "2", "LongStorage", 5, 0, (5,), (1,)),
    View("b", "3", "BFloat16Storage", 4, 0, (2, 2), (2, 1)),
]


def with_view(**changes) -> list[View]:
  """BASE_VIEWS with the first tensor's view changed."""
  first = View(**{**BASE_VIEWS[0].__dict__, **changes})
  return [first] + BASE_VIEWS[1:]


def rezip(path: str, replace: dict[str, bytes], compress: tuple = ()) -> None:
  """The base file with some entries replaced (or deflated), written as a valid zip (CRCs right)."""
  with zipfile.ZipFile(path + ".base") as z:
    entries = {info.filename: z.read(info) for info in z.infolist()}
  with zipfile.ZipFile(path, "w") as z:
    for name, data in entries.items():
      name_key = name.split("/", 1)[1]
      z.writestr(name, replace.get(name_key, data),
                 zipfile.ZIP_DEFLATED if name_key in compress else zipfile.ZIP_STORED)


def patch_declared_size(path: str, entry: str, size: int, compressed: bool = False) -> None:
  """States another (uncompressed, or compressed) size for `entry` in the zip's central directory."""
  data = bytearray(open(path, "rb").read())
  name = entry.encode()
  at = 0
  while True:
    at = data.index(b"PK\x01\x02", at)
    name_length = struct.unpack_from("<H", data, at + 28)[0]
    if data[at + 46:at + 46 + name_length] == name:
      break
    at += 4
  struct.pack_into("<I", data, at + (20 if compressed else 24), size)
  open(path, "wb").write(bytes(data))


def fuzz_cases(directory) -> list[dict]:
  """209 files, each a dict of its path, kind and what was done."""
  rng = np.random.default_rng(20261203)
  base = os.path.join(directory, "base.pt")
  write_views_pt(base, BASE_VIEWS, BASE_STORAGES)
  base_bytes = open(base, "rb").read()
  pickle_bytes = state_dict_pickle(BASE_VIEWS)
  cases = []

  def case(kind, what, data=None, writer=None):
    path = os.path.join(directory, f"{len(cases):03d}-{kind}.pt")
    if data is not None:
      open(path, "wb").write(data)
    else:
      os.link(base, path + ".base")
      writer(path)
    cases.append(dict(path=path, kind=kind, what=what))

  for _ in range(60):  # Bytes of the pickle changed; the zip around it stays valid.
    mutated = bytearray(pickle_bytes)
    at, value = int(rng.integers(len(mutated))), int(rng.integers(256))
    mutated[at] = value
    case("pickle_byte", f"byte {at} := {value}", writer=lambda p, m=bytes(mutated): rezip(p, {"data.pkl": m}))
  directory_start = struct.unpack_from("<I", base_bytes, base_bytes.rindex(b"PK\x05\x06") + 16)[0]
  for _ in range(40):  # Bytes of the zip's central directory and end record.
    mutated = bytearray(base_bytes)
    at = int(rng.integers(directory_start, len(mutated)))
    mutated[at] ^= 1 << int(rng.integers(8))
    case("zip_directory_byte", f"bit flip at {at}", data=bytes(mutated))
  for _ in range(30):  # Any byte of the file.
    mutated = bytearray(base_bytes)
    at = int(rng.integers(len(mutated)))
    mutated[at] = (mutated[at] + int(rng.integers(1, 256))) % 256
    case("file_byte", f"byte {at} changed", data=bytes(mutated))
  for length in sorted(rng.choice(np.arange(1, len(base_bytes) - 1), 30, replace=False)):
    case("truncated", f"first {length} of {len(base_bytes)} bytes", data=base_bytes[:length])

  def views_case(kind, views, storages=BASE_STORAGES):
    case(kind, repr(views[0]), writer=lambda p: write_views_pt(p, views, storages))

  for changes in [dict(offset=7), dict(offset=12), dict(size=(3, 5), stride=(5, 1)), dict(size=(13,), stride=(1,)),
                  dict(stride=(10, 1)), dict(stride=(3, 5)), dict(offset=11, size=(2,), stride=(1,)),
                  dict(size=(2, 3), stride=(12, 1)), dict(offset=13, size=(0,), stride=(1,)),
                  dict(offset=1, size=(4, 3), stride=(3, 1)), dict(size=(12,), stride=(2,)), dict(numel=11)]:
    views_case("view_past_end", with_view(**changes))
  for changes in [dict(offset=-1), dict(offset=-2**40), dict(size=(-2, 3)), dict(size=(2, -3)),
                  dict(stride=(-3, 1)), dict(stride=(3, -1)), dict(offset=11, stride=(-3, -1)),
                  dict(numel=-12), dict(size=(-1,), stride=(1,)), dict(stride=(0, -1)),
                  dict(size=(2, 3, -1), stride=(3, 1, 1)), dict(offset=-6, size=(6,), stride=(1,))]:
    views_case("negative", with_view(**changes))
  for changes in [dict(size=(2**31, 3)), dict(size=(2**40,), stride=(0,)), dict(size=(2**62, 2**62), stride=(0, 0)),
                  dict(size=(2**64,), stride=(1,)), dict(size=(1, 2**63), stride=(1, 0)),
                  dict(size=(2**40, 2**40), stride=(1, 1)), dict(stride=(2**62, 1)), dict(offset=2**63),
                  dict(numel=2**61), dict(size=(4, 4), stride=(0, 0))]:
    views_case("huge", with_view(**changes))
  for changes in [dict(storage_type="ComplexFloatStorage"), dict(storage_type="QInt8Storage"),
                  dict(storage_type="DoubleStorage"), dict(storage_type="HalfStorage"), dict(storage="9"),
                  dict(storage_type="ByteStorage", numel=48)]:
    views_case("wrong_storage", with_view(**changes))
  not_storage = pickle_bytes.replace(b"X\x07\x00\x00\x00storage", b"X\x07\x00\x00\x00Storage", 1)
  case("wrong_storage", "a persistent id that is not a storage", writer=lambda p: rezip(p, {"data.pkl": not_storage}))
  numpy_global = pickle_bytes.replace(b"ctorch\nFloatStorage\n", b"cnumpy\nfloat32\n", 1)
  case("wrong_storage", "numpy.float32 as a storage type", writer=lambda p: rezip(p, {"data.pkl": numpy_global}))
  build_on_array = pickle_bytes.replace(b"tR", b"tR}b", 1)  # BUILD on the first tensor, not on the dict.
  case("wrong_storage", "BUILD on a tensor", writer=lambda p: rezip(p, {"data.pkl": build_on_array}))
  call_dtype = pickle_bytes.replace(b"ctorch\nFloatStorage\n", b"ctorch\nFloatStorage\n)R", 1)
  case("wrong_storage", "a storage type called", writer=lambda p: rezip(p, {"data.pkl": call_dtype}))

  zeros = np.zeros(2**24, np.float32)  # 64 MiB that deflate to about 64 KB.
  bomb_views = [View("w", "0", "FloatStorage", zeros.size, 0, (zeros.size,), (1,))] + BASE_VIEWS[2:]
  case("zip_bomb", "a 64 MiB storage deflated", writer=lambda p: rezip(
      p, {"data.pkl": state_dict_pickle(bomb_views), "data/0": zeros.tobytes()}, compress=("data/0",)))
  for both in (False, True):  # The zip directory states 4 GiB for a 48-byte entry, and the pickle agrees.
    case("zip_bomb", f"a storage's stated size 4 GiB{' (and compressed)' if both else ''}", writer=lambda p, b=both: (
        rezip(p, {"data.pkl": state_dict_pickle(with_view(numel=2**30 - 1))}),
        patch_declared_size(p, "archive/data/0", 2**32 - 4),
        b and patch_declared_size(p, "archive/data/0", 2**32 - 4, compressed=True)))
  case("zip_bomb", "data.pkl's stated size 100 MiB", writer=lambda p: (
      rezip(p, {}), patch_declared_size(p, "archive/data.pkl", 100 * 2**20)))
  case("zip_bomb", "a deflated data.pkl of 80 MiB", writer=lambda p: rezip(
      p, {"data.pkl": pickle_bytes[:-1] + b"N" * (80 * 2**20) + b"."}, compress=("data.pkl",)))
  for path in os.listdir(directory):
    if path.endswith(".base"):
      os.remove(os.path.join(directory, path))
  return cases


def test_two_hundred_mutated_checkpoints_are_read_or_refused_never_crash_or_hang(tmp_path):
  cases = fuzz_cases(str(tmp_path))
  assert len(cases) >= 200
  with open(tmp_path / "cases.jsonl", "w") as f:
    f.writelines(json.dumps(c) + "\n" for c in cases)
  result = subprocess.run([sys.executable, "-c", READER, str(tmp_path / "cases.jsonl"), str(tmp_path / "out.jsonl")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  lines = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
  done = [line for line in lines if line["outcome"] != "started"]
  assert result.returncode == 0 and len(done) == len(cases), (
      f"the reader process ended with {result.returncode} at {lines[-1]}: {result.stderr[-2000:]}")
  escaped = [c for c in done if c["outcome"] == "escaped"]
  assert escaped == [], escaped
  slow = [c for c in done if c["seconds"] > 3]
  assert slow == [], slow
  targeted = ("truncated", "view_past_end", "negative", "huge", "wrong_storage", "zip_bomb")
  read = [c for c in done if c["kind"] in targeted and c["outcome"] == "read"]
  assert read == [], [(c["what"], c["message"]) for c in read]
  for c in done:
    if c["outcome"] == "refused":  # One paragraph that names the file.
      assert c["path"] in c["message"] and "\n" not in c["message"] and "memory" not in c["message"], c
  counts = collections.Counter((c["kind"], c["outcome"]) for c in done)
  print(json.dumps({f"{k} {o}": n for (k, o), n in sorted(counts.items())}, indent=1))
  # Random flips land in names, numbers and structure alike: most files must still be refused.
  assert counts[("pickle_byte", "refused")] >= 20 and counts[("zip_directory_byte", "refused")] >= 20, counts


def test_the_unmutated_base_file_and_a_torch_style_state_dict_read_exactly(tmp_path):
  """The fuzzer's base is a valid file (so its mutations test the checks, not a broken start)."""
  path = str(tmp_path / "base.pt")
  write_views_pt(path, BASE_VIEWS, BASE_STORAGES)
  from glide_jax.released.state_dict_file import read_state_dict
  state_dict, _ = read_state_dict(path)
  np.testing.assert_array_equal(state_dict["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
  np.testing.assert_array_equal(state_dict["w_tail"], np.arange(6, 12, dtype=np.float32))
  np.testing.assert_array_equal(state_dict["h"], np.arange(12, dtype=np.float16).reshape(3, 4).T)
  assert state_dict["b"].dtype == ml_dtypes.bfloat16 and state_dict["b"].astype(np.float32).tolist() == [[0, 1], [2, 3]]
  np.testing.assert_array_equal(state_dict["steps"], np.arange(5))
  write_state_dict_pt(str(tmp_path / "plain.pt"), {"x": np.ones(3, np.float32)}, metadata=False)
  assert read_state_dict(str(tmp_path / "plain.pt"))[0]["x"].tolist() == [1, 1, 1]
