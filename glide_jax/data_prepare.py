"""Downloads and prepares a TFDS dataset the first time a run needs it, in the array_record format.

TFDS's own builders need TensorFlow to prepare MNIST (they unpack the .gz files and read them through
`tf.io.gfile`, and encode images with `tf.image.encode_png`), and this project does not install TensorFlow.
For the datasets stored as MNIST's four idx files (mnist, fashion_mnist, kmnist), `_idx_builder` subclasses
TFDS's builder and replaces only those steps with numpy, gzip and Pillow. TFDS still downloads (checking
the checksums it registers for its URLs), writes, shuffles and records the dataset's metadata, so the
result is what `tfds build` writes: same directory, same files, same example order. Every other dataset
is prepared by TFDS itself, which needs TensorFlow installed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import io
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Iterator

import numpy as np

from glide_jax.errors import UserError

# TFDS's name → the file names of MNIST's idx format under the builder's URL.
IDX_FILES = {
    "train_data": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_data": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
IDX_DATASETS = ("mnist", "fashion_mnist", "kmnist")


def read_idx(path: str) -> np.ndarray:
  """A gzipped idx file (MNIST's format: magic, sizes, then uint8 data) as an array of its shape."""
  with gzip.open(path, "rb") as f:
    raw = f.read()
  ndim = raw[3]
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if raw[2] != 0x08 or data.size != int(np.prod(shape)):
    raise ValueError(f"{path} is not a uint8 idx file of shape {shape}")
  return data.reshape(shape)


def png_bytes(image: np.ndarray) -> bytes:
  """A uint8 [H, W] or [H, W, C] image as PNG, encoded by Pillow (TFDS would use TensorFlow)."""
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image).save(buffer, "PNG")
  return buffer.getvalue()


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def expected_files(name: str, checksums_file: str = "") -> dict[str, tuple[int, str]]:
  """File name → (size, sha256) that a download of `name` must match: the lines "NAME SIZE SHA256" of
  `checksums_file` (for a mirror that serves other files on purpose), else what TFDS registers for its URLs."""
  if not checksums_file:
    import tensorflow_datasets as tfds
    infos = tfds.builder_cls(name).url_infos or {}
    return {os.path.basename(url): (int(info.size), str(info.checksum)) for url, info in infos.items()}
  expected = {}
  try:
    with open(os.path.expanduser(checksums_file), encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        if line.strip() and not line.startswith("#"):
          parts = line.split()
          if len(parts) != 3 or not parts[1].isdigit() or len(parts[2]) != 64:
            raise ValueError(f"line {number} is not 'NAME SIZE SHA256'")
          expected[parts[0]] = (int(parts[1]), parts[2].lower())
  except (OSError, ValueError) as e:
    raise UserError(f"config.data.download_checksums = {checksums_file!r} cannot be used: {e}. Give a file of "
                    f"'NAME SIZE SHA256' lines, one per file the mirror serves.") from None
  return expected


def verify_downloads(downloads: dict[str, tuple[str, str]], expected: dict[str, tuple[int, str]], name: str) -> None:
  """Every downloaded file ({key: (path, url)}) that is not the registered one is removed, so the next run
  downloads it again; the first is reported with both sizes and checksums."""
  wrong = []
  for path, url in downloads.values():
    want = expected.get(os.path.basename(urllib.parse.urlparse(url).path))
    if want is not None and (os.path.getsize(path), sha256_of(path)) != want:
      wrong.append((url, os.path.getsize(path), sha256_of(path), want))
      for stale in (path, f"{path}.INFO"):  # TFDS keeps a record beside each download; both go.
        with contextlib.suppress(FileNotFoundError):
          os.remove(stale)
  if wrong:
    url, size, digest, want = wrong[0]
    others = f" (and {len(wrong) - 1} more of its files)" if len(wrong) > 1 else ""
    raise UserError(f"{url} is not the file registered for {name!r}{others}: it has {size:,} bytes, sha256 "
                    f"{digest}, where {want[0]:,} bytes, sha256 {want[1]} are expected. The download was removed, "
                    f"so the next run fetches it again. If the mirror serves other files on purpose, list their "
                    f"sizes and checksums in --config.data.download_checksums.")


def _idx_builder(name: str, base_url: str, checksums_file: str = ""):
  """TFDS's builder for `name` with its unpacking and image encoding done without TensorFlow; every
  downloaded file is checked against `expected_files`."""
  import tensorflow_datasets as tfds

  tfds_builder = tfds.builder_cls(name)

  class IdxBuilder(tfds_builder, skip_registration=True):
    code_path = tfds_builder.code_path  # Where TFDS keeps the checksums of the builder's URLs.
    URL = base_url or tfds_builder.URL

    def _split_generators(self, dl_manager):
      urls = {k: urllib.parse.urljoin(self.URL, v) for k, v in IDX_FILES.items()}
      files = dl_manager.download(urls)
      verify_downloads({k: (os.fspath(path), urls[k]) for k, path in files.items()},
                       expected_files(name, checksums_file), name)
      return {
          "train": self._generate_examples(files["train_data"], files["train_labels"]),
          "test": self._generate_examples(files["test_data"], files["test_labels"]),
      }

    def _generate_examples(self, data_path, label_path) -> Iterator[tuple[int, dict]]:
      images, labels = read_idx(os.fspath(data_path)), read_idx(os.fspath(label_path))
      if len(images) != len(labels):
        raise ValueError(f"{data_path} holds {len(images)} images but {label_path} {len(labels)} labels")
      for index, (image, label) in enumerate(zip(images, labels)):  # Keys as TFDS's builder's: the index.
        yield index, {"image": png_bytes(image), "label": int(label)}

  IdxBuilder.name = name  # Registered name, so the dataset lands in DATA_DIR/<name>/<version>.
  return IdxBuilder


def tensorflow_installed() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


def _first_url(name: str, base_url: str) -> str:
  return urllib.parse.urljoin(base_url or _idx_builder(name, "").URL, IDX_FILES["train_labels"])


def _check_reachable(url: str, name: str, data_dir: str) -> None:
  """Fails at once, naming the fix, where TFDS's downloader would retry an unreachable host for minutes."""
  try:
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=20):
      pass
  except urllib.error.HTTPError as e:  # The host answered: the network is fine, the file is not there.
    raise UserError(
        f"The TFDS dataset {name!r} is not prepared under {data_dir!r}, and downloading it failed: {url} answered "
        f"HTTP {e.code} {e.reason}. The host is reachable but does not serve MNIST's files under that name: check "
        f"--config.data.download_url (a directory holding {', '.join(IDX_FILES.values())}).") from None
  except (urllib.error.URLError, OSError) as e:
    reason = getattr(e, "reason", e)
    raise UserError(
        f"The TFDS dataset {name!r} is not prepared under {data_dir!r}, and downloading it failed: {url} cannot "
        f"be reached ({reason}). Either give this machine network access, or prepare the dataset on one that "
        f"has it (run this same command there, or `tfds build {name} --file_format=array_record`) and copy "
        f"DATA_DIR/{name} here, pointing TFDS_DATA_DIR or --config.data.data_dir at it; "
        f"--config.data.download_url=URL names a mirror that serves the same files.") from None


@contextlib.contextmanager
def _tfds_progress_bars_off() -> Iterator[None]:
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core.utils import tqdm_utils
  was_on = getattr(tqdm_utils, "_active", True)
  tfds.disable_progress_bar()
  try:
    yield
  finally:
    if was_on:
      tfds.enable_progress_bar()


def prepare(name: str, data_dir: str, download_url: str = "", checksums_file: str = "") -> None:
  """Downloads `name` and writes it to DATA_DIR/<name>/<version> in the array_record format.

  TFDS writes into a temporary directory and renames it when complete, so an interrupted preparation
  leaves nothing that looks prepared, and the next run starts it again.
  """
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core.download import download_manager

  if download_url and not download_url.endswith("/"):
    download_url += "/"  # A directory: its files are joined to it.
  if name in IDX_DATASETS:
    _check_reachable(_first_url(name, download_url), name, data_dir)
    expected_files(name, checksums_file)  # A bad checksums file is reported before any download.
    builder = _idx_builder(name, download_url, checksums_file)(data_dir=data_dir, file_format="array_record")
  elif download_url or checksums_file:
    raise UserError(f"config.data.download_url and download_checksums work for the datasets stored as MNIST's "
                    f"idx files {IDX_DATASETS}, not for {name!r}; leave them empty and TFDS downloads from its own "
                    f"source.")
  elif not tensorflow_installed():
    raise UserError(
        f"The TFDS dataset {name!r} is not prepared under {data_dir!r}. glide-jax prepares {', '.join(IDX_DATASETS)} "
        f"itself, but TFDS needs TensorFlow to prepare {name!r}: `pip install tensorflow-cpu` once and run again "
        f"(or run `tfds build {name} --file_format=array_record --data_dir=DIR` on any machine that has it and "
        f"point TFDS_DATA_DIR / --config.data.data_dir at DIR).")
  else:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  print(f"Preparing the TFDS dataset {name!r} in {data_dir} (first use; later runs reuse it)...", flush=True)
  start = time.perf_counter()
  try:
    with _tfds_progress_bars_off(), contextlib.redirect_stdout(io.StringIO()):  # TFDS prints its own lines.
      builder.download_and_prepare()
  except tfds.download.DownloadError as e:
    raise UserError(f"Downloading the TFDS dataset {name!r} failed: {e}. Nothing was prepared; run again to "
                    f"retry, or see the README's 'Data' section to prepare it elsewhere.") from None
  except download_manager.NonMatchingChecksumError as e:
    raise UserError(f"A downloaded file of {name!r} does not match the checksum TFDS records for it, so it was "
                    f"not used: {' '.join(str(e).split())[:300]}. Run again to download it afresh.") from None
  splits = ", ".join(f"{split} {info.num_examples:,}" for split, info in builder.info.splits.items())
  print(f"Prepared {name!r} ({splits} examples) in {time.perf_counter() - start:.0f} s.", flush=True)
