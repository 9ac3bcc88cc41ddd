"""MNIST scenes: the grammar's captions and the layouts they allow, scenes that match their captions by
construction (checked cell by cell against the digits placed), determinism, the held-out captions, the
folder export, and a tiny model that trains on scenes and samples a caption it never saw."""

import json
import os

import numpy as np
import pytest

from configs import mnist_scenes_cpu, tiny
from glide_jax import data as data_lib
from glide_jax import export_scenes, scenes
from glide_jax.caption_data import load_folder
from glide_jax.config import validate_config
from glide_jax.errors import ConfigError, UserError
from glide_jax.experiment import Experiment
from glide_jax.model.tokenizer import get_tokenizer
from helpers.paths import load_script

CELL = 8


def synthetic_digits(per_class=5):
  """Digits uint8 [50, 8, 8, 1], image j filled with the value j + 1, so a cell tells which image it holds."""
  labels = np.repeat(np.arange(10), per_class)
  images = (np.arange(len(labels), dtype=np.uint8) + 1)[:, None, None, None] * np.ones((1, CELL, CELL, 1), np.uint8)
  return images, labels


def cell_contents(image):
  """The digit image index each cell holds (its fill value - 1), or -1 for an empty cell."""
  cells = [image[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL, 0] for r in range(2) for c in range(2)]
  for cell in cells:
    assert np.all(cell == cell[0, 0])  # One whole digit image per cell, or nothing.
  return [int(cell[0, 0]) - 1 for cell in cells]


def test_every_caption_reads_back_as_its_fact_and_other_text_as_none():
  facts = scenes.all_facts()
  assert len(facts) == 100 + 100 + 10 + 40 and len(set(facts)) == len(facts)
  for fact in facts:
    for caption in scenes.captions_of(fact):
      assert scenes.fact_of(caption) == fact
      assert scenes.fact_of("  " + caption.upper() + " ") == fact
  assert scenes.captions_of(("left", 8, 3)) == ("an 8 to the left of a 3", "a 3 to the right of an 8")
  assert scenes.captions_of(("corner", 4, 1)) == ("a 4 in the top right corner",)
  for other in ("a 3 left of a 7", "three", "two 4", "a 3 in the middle corner", "a 12 above a 3", ""):
    assert scenes.fact_of(other) is None and scenes.allowed_layouts(other) == ()


def test_word_order_changes_the_layouts_a_caption_allows():
  assert scenes.allowed_layouts("a 3 to the left of a 7") == ((3, 7, -1, -1), (-1, -1, 3, 7))
  assert scenes.allowed_layouts("a 7 to the left of a 3") == ((7, 3, -1, -1), (-1, -1, 7, 3))
  assert scenes.allowed_layouts("a 7 to the right of a 3") == scenes.allowed_layouts("a 3 to the left of a 7")
  assert scenes.allowed_layouts("a 1 above a 2") == ((1, -1, 2, -1), (-1, 1, -1, 2))
  assert scenes.allowed_layouts("a 2 below a 1") == scenes.allowed_layouts("a 1 above a 2")
  assert scenes.allowed_layouts("a 5 in the bottom left corner") == ((-1, -1, 5, -1),)
  two = scenes.allowed_layouts("two 4s")
  assert len(two) == 6 and all(sorted(layout) == [-1, -1, 4, 4] for layout in two)


def test_held_out_facts_are_a_share_of_each_kind_and_depend_on_the_seed():
  held = scenes.held_out_facts(0, 0.1)
  assert len(held) == 10 + 10 + 1 + 4 and held == scenes.held_out_facts(0, 0.1)
  assert held != scenes.held_out_facts(1, 0.1) and scenes.held_out_facts(0, 0.0) == frozenset()
  lefts = {f[1:] for f in held if f[0] == "left"}
  aboves = {f[1:] for f in held if f[0] == "above"}
  assert lefts != aboves  # Each kind draws its own.


@pytest.mark.parametrize("split", scenes.SPLITS)
def test_scenes_match_their_captions_cell_by_cell(split):
  digits, labels = synthetic_digits()
  spec = scenes.SceneSpec(count=400, seed=3, held_out=0.1, image_size=2 * CELL)
  ds, layouts = scenes.make_scenes(digits, labels, split, spec)
  held = scenes.held_out_facts(3, 0.1)
  assert ds.images.shape == (400, 16, 16, 1) and layouts.shape == (400, 4)
  kinds = set()
  for image, captions, layout in zip(ds.images, ds.captions, layouts):
    contents = cell_contents(image)
    assert [labels[j] if j >= 0 else -1 for j in contents] == layout.tolist()
    for caption in captions:
      assert tuple(layout) in scenes.allowed_layouts(caption)
    fact = scenes.fact_of(captions[0])
    assert (fact in held) == (split == "held_out")
    kinds.add(fact[0])
  assert kinds == ({"left", "above", "two", "corner"} if split != "held_out" else {f[0] for f in held})


def test_scenes_are_a_pure_function_of_seed_split_and_index():
  digits, labels = synthetic_digits()
  spec = scenes.SceneSpec(count=100, seed=0, held_out=0.1, image_size=2 * CELL)
  a, la = scenes.make_scenes(digits, labels, "train", spec)
  b, lb = scenes.make_scenes(digits, labels, "train", spec)
  few, lf = scenes.make_scenes(digits, labels, "train", scenes.SceneSpec(30, 0, 0.1, 2 * CELL))
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.images[:30], few.images)  # A scene does not depend on how many follow.
  assert a.captions[:30] == few.captions and np.array_equal(la[:30], lf)
  other, _ = scenes.make_scenes(digits, labels, "train", scenes.SceneSpec(100, 1, 0.1, 2 * CELL))
  test, _ = scenes.make_scenes(digits, labels, "test", spec)
  assert other.captions != a.captions and test.captions != a.captions


def test_the_config_reads_mnist_scenes_splits_and_refuses_others():
  config = mnist_scenes_cpu.get_config()
  validate_config(config)
  # The tiny model's canvas below: both tests then share one decoded copy of MNIST (data.load_split's cache).
  config.data.image_size = tiny.get_config().data.image_size
  config.data.scenes.count, config.data.scenes.test_count = 200, 50
  train = data_lib.load_dataset(config.data)
  held = data_lib.load_dataset(config.data, "held_out[:10]")
  assert train.images.shape == (200, 16, 16, 1) and len(held) == 10
  assert train.origins[0][0] == "mnist_scenes split 'train' scene 0"
  held_facts = scenes.held_out_facts(0, 0.1)
  assert all(scenes.fact_of(c[0]) in held_facts for c in held.captions)
  assert not any(scenes.fact_of(c[0]) in held_facts for c in train.captions)
  with pytest.raises(UserError, match=r"has the split\(s\) train, test, held_out"):
    data_lib.load_dataset(config.data, "validation")
  tokenizer = get_tokenizer(config.model.tokenizer)
  assert max(len(tokenizer.encode(c)) for f in scenes.all_facts() for c in scenes.captions_of(f)) <= \
      config.model.text_ctx
  config.data.image_size = 33
  with pytest.raises(ConfigError, match="config.data.image_size = 33 is invalid: MNIST scenes split the canvas"):
    validate_config(config)
  config.data.image_size, config.data.channels = 32, 3
  with pytest.raises(ConfigError, match="config.data.channels = 3 is invalid: MNIST scenes are grey"):
    validate_config(config)


def test_a_split_exported_as_a_caption_folder_reads_back_the_same(tmp_path, monkeypatch):
  monkeypatch.setenv("GLIDE_CACHE_DIR", str(tmp_path / "cache"))
  digits, labels = synthetic_digits()
  ds, _ = scenes.make_scenes(digits, labels, "test", scenes.SceneSpec(20, 0, 0.1, 2 * CELL))
  scenes.export_folder(ds, str(tmp_path / "folder"))
  back = load_folder(str(tmp_path / "folder"), "train", 2 * CELL, 1)
  np.testing.assert_array_equal(back.images, ds.images)
  assert back.captions == ds.captions
  with open(tmp_path / "folder" / "captions.jsonl") as f:
    assert json.loads(f.readline())["file"] == "000/000000.png"


def test_the_export_command_writes_a_folder_and_reports_bad_input_in_one_line(tmp_path, capsys):
  export_scenes.main([f"--out={tmp_path / 'out'}", "--split=held_out[:5]", "--test_count=50", "--image_size=16"])
  assert "Wrote 5 scenes of the 'held_out[:5]' split" in capsys.readouterr().out
  assert len(os.listdir(tmp_path / "out" / "000")) == 5
  with pytest.raises(SystemExit) as exit_info:
    export_scenes.main([f"--out={tmp_path / 'bad'}", "--held_out=1.5"])
  assert exit_info.value.code == 2 and "data.scenes.held_out = 1.5 is invalid" in capsys.readouterr().err


def test_a_tiny_model_trains_on_scenes_samples_a_caption_it_never_saw_and_is_evaluated(tmp_path, capsys):
  from glide_jax.modes.eval import run as evaluate
  from glide_jax.modes.sample import run as sample_and_save
  from glide_jax.modes.train import run as train

  config = tiny.get_config()
  config.data.source, config.data.test_split = "mnist_scenes", "held_out"
  config.data.scenes.count, config.data.scenes.test_count = 64, 200  # 200: every held-out fact.
  config.model.tokenizer, config.model.text_ctx = "gpt2", 16
  config.train.num_steps = config.train.checkpoint_every = 2
  workdir = str(tmp_path / "run")
  train(config, workdir)
  unseen = sorted(scenes.captions_of(f)[0] for f in scenes.held_out_facts(0, 0.1))[:2]
  config.sample.prompts, config.sample.respacing = ",".join(unseen), "3"
  with np.load(sample_and_save(config, workdir)["npz"]) as f:
    assert f["images"].shape == (2 * 2, 16, 16, 1) and list(f["prompts"][::2]) == unseen
  config.eval.samples_per_digit, config.eval.classifier_steps = 2, 20
  config.eval.classifier_dir = str(tmp_path / "classifier")
  report = evaluate(config, workdir)
  held = scenes.held_out_facts(0, 0.1)
  assert sorted(tuple(f) for f in report["facts"]) == sorted(held)
  assert [r["guidance_scale"] for r in report["results"]] == [0.0, 3.0]
  for r in report["results"] + [report["reader"]]:
    assert 0.0 <= r["fully_right"] <= r["right_digits"] <= 1.0 and np.isfinite(r["fid"])  # Right implies digits.
  assert set(report["results"][0]["by_template"]) <= set(scenes.TEMPLATES)
  with np.load(os.path.join(workdir, "eval", "samples.npz")) as f:
    assert f["images"].shape == (2, 2 * len(held), 16, 16, 1) and f["fully_right"].shape == (2, 2 * len(held))
    # Each fact's two samples say it both ways where it has two phrasings.
    assert list(f["prompts"]) == [scenes.captions_of(fact)[j % len(scenes.captions_of(fact))]
                                  for fact in scenes.all_facts() if fact in held for j in range(2)]
  assert os.path.isfile(os.path.join(workdir, "eval", "eval.png"))
  # How relations of two different digits were drawn: shares of each outcome, printed as a second table.
  for r in report["results"] + [report["reader"]]:
    assert set(r["relations"]) <= {"left of", "right of", "above", "below"} and r["relations"]
    assert all(sum(shares.values()) == pytest.approx(1.0) for shares in r["relations"].values())
  assert "Relations of two different digits, the share drawn right / swapped" in capsys.readouterr().out
  # The caption probe (scripts/caption_probe.py) on this run: a caption that changes nothing changes no MSE.
  probe = load_script("caption_probe")
  assert probe.other_captions("a 3 to the left of a 7") == {
      "true": "a 3 to the left of a 7", "placement": "a 7 to the left of a 3", "identity": "a 4 to the left of a 7",
      "no text": ""}
  assert probe.other_captions("an 8 in the top right corner")["placement"] == "an 8 in the bottom left corner"
  assert probe.other_captions("two 4s") is None and probe.other_captions("a 5 above a 5") is None
  exp = Experiment.from_workdir(workdir)
  same = [dict(probe.other_captions("a 3 to the left of a 7"), placement="a 3 to the left of a 7")] * 2
  rows = probe.probe(exp, exp.load_params()[0], np.zeros((2, 16, 16, 1), np.uint8), same, [99, 50], repeats=1)
  assert [r["t"] for r in rows] == [99, 50] and all(r["delta"]["placement"] == (0.0, 0.0) for r in rows)
  assert all(np.isfinite(r["mse"]) and r["delta"]["identity"][0] != 0.0 for r in rows)
  # The role of each digit token: 1 for the digit placed left, whichever phrasing names it first.
  features, roles = probe.digit_token_roles(exp, exp.load_params()[0], [("left", 3, 7), ("left", 5, 5)])
  assert features.shape == (4, config.model.xf_width) and list(roles) == [1, 0, 0, 1]
  probe.main([f"--workdir={workdir}", "--scenes=2", "--repeats=1"])
  lines = capsys.readouterr().out.splitlines()
  assert "2 scenes of 'held_out' x 1 noise draws" in lines[-15] and len(lines[-13:-3]) == 10
  assert "linear probe" in lines[-3] and lines[-2].strip().startswith("this run: left ")
  assert lines[-1].strip().startswith("freshly initialised: left ") and " above " in lines[-1]
  assert lines[-1].count("% of the variance)") == 2
  # The role's share of the variance: all of it where the features are the role, none where they ignore it.
  roles = np.tile([0, 1], 50)
  assert probe.variance_share(np.c_[roles, -roles], roles) == pytest.approx(1.0)
  assert probe.variance_share(np.c_[roles, -roles] + np.repeat([[5.0, 0.0], [0.0, 5.0]], 50, axis=0), roles) == \
      pytest.approx(0.5 / 13.0)  # Per row, the role's 2 x 0.25 of a total 2 x (0.25 + 6.25).
  with pytest.raises(SystemExit) as exit_info:
    probe.main([f"--workdir={tmp_path / 'nothing'}"])
  assert exit_info.value.code == 2 and "holds no" in capsys.readouterr().err
  digits = exp.config.copy_and_resolve_references()
  digits.data.source = "tfds"  # The same model, trained on MNIST's digits: no scene captions to change.
  Experiment(digits, str(tmp_path / "digits")).write_params(exp.load_params()[0])
  with pytest.raises(SystemExit) as exit_info:
    probe.main([f"--workdir={tmp_path / 'digits'}"])
  assert exit_info.value.code == 2 and "trained on data.source = 'tfds'" in capsys.readouterr().err
