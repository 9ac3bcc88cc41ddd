"""The Colab notebook runs top to bottom on CPU with the tiny config injected through its parameters cell."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

from helpers.paths import REPO
from helpers.runs import classifier_overrides

papermill = pytest.importorskip("papermill")

NOTEBOOK = os.path.join(REPO, "notebooks", "glide_mnist_tpu.ipynb")


def test_committed_notebook_is_small_and_parameterised():
  assert os.path.getsize(NOTEBOOK) < 1_000_000
  with open(NOTEBOOK) as f:
    nb = json.load(f)
  tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
  assert len(tagged) == 1 and "CONFIG =" in "".join(tagged[0]["source"])


def test_notebook_executes_with_the_tiny_config(tmp_path, tiny_classifier_dir):
  workdir = tmp_path / "run"
  out = tmp_path / "executed.ipynb"
  # A papermill failure (any cell raising) raises PapermillExecutionError here, failing the test.
  papermill.execute_notebook(
      NOTEBOOK, str(out), cwd=os.path.join(REPO, "notebooks"), kernel_name="python3", progress_bar=False,
      parameters=dict(
          CONFIG="configs/tiny.py", WORKDIR=str(workdir), NUM_STEPS=10, GUIDANCE_SCALES=[0.0, 3.0],
          SAMPLE_RESPACING="5", EVAL_SAMPLES_PER_DIGIT=2, INPAINT_STEPS=2, CLIP_STEPS=2,
          CLIP_CONFIG="configs/tiny_clip.py", CLIP_GUIDANCE_SCALES=[0.0, 30.0],
          OVERRIDES=classifier_overrides(tiny_classifier_dir)))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10"]
  assert (workdir / "samples" / "guidance_sweep.png").is_file()
  with open(workdir / "eval" / "eval.json") as f:
    assert [r["guidance_scale"] for r in json.load(f)["results"]] == [0.0, 3.0]
  with open(out) as f:
    executed = json.load(f)
  images = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
  # The data preview, the guidance sweep, the evaluation plot, the edits and the CLIP-guided samples, inline.
  assert len(images) == 5
  assert sorted(os.listdir(str(workdir) + "_clip/clip_checkpoints")) == ["2"]
  assert os.path.isfile(str(workdir) + "_clip/clip_guided.png")
  assert sorted(os.listdir(str(workdir) + "_inpaint" + "/checkpoints")) == ["2"]
  assert os.path.isfile(str(workdir) + "_inpaint/edits/edit.png")
  text = "".join("".join(o.get("text", "")) for c in executed["cells"] if c["cell_type"] == "code"
                 for o in c.get("outputs", []))
  assert "trained to step 10" in text and "guidance" in text
  assert "Starting from the EMA parameters of" in text and "by the inpainting model" in text
  assert "Zero-shot accuracy on test[:256]" in text
  assert "mnist train[:512]: 512 images of (16, 16, 1)" in text and "classes zero, one, two" in text


# ---------------------------------------------------------------------------------------------------------
# The set-up cell in a simulated Colab: a stub google.colab module, Colab's own (older) JAX, an old tqdm.
# git and pip are recorded, not run; the "clone" links this checkout.

HARNESS = r'''
import json, os, subprocess, sys
sys.path.insert(0, "")  # As in a notebook kernel: the working directory is importable.
import google.colab  # Colab's kernel imports it at start.
calls = []

def fake_run(cmd, *args, **kwargs):
  calls.append(list(cmd))
  if cmd[0] == "git":  # A "clone" of links to this checkout's files: what the cell writes stays here.
    os.mkdir(cmd[-1])
    for name in os.listdir(os.environ["CHECKOUT"]):
      os.symlink(os.path.join(os.environ["CHECKOUT"], name), os.path.join(cmd[-1], name))
  return subprocess.CompletedProcess(cmd, 0)

subprocess.run = fake_run
params = json.loads(os.environ["PARAMS"])
namespace = dict(params)
try:
  exec(compile(open(os.environ["CELL"]).read(), "setup_cell", "exec"), namespace)
finally:
  print("CALLS " + json.dumps(calls))
  print("CHOSEN " + json.dumps({k: namespace.get(k) for k in ("CONFIG", "WORKDIR", "REPO")}))
'''


def _setup_cell() -> str:
  with open(NOTEBOOK) as f:
    cells = json.load(f)["cells"]
  return next("".join(c["source"]) for c in cells if c["cell_type"] == "code" and "IN_COLAB =" in "".join(c["source"]))


@pytest.fixture
def colab(tmp_path):
  """Runs the set-up cell as Colab would: {"calls", "chosen", "stdout", "stderr", "returncode"}."""
  site = tmp_path / "colab_site"
  (site / "google" / "colab").mkdir(parents=True)
  (site / "google" / "__init__.py").write_text("")
  (site / "google" / "colab" / "__init__.py").write_text("")
  (site / "google" / "colab" / "output.py").write_text("")  # JAX's Colab debugger imports it.
  for name, version in (("jax", "0.9.0"), ("tqdm", "4.0.0")):  # Found before the real ones on sys.path.
    dist = site / f"{name}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
  (tmp_path / "cell.py").write_text(_setup_cell())
  (tmp_path / "harness.py").write_text(HARNESS)
  content = tmp_path / "content"
  content.mkdir()

  def run(**params):
    params = {"CONFIG": "", "WORKDIR": "", "REPO_URL": "", **params}
    env = dict(os.environ, PYTHONPATH=str(site), CELL=str(tmp_path / "cell.py"), CHECKOUT=REPO,
               PARAMS=json.dumps(params))
    result = subprocess.run([sys.executable, str(tmp_path / "harness.py")], cwd=content, env=env,
                            capture_output=True, text=True, timeout=300)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(("CALLS ", "CHOSEN ")))
    return dict(calls=json.loads(lines["CALLS"]), chosen=json.loads(lines["CHOSEN"]), stdout=result.stdout,
                stderr=result.stderr, returncode=result.returncode)
  return run, content


def test_colab_setup_installs_only_what_colab_lacks_and_keeps_its_jax(colab):
  run, content = colab
  out = run(REPO_URL="https://example.invalid/glide-jax.git")
  assert out["returncode"] == 0, out["stderr"][-3000:]
  repo = str(content / "glide-jax")
  git, *pips = out["calls"]
  assert git == ["git", "clone", "--depth=1", "https://example.invalid/glide-jax.git", repo]
  pip = [sys.executable, "-m", "pip", "install", "-q"]
  constraints = pips[0][len(pip) + 1]
  assert pips == [pip + ["-c", constraints, "tqdm<5,>=4.70"], pip + ["--no-deps", "-e", repo]], pips
  # Only the old tqdm is replaced: no JAX, no test or notebook tools.
  with open(constraints) as f:
    assert f.read().splitlines() == ["jax==0.9.0", "jaxlib==0.10.2"]
  assert ("Keeping Colab's JAX 0.9.0 (built for this runtime); glide-jax is tested with jax<0.12,>=0.10.2"
          in out["stdout"])
  # On this CPU: mnist_cpu, in a workdir named after it.
  assert out["chosen"] == {"CONFIG": "configs/mnist_cpu.py", "WORKDIR": "runs/mnist_cpu", "REPO": repo}


def test_colab_setup_without_a_repository_says_what_to_do(colab):
  run, content = colab
  out = run()
  assert out["returncode"] != 0 and out["calls"] == []
  assert "Set REPO_URL in the parameters cell" in out["stderr"] and "glide-jax.zip" in out["stderr"]
  assert "Traceback" not in out["stderr"]


def test_colab_setup_takes_an_uploaded_zip(colab):
  run, content = colab
  with zipfile.ZipFile(content / "glide-jax.zip", "w") as archive:  # As GitHub's "Download ZIP": one folder.
    archive.write(os.path.join(REPO, "pyproject.toml"), "glide-jax-main/pyproject.toml")
    for root, _, files in os.walk(os.path.join(REPO, "glide_jax")):
      for name in files:
        if not name.endswith(".pyc"):
          path = os.path.join(root, name)
          archive.write(path, os.path.join("glide-jax-main", os.path.relpath(path, REPO)))
  out = run(CONFIG="configs/tiny.py")
  assert out["returncode"] == 0, out["stderr"][-3000:]
  repo = str(content / "glide-jax")
  assert [c[0] for c in out["calls"]] == [sys.executable, sys.executable]  # pip twice, no git.
  assert out["calls"][-1][-3:] == ["--no-deps", "-e", repo]
  assert out["chosen"] == {"CONFIG": "configs/tiny.py", "WORKDIR": "runs/tiny", "REPO": repo}
  assert os.path.isfile(os.path.join(repo, "glide_jax", "experiment.py"))
