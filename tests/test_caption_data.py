"""Image–caption data: a caption folder read, checked and prepared once (memory-mapped), its splits, its
errors (each naming the file and line, leaving nothing prepared), and batches of captions as a pure
function of (seed, step); a folder of 20 captioned PNGs trains two steps on the tiny model and samples."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from glide_jax import caption_data
from glide_jax import data as data_lib
from glide_jax.caption_data import CaptionDataset, load_folder, resize_and_crop, split_range
from glide_jax.config import validate_config
from glide_jax.errors import ConfigError, UserError
from glide_jax.model.tokenizer import get_tokenizer

NUM_IMAGES = 20
# Short enough for the tiny model's 8-byte text context.
WORDS = ("a 0", "a 1", "two 2s", "3 left", "4 up", "five", "6 right", "7 down", "8 8", "nine")


def write_folder(folder, lines, images):
  """images: {file: uint8 array}; lines: JSON-able records (or raw strings) of captions.jsonl."""
  os.makedirs(folder, exist_ok=True)
  for file, array in images.items():
    os.makedirs(os.path.dirname(os.path.join(folder, file)), exist_ok=True)
    Image.fromarray(array).save(os.path.join(folder, file))
  with open(os.path.join(folder, "captions.jsonl"), "w", encoding="utf-8") as f:
    for line in lines:
      f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
  return str(folder)


def grey(seed, h=28, w=28):
  return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def twenty_images():
  """20 grey PNGs of several shapes; image 3 has a list of captions and image 5 a second line."""
  images = {f"img/{i:02d}.png": grey(i, *[(28, 28), (20, 36), (40, 24)][i % 3]) for i in range(NUM_IMAGES)}
  lines = [{"file": f"img/{i:02d}.png", "caption": WORDS[i % 10]} for i in range(NUM_IMAGES)]
  lines[3]["caption"] = ["a 3", "three"]
  lines.insert(8, "")  # A blank line is skipped.
  lines.append({"file": "img/05.png", "caption": "5 again"})
  return lines, images


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("GLIDE_CACHE_DIR", str(tmp_path / "cache"))
  return tmp_path / "cache"


@pytest.fixture
def folder(tmp_path):
  return write_folder(tmp_path / "captions", *twenty_images())


def folder_config(folder):
  config = tiny.get_config()
  config.data.source, config.data.folder = "folder", folder
  config.data.train_split, config.data.test_split = "train[:16]", "train[16:]"
  return config


def prepared_files(cache_dir):
  return sorted(os.path.relpath(os.path.join(d, f), cache_dir) for d, _, fs in os.walk(cache_dir) for f in fs)


def test_a_folder_is_read_in_order_with_every_caption_resized_and_cropped(folder, cache_dir, capsys):
  ds = load_folder(folder, "train", 16, 1)
  assert len(ds) == NUM_IMAGES and ds.images.shape == (NUM_IMAGES, 16, 16, 1) and ds.images.dtype == np.uint8
  assert isinstance(ds.images, np.memmap)  # Read from the prepared file, not held in memory.
  assert ds.captions[3] == ("a 3", "three") and ds.captions[5] == ("five", "5 again")
  assert ds.origins[5] == ("captions.jsonl line 6", "captions.jsonl line 22")  # Line 9 is the blank one.
  assert ds.captions[12] == ("two 2s",) and ds.origins[12] == ("captions.jsonl line 14",)
  with Image.open(os.path.join(folder, "img/01.png")) as image:  # 36 wide, 20 high.
    np.testing.assert_array_equal(ds.images[1], resize_and_crop(image, 16))
  assert ds.sample_prompts() == ["a 0", "a 1", "two 2s", "a 3", "4 up", "five", "6 right", "7 down", "8 8",
                                 "nine"]  # The first distinct first captions.
  assert "Preparing the 20 images" in capsys.readouterr().out
  assert prepared_files(cache_dir)[0].endswith("images.npy") and len(prepared_files(cache_dir)) == 1


def test_resize_and_crop_keeps_the_centre_of_the_longer_side():
  wide = np.zeros((16, 48), np.uint8)
  wide[:, 16:32] = np.arange(16, dtype=np.uint8)[None, :] * 10
  out = resize_and_crop(Image.fromarray(wide), 16)
  np.testing.assert_array_equal(out[..., 0], wide[:, 16:32])  # Same height: cropped, not resized.
  tall = Image.fromarray(grey(0, 64, 32))
  assert resize_and_crop(tall, 16).shape == (16, 16, 1)
  np.testing.assert_array_equal(resize_and_crop(tall, 16)[..., 0],
                                np.asarray(tall.resize((16, 32), Image.BICUBIC))[8:24])


def test_the_prepared_images_are_reused_and_remade_when_an_image_changes(folder, cache_dir, capsys):
  first = load_folder(folder, "train", 16, 1)
  capsys.readouterr()
  again = load_folder(folder, "train", 16, 1)
  assert capsys.readouterr().out == "" and again.images.filename == first.images.filename
  replacement = grey(99)
  Image.fromarray(replacement).save(os.path.join(folder, "img/00.png"))
  os.utime(os.path.join(folder, "img/00.png"), ns=(1, 1))  # A changed file, whatever the clock's resolution.
  changed = load_folder(folder, "train", 16, 1)
  assert "Preparing" in capsys.readouterr().out and changed.images.filename != first.images.filename
  np.testing.assert_array_equal(changed.images[0], resize_and_crop(Image.fromarray(replacement), 16))
  np.testing.assert_array_equal(changed.images[1:], first.images[1:])


@pytest.mark.parametrize("split,expected", [("train", (0, 20)), ("train[:16]", (0, 16)), ("train[16:]", (16, 20)),
                                            ("train[-5:]", (15, 20)), ("train[:50%]", (0, 10)),
                                            ("train[10%:90%]", (2, 18))])
def test_splits_slice_the_folder_as_tfds_slices_a_split(split, expected):
  assert split_range(split, 20, ("train",), "f") == expected


@pytest.mark.parametrize("split,message", [("test", r"has the split\(s\) train"), ("train[5:5]", "selects none"),
                                           ("train[::2]", r"has the split\(s\) train")])
def test_a_split_the_folder_does_not_have_is_refused(split, message):
  with pytest.raises(UserError, match=message):
    split_range(split, 20, ("train",), "the caption folder f")


def _break(kind, lines, images):
  """The 20-image folder with one thing wrong (what, and the error's expected words)."""
  if kind == "json":
    lines[4] = '{"file": "img/04.png", "caption": "four"'
    return "line 5: not a JSON object"
  if kind == "keys":
    lines[4] = {"image": "img/04.png", "caption": "four"}
    return 'line 5: each line is a JSON object with "file"'
  if kind == "empty caption":
    lines[4] = {"file": "img/04.png", "caption": "  "}
    return "line 5: img/04.png has an empty caption"
  if kind == "outside":
    lines[4] = {"file": "../secret.png", "caption": "four"}
    return "line 5: \"file\" is '../secret.png', outside the folder"
  if kind == "missing file":
    lines[4] = {"file": "img/absent.png", "caption": "four"}
    return "line 5: img/absent.png does not exist"
  if kind == "unreadable":
    images["img/bad.png"] = None
    lines[4] = {"file": "img/bad.png", "caption": "four"}
    return "line 5: img/bad.png cannot be read as an image"
  if kind == "mixed channels":
    images["img/06.png"] = np.zeros((28, 28, 3), np.uint8)
    return ("line 7: img/06.png is colour (3 channels) but img/00.png (captions.jsonl line 1) is grey "
            "(1 channel); a folder holds one kind")
  if kind == "wrong channels":
    for file in list(images):
      images[file] = np.stack([images[file]] * 3, -1)
    return "have 3 channel(s) (img/00.png, captions.jsonl line 1) but config.data.channels is 1; set --config.data"
  if kind == "no lines":
    lines[:] = [""]
    return "lists no images"
  raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["json", "keys", "empty caption", "outside", "missing file", "unreadable",
                                  "mixed channels", "wrong channels", "no lines"])
def test_each_bad_folder_names_the_file_and_line_and_prepares_nothing(tmp_path, cache_dir, kind):
  lines, images = twenty_images()
  message = _break(kind, lines, images)
  unreadable = {f: a for f, a in images.items() if a is None}
  folder = write_folder(tmp_path / "bad", lines, {f: a for f, a in images.items() if a is not None})
  for file in unreadable:
    with open(os.path.join(folder, file), "wb") as f:
      f.write(b"\x89PNG\r\n\x1a\n not really a png")
  with pytest.raises(UserError) as raised:
    load_folder(folder, "train", 16, 1)
  assert message in str(raised.value)
  assert [f for f in prepared_files(cache_dir) if f.endswith(".npy") or ".tmp-" in f] == []


def test_a_folder_without_captions_file_says_what_to_write(tmp_path):
  os.makedirs(tmp_path / "empty")
  with pytest.raises(UserError, match='has no captions.jsonl: write one line per image.*"file": "0001.png"'):
    load_folder(str(tmp_path / "empty"), "train", 16, 1)
  with pytest.raises(UserError, match="is not a directory"):
    load_folder(str(tmp_path / "nowhere"), "train", 16, 1)


def test_a_caption_longer_than_the_text_context_names_its_line(tmp_path):
  lines, images = twenty_images()
  lines[9] = {"file": "img/08.png", "caption": ["8 8", "a long caption"]}
  ds = load_folder(write_folder(tmp_path / "long", lines, images), "train", 16, 1)
  with pytest.raises(UserError, match=r"captions.jsonl line 10: the caption 'a long caption' is 14 tokens, longer "
                                      r"than the text context of 8 \(config.model.text_ctx\)"):
    data_lib.BatchSource(ds, get_tokenizer("byte"), 8, ("{name}",), 4, seed=0)


def test_caption_batches_are_a_pure_function_of_seed_and_step_and_split_over_processes():
  captions = tuple((f"c{i}",) if i % 2 else (f"c{i}", f"d{i}", f"e{i}") for i in range(12))
  ds = CaptionDataset(np.arange(12, dtype=np.uint8).reshape(12, 1, 1, 1).repeat(2, 1).repeat(2, 2), captions,
                      tuple(("x",) * len(c) for c in captions))
  tokenizer = get_tokenizer("byte")
  source = data_lib.BatchSource(ds, tokenizer, 4, ("{name}",), 4, seed=3)
  drawn = set()
  for step in range(30):
    batch = source(step)
    again = data_lib.BatchSource(ds, tokenizer, 4, ("{name}",), 4, seed=3)(step)
    for key in batch:
      np.testing.assert_array_equal(batch[key], again[key])
    halves = [data_lib.BatchSource(ds, tokenizer, 4, ("{name}",), 4, seed=3, process_index=p, process_count=2)(step)
              for p in (0, 1)]
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), batch[key])
    index = np.rint((batch["images"][:, 0, 0, 0] + 1) * 127.5).astype(int)  # The image is its own index.
    texts = [bytes(t[m].tolist()).decode() for t, m in zip(batch["tokens"], batch["mask"])]
    assert all(text in captions[i] for i, text in zip(index, texts))
    drawn.update(texts)
  assert drawn == {c for cs in captions for c in cs}  # Every caption of a many-captioned image is used.


def test_the_config_checks_the_source_fields():
  config = tiny.get_config()
  config.data.source = "files"
  with pytest.raises(ConfigError, match=r"config.data.source = 'files' is invalid: choose one of "
                                        r"\('tfds', 'folder', 'mnist_scenes'\)"):
    validate_config(config)
  config.data.source = "folder"
  with pytest.raises(ConfigError, match="config.data.folder = '' is invalid: give the folder"):
    validate_config(config)
  config = tiny.get_config()
  config.data.name, config.data.caption_feature = "", "caption"
  with pytest.raises(ConfigError, match="config.data.caption_feature = 'caption' is invalid: it names a feature"):
    validate_config(config)


def test_a_caption_folder_trains_two_steps_and_samples_and_eval_says_it_needs_classes(folder, tmp_path):
  from glide_jax.modes.eval import run as evaluate
  from glide_jax.modes.sample import run as sample_and_save
  from glide_jax.modes.train import run as train

  config = folder_config(folder)
  config.train.num_steps = config.train.checkpoint_every = 2
  workdir = str(tmp_path / "run")
  train(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
  assert len(losses) >= 1 and all(np.isfinite(losses))
  config.sample.prompts = "a 3,two 2s"
  config.sample.respacing = "3"
  with np.load(sample_and_save(config, workdir)["npz"]) as f:
    assert f["images"].shape == (2 * 2, 16, 16, 1) and list(f["prompts"][::2]) == ["a 3", "two 2s"]
  config.sample.prompts = ""
  with pytest.raises(UserError, match="no classes to prompt with"):
    sample_and_save(config, workdir)
  with pytest.raises(UserError, match="--mode=eval scores samples with a classifier of the dataset's classes"):
    evaluate(config, workdir)
  assert caption_data.CAPTIONS_FILE == "captions.jsonl"
