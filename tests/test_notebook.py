"""The Colab notebook runs top to bottom on CPU with the tiny config injected through its parameters cell."""

import json
import os

import pytest

from helpers.paths import REPO

papermill = pytest.importorskip("papermill")

NOTEBOOK = os.path.join(REPO, "notebooks", "glide_mnist_tpu.ipynb")


def test_committed_notebook_is_small_and_parameterised():
  assert os.path.getsize(NOTEBOOK) < 1_000_000
  with open(NOTEBOOK) as f:
    nb = json.load(f)
  tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
  assert len(tagged) == 1 and "CONFIG =" in "".join(tagged[0]["source"])


def test_notebook_executes_with_the_tiny_config(tmp_path):
  workdir = tmp_path / "run"
  out = tmp_path / "executed.ipynb"
  # A papermill failure (any cell raising) raises PapermillExecutionError here, failing the test.
  papermill.execute_notebook(
      NOTEBOOK, str(out), cwd=os.path.join(REPO, "notebooks"), kernel_name="python3", progress_bar=False,
      parameters=dict(
          CONFIG="configs/tiny.py", WORKDIR=str(workdir), NUM_STEPS=10, GUIDANCE_SCALES=[0.0, 3.0],
          SAMPLE_RESPACING="5", EVAL_SAMPLES_PER_DIGIT=2, INPAINT_STEPS=2,
          OVERRIDES={"eval.classifier_dir": str(tmp_path / "classifier"),
                     "eval.classifier_train_split": "train[:1024]", "eval.classifier_steps": 60,
                     "eval.classifier_batch_size": 64}))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10"]
  assert (workdir / "samples" / "guidance_sweep.png").is_file()
  with open(workdir / "eval" / "eval.json") as f:
    assert [r["guidance_scale"] for r in json.load(f)["results"]] == [0.0, 3.0]
  with open(out) as f:
    executed = json.load(f)
  images = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
  # The data preview, the guidance sweep, the evaluation plot and the edits, shown inline.
  assert len(images) == 4
  assert sorted(os.listdir(str(workdir) + "_inpaint" + "/checkpoints")) == ["2"]
  assert os.path.isfile(str(workdir) + "_inpaint/edits/edit.png")
  text = "".join("".join(o.get("text", "")) for c in executed["cells"] if c["cell_type"] == "code"
                 for o in c.get("outputs", []))
  assert "trained to step 10" in text and "guidance" in text
  assert "Starting from the EMA parameters of" in text and "by the inpainting model" in text
  assert "mnist train[:512]: 512 images of (16, 16, 1)" in text and "classes zero, one, two" in text
