"""State dicts read from .pt and .npz files without running code from them."""

import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest

from glide_jax.errors import UserError
from glide_jax.released.state_dict_file import read_state_dict
from helpers.torch_files import write_pt_calling, write_state_dict_pt


def test_a_pt_state_dict_reads_back_exactly(tmp_path):
  rng = np.random.default_rng(0)
  state_dict = {"input_blocks.0.0.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
                "out.2.bias": rng.normal(size=(6,)).astype(np.float16),
                "positional_embedding": rng.normal(size=(8, 5)).astype(np.float32).T,  # Not contiguous.
                "steps": np.arange(3, dtype=np.int64)}
  path = str(tmp_path / "model.pt")
  write_state_dict_pt(path, state_dict)
  loaded, options = read_state_dict(path)
  assert options is None and list(loaded) == list(state_dict)
  for name, value in state_dict.items():
    assert loaded[name].dtype == value.dtype
    np.testing.assert_array_equal(loaded[name], value)


def test_a_safetensors_state_dict_reads_back_exactly_bfloat16_included(tmp_path):
  from safetensors.numpy import save_file

  rng = np.random.default_rng(1)
  state_dict = {"out.2.weight": rng.normal(size=(6, 4, 3, 3)).astype(np.float32),
                "out.2.bias": rng.normal(size=(6,)).astype(ml_dtypes.bfloat16),
                "steps": np.arange(3, dtype=np.int64)}
  path = str(tmp_path / "model.safetensors")
  save_file(state_dict, path, metadata={"format": "pt"})
  loaded, options = read_state_dict(path)
  assert options is None and sorted(loaded) == sorted(state_dict)
  for name, value in state_dict.items():
    assert loaded[name].dtype == value.dtype
    np.testing.assert_array_equal(loaded[name], value)
  with open(path, "rb") as f:
    (tmp_path / "cut.safetensors").write_bytes(f.read()[:-8])  # The data ends before the header says.
  with pytest.raises(UserError, match=r"cut\.safetensors is damaged or not a state dict \(SafetensorError: .*download"):
    read_state_dict(str(tmp_path / "cut.safetensors"))


def test_a_pt_that_would_run_code_is_refused_without_running_it(tmp_path):
  marker = tmp_path / "ran"
  path = str(tmp_path / "evil.pt")
  write_pt_calling(path, "os", "system", f"touch {marker}")
  with pytest.raises(UserError, match=r"Refused .*evil\.pt: it asks to load os\.system, which a state dict"):
    read_state_dict(path)
  assert not marker.exists()
  # The standard unpickler does run it: the file is a real attack.
  with zipfile.ZipFile(path) as z:
    pickle.loads(z.read("archive/data.pkl"))
  assert marker.exists()


def test_an_npz_with_a_pickled_object_is_refused_without_running_it(tmp_path):
  marker = tmp_path / "ran"

  class Payload:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  path = str(tmp_path / "evil.npz")
  np.savez(path, **{"out.2.bias": np.zeros(3, np.float32), "evil": np.array([Payload()], dtype=object)})
  with pytest.raises(UserError, match=r"Refused .*evil\.npz: it holds pickled Python objects"):
    read_state_dict(path)
  assert not marker.exists()


def test_npz_layouts_and_bad_files(tmp_path):
  plain = str(tmp_path / "plain.npz")
  np.savez(plain, **{"out.2.bias": np.ones(3, np.float32)})
  assert read_state_dict(plain)[0]["out.2.bias"].tolist() == [1, 1, 1]
  golden_like = str(tmp_path / "golden.npz")
  np.savez(golden_like, **{"state_dict/out.2.bias": np.ones(2, np.float32), "options_json": '{"image_size": 16}',
                           "in/x": np.zeros(1)})
  state_dict, options = read_state_dict(golden_like)
  assert list(state_dict) == ["out.2.bias"] and options == {"image_size": 16}
  with pytest.raises(UserError, match=r"missing\.pt does not exist"):
    read_state_dict(str(tmp_path / "missing.pt"))
  (tmp_path / "text.pt").write_text("not a checkpoint")
  with pytest.raises(UserError, match="text.pt is not a PyTorch checkpoint .*; download the released file again"):
    read_state_dict(str(tmp_path / "text.pt"))
  (tmp_path / "legacy.pt").write_bytes(pickle.dumps({"a": 1}, protocol=2))  # Pre-1.6 torch.save starts so.
  with pytest.raises(UserError, match=r"not a PyTorch zip-format checkpoint .* Re-save it with PyTorch"):
    read_state_dict(str(tmp_path / "legacy.pt"))
  whole = str(tmp_path / "whole.pt")
  write_state_dict_pt(whole, {"out.2.bias": np.ones(3, np.float32)})
  with open(whole, "rb") as f:
    (tmp_path / "cut.pt").write_bytes(f.read()[:os.path.getsize(whole) // 2])  # A download that stopped.
  with pytest.raises(UserError, match=r"cut\.pt is cut off .* the download did not finish\. Download it again"):
    read_state_dict(str(tmp_path / "cut.pt"))
  (tmp_path / "weights.ckpt").write_text("")
  with pytest.raises(UserError, match=r"give a PyTorch \.pt file, a \.safetensors file or an \.npz"):
    read_state_dict(str(tmp_path / "weights.ckpt"))
  (tmp_path / "empty.safetensors").write_text("")
  with pytest.raises(UserError, match=r"empty\.safetensors is damaged or not a state dict \(SafetensorError: "):
    read_state_dict(str(tmp_path / "empty.safetensors"))
  not_a_dict = str(tmp_path / "list.pt")
  write_pt_calling(not_a_dict, "collections", "OrderedDict", "x")  # OrderedDict("x") fails: not a state dict.
  with pytest.raises(UserError, match=r"list\.pt is damaged or not a state dict"):
    read_state_dict(not_a_dict)
