"""Other TFDS datasets end to end on tfds.testing.mock_data (no download): Fashion-MNIST (1 channel) and
CIFAR-10 (3 channels, RGB outputs) train two steps, sample and evaluate with their configs' data settings; a
dataset of images and texts gives its captions as prompts."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import cifar10, fashion_mnist_cpu, tiny
from glide_jax import data as data_lib
from glide_jax.caption_data import CaptionDataset, texts_of
from glide_jax.errors import UserError
from glide_jax.model.tokenizer import get_tokenizer
from glide_jax.modes.eval import run as evaluate
from glide_jax.modes.sample import run as sample_and_save
from glide_jax.modes.train import run as train

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NUM_EXAMPLES = 64


class CaptionedShapes(tfds.core.GeneratorBasedBuilder):
  """A dataset of photos with several captions each and a title, in the layout of TFDS's captioned sets."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "photo": tfds.features.Image(shape=(20, 24, 3)),
        "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
        "title": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    raise NotImplementedError("mocked")

  def _generate_examples(self):
    raise NotImplementedError("mocked")


def write_tfds_metadata(data_dir: str, name: str, label_names=None) -> None:
  """The metadata files of a prepared dataset (TFDS's advice for mock_data), written by TFDS itself.

  CIFAR-10 learns its class names from its download, so they are given here as the real files record them.
  """
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  if label_names:
    builder.info.features["label"].names = list(label_names)
  template = tfds.core.ShardedFileTemplate(data_dir=builder.data_path, template="{DATASET}-{SPLIT}.{FILEFORMAT}-"
                                           "{SHARD_X_OF_Y}", dataset_name=name, filetype_suffix="array_record")
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[NUM_EXAMPLES], num_bytes=0,
                          filename_template=template.replace(split=split)) for split in ("train", "test")]))
  os.makedirs(builder.data_path, exist_ok=True)
  builder.info.write_to_directory(builder.data_path)


def small_config(dataset_config, tmp_path):
  """tiny's model and schedule with the dataset config's data section, at 16x16."""
  config = tiny.get_config()
  config.data = dataset_config.get_config().data
  config.model.text_ctx = dataset_config.get_config().model.text_ctx  # Whole class prompts.
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.image_size = 16
  config.data.download = False  # Prepared (mocked): nothing may be downloaded.
  config.train.num_steps = 2
  config.train.checkpoint_every = 2
  config.sample.respacing = "3"
  config.sample.guidance_scales = (0.0, 2.0)
  config.eval.samples_per_digit = 2
  config.eval.classifier_dir = str(tmp_path / "classifier")
  config.eval.classifier_steps = 2
  config.eval.classifier_batch_size = 16
  config.eval.batch_size = 64
  return config


@pytest.fixture(scope="module", params=[("fashion_mnist", fashion_mnist_cpu, 1, None),
                                        ("cifar10", cifar10, 3, CIFAR10_NAMES)], ids=["fashion_mnist", "cifar10"])
def run(request, tmp_path_factory):
  name, dataset_config, channels, label_names = request.param
  tmp_path = tmp_path_factory.mktemp(name)
  config = small_config(dataset_config, tmp_path)
  write_tfds_metadata(config.data.data_dir, name, label_names)
  workdir = str(tmp_path / "run")
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=config.data.data_dir):
    train(config, workdir)
    paths = sample_and_save(config, workdir)
    report = evaluate(config, workdir)
  return name, channels, config, workdir, paths, report


def test_the_dataset_configs_name_their_data():
  assert fashion_mnist_cpu.get_config().data.name == "fashion_mnist"
  assert fashion_mnist_cpu.get_config().data.channels == 1
  assert cifar10.get_config().data.name == "cifar10" and cifar10.get_config().data.channels == 3
  assert cifar10.get_config().data.image_size == 32


def test_training_reads_the_channels_and_class_words(run):
  name, channels, config, workdir, _, _ = run
  ds = data_lib.load_dataset(config.data)
  assert ds.images.shape == (NUM_EXAMPLES, 16, 16, channels) and ds.images.dtype == np.uint8
  expected = CIFAR10_NAMES if name == "cifar10" else (
      "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
  assert ds.class_names == expected
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows if "loss" in r][-1] == 2
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)


def test_samples_keep_the_channels_and_rgb_data_is_written_as_rgb_png(run):
  name, channels, _, _, paths, _ = run
  with np.load(paths["npz"]) as npz:
    assert npz["images"].shape == (10 * 2, 16, 16, channels)  # 10 class prompts x 2 scales x 1 repeat.
    prompts = list(npz["prompts"][::2])
  assert prompts[0] == ("airplane" if name == "cifar10" else "T-shirt/top")
  grid = Image.open(paths["grid_2"])
  assert grid.mode == ("RGB" if channels == 3 else "L")
  figure = np.asarray(Image.open(paths["figure"]))
  assert figure.ndim == 3 and figure.shape[-1] == 3
  if channels == 3:  # Colour survives: some pixel of the grid has unequal channels.
    assert np.any(np.ptp(np.asarray(grid).astype(int), axis=-1) > 0)


def test_evaluation_reports_every_scale_with_the_dataset_class_names(run):
  name, _, config, workdir, _, report = run
  assert report["class_names"][0] == ("airplane" if name == "cifar10" else "T-shirt/top")
  assert [r["guidance_scale"] for r in report["results"]] == [0.0, 2.0]
  for r in report["results"]:
    assert r["num_samples"] == 10 * 2 and 0.0 <= r["accuracy"] <= 1.0 and np.isfinite(r["fid"])
  assert os.path.isfile(os.path.join(workdir, "eval", "eval.png"))


def test_a_tfds_dataset_of_images_and_texts_gives_every_caption_of_each_image(tmp_path):
  config = tiny.get_config()
  config.data.name, config.data.data_dir, config.data.download = "captioned_shapes", str(tmp_path), False
  config.data.train_split = "train"
  config.data.image_feature, config.data.caption_feature, config.data.channels = "photo", "captions/text", 3
  write_tfds_metadata(str(tmp_path), "captioned_shapes")
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=str(tmp_path)):
    examples = [tfds.data_source("captioned_shapes", split="train", data_dir=str(tmp_path))[i] for i in range(3)]
    ds = data_lib.load_dataset(config.data)
    config.data.caption_feature = "title"
    titles = data_lib.load_dataset(config.data)
    config.data.caption_feature = "caption"
    with pytest.raises(UserError, match=r"example 0 has no feature 'caption' .*its features are \['captions', "
                                        r"'photo', 'title'\]"):
      data_lib.load_dataset(config.data)
  assert isinstance(ds, CaptionDataset) and ds.images.shape == (NUM_EXAMPLES, 16, 16, 3)
  for i, example in enumerate(examples):
    assert ds.captions[i] == tuple(t for t in texts_of(example["captions"]["text"]) if t)
    assert titles.captions[i] == texts_of(example["title"])
  assert max(len(c) for c in ds.captions) > 1 and ds.origins[1][0] == "captioned_shapes split 'train' example 1"
  batch = data_lib.BatchSource(ds, get_tokenizer("byte"), 64, ("{name}",), 8, seed=0)(0)
  texts = [bytes(t[m].tolist()).decode() for t, m in zip(batch["tokens"], batch["mask"])]
  chosen = data_lib.BatchSource(ds, get_tokenizer("byte"), 64, ("{name}",), 8, seed=0).global_indices(0)
  assert all(text in ds.captions[i] for i, text in zip(chosen, texts))
