"""A dataset missing from the data dir is downloaded and prepared on first use, without TensorFlow: MNIST's
four files served from 127.0.0.1 (made from the shared MNIST) become the same images and labels."""

import functools
import gzip
import http.server
import os
import struct
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

from glide_jax import data as data_lib
from glide_jax import data_prepare
from glide_jax.errors import UserError
from helpers.runs import run_main

SIZES = {"train": 600, "t10k": 300}  # tiny reads train[:512] and test[:256].


def write_idx(path, array):
  with gzip.open(path, "wb") as f:
    f.write(bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


@pytest.fixture(scope="module")
def mnist_files(tmp_path_factory):
  """The first examples of the shared MNIST's splits as MNIST's .gz files, and the arrays they hold."""
  root = tmp_path_factory.mktemp("mnist_host")
  arrays = {}
  for prefix, split in (("train", "train"), ("t10k", "test")):
    source = tfds.data_source("mnist", split=split, download=False)
    examples = source.__getitems__(list(range(SIZES[prefix])))
    images = np.stack([e["image"][..., 0] for e in examples]).astype(np.uint8)
    labels = np.array([e["label"] for e in examples], np.uint8)
    write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    arrays[split] = (images, labels)
  return root, arrays


@pytest.fixture(scope="module")
def mnist_checksums(mnist_files):
  """The served files' sizes and sha256 (a subset of MNIST: not the files TFDS registers)."""
  root, _ = mnist_files
  path = root.parent / "mnist_checksums.txt"
  path.write_text("".join(f"{name} {os.path.getsize(root / name)} {data_prepare.sha256_of(str(root / name))}\n"
                          for name in data_prepare.IDX_FILES.values()))
  return str(path)


@pytest.fixture(scope="module")
def mnist_host(mnist_files):
  """An HTTP server on 127.0.0.1 playing MNIST's host; yields its URL."""
  root, _ = mnist_files
  handler = functools.partial(QuietHandler, directory=str(root))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}/"
  server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


def sorted_examples(images, labels):
  order = np.lexsort(np.concatenate([labels[None], images.reshape(len(images), -1).T]))
  return images[order], labels[order]


def test_idx_files_round_trip(tmp_path):
  array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  write_idx(tmp_path / "a.gz", array)
  np.testing.assert_array_equal(data_prepare.read_idx(str(tmp_path / "a.gz")), array)
  with gzip.open(tmp_path / "bad.gz", "wb") as f:
    f.write(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10) + b"short")
  with pytest.raises(ValueError, match="not a uint8 idx file of shape"):
    data_prepare.read_idx(str(tmp_path / "bad.gz"))


def test_preparation_yields_the_served_images_and_labels(tmp_path, mnist_files, mnist_host, mnist_checksums, capsys):
  _, arrays = mnist_files
  data_dir = str(tmp_path / "tfds")
  data_prepare.prepare("mnist", data_dir, mnist_host, mnist_checksums)
  out = capsys.readouterr().out
  assert "Preparing the TFDS dataset 'mnist'" in out and "Prepared 'mnist' (train 600, test 300 examples)" in out
  builder = tfds.builder("mnist", data_dir=data_dir)
  assert builder.is_prepared() and os.path.isdir(os.path.join(data_dir, "mnist", "3.0.1"))
  for split, (images, labels) in arrays.items():
    source = tfds.data_source("mnist", split=split, data_dir=data_dir, download=False)
    examples = source.__getitems__(list(range(len(source))))
    got_images = np.stack([e["image"][..., 0] for e in examples])
    got_labels = np.array([e["label"] for e in examples], np.uint8)
    assert got_images.shape == images.shape and got_images.dtype == np.uint8
    # TFDS shuffles while it writes, so compare as collections.
    for got, want in zip(sorted_examples(got_images, got_labels), sorted_examples(images, labels)):
      np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got_labels, labels)  # Shuffled, as TFDS does.


def test_main_prepares_mnist_on_first_use_then_trains_and_reuses_it(tmp_path, mnist_host, mnist_checksums):
  data_dir = str(tmp_path / "empty_tfds")
  overrides = [f"--config.data.data_dir={data_dir}", f"--config.data.download_url={mnist_host}",
               f"--config.data.download_checksums={mnist_checksums}",
               "--config.train.num_steps=2", "--config.train.checkpoint_every=2"]
  first = run_main(str(tmp_path / "run"), *overrides)
  assert first.returncode == 0, first.stderr
  assert "Prepared 'mnist' (train 600, test 300 examples)" in first.stdout
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2"]
  assert "warning" not in first.stderr.lower()
  # The prepared copy is reused: with the host gone (download off), the run resumes and goes on.
  second = run_main(str(tmp_path / "run"), f"--config.data.data_dir={data_dir}", "--config.data.download=False",
                    "--config.train.num_steps=4", "--config.train.checkpoint_every=2")
  assert second.returncode == 0, second.stderr
  assert "Preparing" not in second.stdout and "Resuming from the checkpoint at step 2" in second.stdout
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2", "4"]


def test_an_unreachable_host_is_a_clear_error_and_writes_nothing(tmp_path):
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(UserError, match=r"'mnist' is not prepared under .*http://127\.0\.0\.1:1/train-labels-idx1-"
                                      r"ubyte\.gz cannot be reached .*Connection refused.*copy DATA_DIR/mnist"):
    data_prepare.prepare("mnist", data_dir, "http://127.0.0.1:1")
  assert not os.path.exists(data_dir)


def test_a_host_that_answers_without_the_files_is_told_apart_from_an_unreachable_one(tmp_path, mnist_host):
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(UserError, match=r"nowhere/train-labels-idx1-ubyte\.gz answered HTTP 404 File not found\. The "
                                      r"host is reachable but does not serve MNIST's files under that name: check "
                                      r"--config\.data\.download_url"):
    data_prepare.prepare("mnist", data_dir, mnist_host + "nowhere/")
  assert not os.path.exists(data_dir)


def test_a_download_that_is_not_the_registered_file_is_refused_removed_and_fetched_again(tmp_path, mnist_files,
                                                                                        mnist_checksums):
  """A mirror that serves garbage under MNIST's names, then the right files at the same URL: the first run
  is refused naming the file and both checksums and keeps nothing of it; the next run prepares the dataset."""
  root, _ = mnist_files
  mirror = tmp_path / "mirror"
  mirror.mkdir()
  for name in data_prepare.IDX_FILES.values():
    (mirror / name).write_bytes(b"not the file at all")
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(mirror)))
  threading.Thread(target=server.serve_forever, daemon=True).start()
  url, data_dir = f"http://127.0.0.1:{server.server_address[1]}/", str(tmp_path / "tfds")
  try:
    with pytest.raises(UserError, match=r"/t[a-z0-9-]+-idx\d-ubyte\.gz is not the file registered for 'mnist' \(and "
                                        r"3 more of its files\): it has 19 bytes, sha256 [0-9a-f]{64}, where [\d,]+ "
                                        r"bytes, sha256 [0-9a-f]{64} are expected\. The download was removed"):
      data_prepare.prepare("mnist", data_dir, url, mnist_checksums)
    downloads = os.path.join(data_dir, "downloads")
    kept = [n for _, _, files in os.walk(downloads) for n in files if "ubyte" in n]
    assert kept == [] and not tfds.builder("mnist", data_dir=data_dir).is_prepared()
    # Without a checksums file, TFDS's registered ones apply: the subset mirror's own files are refused too.
    for name in data_prepare.IDX_FILES.values():
      (mirror / name).write_bytes((root / name).read_bytes())
    with pytest.raises(UserError, match=r"is not the file registered for 'mnist' \(and 3 more of its files\)"):
      data_prepare.prepare("mnist", data_dir, url)
    data_prepare.prepare("mnist", data_dir, url, mnist_checksums)  # The right files, as registered here.
    assert tfds.builder("mnist", data_dir=data_dir).is_prepared()
  finally:
    server.shutdown()


def test_a_missing_dataset_with_download_off_names_both_fixes(tmp_path):
  with pytest.raises(UserError, match=r"'mnist' was not found under .*config\.data\.download is off.*"
                                      r"--config\.data\.download=True.*TFDS_DATA_DIR"):
    data_lib.load_split("mnist", "train", str(tmp_path), 16, False, "")


def test_datasets_tfds_cannot_prepare_without_tensorflow_say_how(tmp_path, monkeypatch):
  monkeypatch.setattr(data_prepare, "tensorflow_installed", lambda: False)
  with pytest.raises(UserError, match=r"TFDS needs TensorFlow to prepare 'cifar10': `pip install tensorflow-cpu`"):
    data_prepare.prepare("cifar10", str(tmp_path), "")
  with pytest.raises(UserError, match=r"download_url and download_checksums work for the datasets stored as MNIST's "
                                      r"idx files"):
    data_prepare.prepare("cifar10", str(tmp_path), "http://127.0.0.1:1/")


def test_an_unknown_dataset_name_is_reported(tmp_path):
  with pytest.raises(UserError, match=r"TFDS has no dataset named 'mnistt'.*check config\.data\.name"):
    data_lib.load_split("mnistt", "train", str(tmp_path), 16, True, "")
