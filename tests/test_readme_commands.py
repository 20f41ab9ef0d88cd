"""Every command of README.md runs, on tiny settings (the table: ``tests/readme_commands.py``).

``test_every_readme_command_is_covered`` fails when the README has a command without a row (or
a row without its command), so a README edit cannot skip the test. ``test_readme_chain`` runs
the commands chain by chain (a chain's later commands use what its earlier ones wrote: the demo
run, the converted checkpoints), each as a subprocess in a scratch workspace that stands in for
the user's checkout; the ```python block runs in-process.
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests import readme_commands as rc
from tests.conftest import FIXTURES, REPO
from tests.util import FAST_COMPILE

README = REPO / "README.md"
CI_RUN = REPO / ".ci" / "run"
CHAINS = ("demo", "convert", "train", "scale", "installed")
LINKED = ("main.py", "convert_torch_weights.py", "configs")  # the checkout, as the user has it
COPIED = {  # workspace name -> fixture file (see rc.WORKSPACE_FILES)
  "k400_uniformerv2_b16_8x224.pyth": "tiny_k400/model.pth",
  "model.pth": "tiny_k400/model.pth",
  "config.json": "tiny_k400/config.json",
  "input.npy": "tiny_k400/input.npy",
  "logits.npy": "tiny_k400/logits.npy",
  "features.npy": "tiny_k400/features.npy",
  "mmaction2_uniformerv2.pth": "tiny_k400_mmaction2/model.pth",
  "ViT-B-16.pt": "tiny_clip/clip.pth",
  "timm/vit_base_patch16_224.augreg_in21k": "towers/supervised",
  "timm/deit_base_patch16_224": "towers/deit",
  "timm/vit_base_patch14_dinov2": "towers/dinov2",
  "mae_pretrain_vit_base.pth": "towers/mae_official/mae_pretrain.pth",
}


def _readme() -> str:
  return README.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- coverage
def test_parser_joins_continuations_and_splits_chains():
  block = ("# a comment line\n"
           "python a.py --x 1 \\\n    --y 2   # trailing comment\n"
           "a && b --q \"c && d # not a comment\"\n")
  assert rc.shell_commands(block) == ["python a.py --x 1 --y 2", "a",
                                      'b --q "c && d # not a comment"']
  md = "# T\n\n```bash\nls\n```\n\n## Py\n```python\nx = 1\n```\n"
  assert [(b.lang, b.heading, b.text) for b in rc.blocks(md)] == [("bash", "T", "ls"),
                                                                  ("python", "Py", "x = 1")]


def test_every_readme_command_is_covered():
  text = _readme()
  found = [c for _, c in rc.readme_commands(text)]
  missing = [c for c in found if c not in rc.COMMANDS]
  assert not missing, ("README commands without a row in tests/readme_commands.py COMMANDS "
                       "(add how the test runs them on tiny settings):\n  " + "\n  ".join(missing))
  stale = [c for c in rc.COMMANDS if c not in found]
  assert not stale, "COMMANDS rows whose command is no longer in the README:\n  " + \
    "\n  ".join(stale)
  headings = [b.heading for b in rc.blocks(text) if b.lang == "python"]
  assert sorted(headings) == sorted(rc.PYTHON_BLOCKS), (
    f"README python blocks under {headings}; PYTHON_BLOCKS has {sorted(rc.PYTHON_BLOCKS)}")
  ctx = {"ws": "WS", "tiny": "TINY", "demo": "DEMO", "k400": "K400", "ucf101": "UCF101"}
  ci = CI_RUN.read_text()
  for command, row in rc.COMMANDS.items():
    if isinstance(row, rc.InCI):
      assert row.witness in ci.splitlines(), f"{command!r}: {row.witness!r} not in .ci/run"
      continue
    assert row.chain in CHAINS, (command, row.chain)
    new, _ = rc.apply(command, row, ctx)  # every replacement still finds its README text
    assert shlex.split(new)[0] in ("python", "python3"), new
  assert "-r requirements.txt" in (REPO / "requirements-dev.txt").read_text().splitlines()


# ----------------------------------------------------------------------------- workspace
class Context(dict):
  """Placeholder values; the generated datasets are made on first use."""

  def __init__(self, ws: Path):
    super().__init__(ws=str(ws), tiny=str(REPO / "tests" / "readme_tiny_config.py"))
    self.root = ws

  def __missing__(self, key: str) -> str:
    from uniformerv2_jax.data import demo_dataset

    if key not in ("demo", "k400", "ucf101"):
      raise KeyError(key)
    root = self.root / "data" / key
    if key == "ucf101":
      from tests.fake_archives import make_ucf101

      make_ucf101(str(root))
      self[key] = str(root)
      return self[key]
    demo_dataset.generate(str(root), seed=1, train_per_class=2, val_per_class=1)
    if key == "k400":  # the K400 layout has a test split for --mode eval
      shutil.copy(root / "val.csv", root / "test.csv")
    self[key] = str(root)
    return self[key]


def _frames(h: int, w: int, t: int, seed: int) -> np.ndarray:
  """A moving gradient with noise: any content decodes; sizes differ per video."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w]
  grad = np.stack([(xx * (i + 1) + yy * 2) % 256 for i in range(t)])[..., None]
  return np.clip(grad + rng.normal(0, 8, (t, h, w, 3)), 0, 255).astype(np.uint8)


def _hf_vit(folder) -> None:
  """A tiny random ViTModel in the google/vit-base-patch16-224-in21k layout (with its pooler)."""
  import torch
  from transformers import ViTConfig, ViTModel

  torch.manual_seed(0)
  ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, image_size=32, patch_size=16)).save_pretrained(folder)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Context:
  from uniformerv2_jax import checkpoint, load_official
  from uniformerv2_jax.data.demo_dataset import write_mp4

  ws = tmp_path_factory.mktemp("readme")
  for name in LINKED:
    (ws / name).symlink_to(REPO / name)
  for name, src in COPIED.items():
    (ws / name).parent.mkdir(parents=True, exist_ok=True)
    if (FIXTURES / src).is_dir():
      shutil.copytree(FIXTURES / src, ws / name)
    else:
      shutil.copy(FIXTURES / src, ws / name)
  _hf_vit(ws / "google" / "vit-base-patch16-224-in21k")
  k400 = FIXTURES / "tiny_k400"
  checkpoint.save_model(ws / "ckpt_dir", load_official(k400 / "model.pth", k400 / "config.json"))
  write_mp4(str(ws / "my_video.mp4"), _frames(48, 64, 12, 0), fps=10)
  (ws / "videos").mkdir()
  write_mp4(str(ws / "videos" / "a.mp4"), _frames(40, 56, 20, 1), fps=8)
  write_mp4(str(ws / "videos" / "b.mp4"), _frames(64, 48, 9, 2), fps=12)
  (ws / "list.csv").write_text("my_video.mp4,3\nvideos/b.mp4,1\n")
  return Context(ws)


def _children_cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def _subprocess(argv: list[str], ctx: Context, extra_env: dict[str, str], what: str,
                files: tuple[str, ...] = (), output: tuple[str, ...] = ()) -> None:
  """Run ``argv`` in the workspace; it must exit 0, write ``files`` and print ``output``."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
         # Commands compile the same computations again (a verify's two forwards, the final
         # eval of a run and its --mode eval, predict twice on one model): JAX's persistent
         # cache turns the repeats into loads.
         "JAX_COMPILATION_CACHE_DIR": str(ctx.root / ".jax_cache")}
  # XLA:CPU spends most of a tiny train step's compile (~40 s under load) in LLVM
  # optimisation; a few steps of a toy model run as fast without it (compile ~10 s).
  flags = [FAST_COMPILE, extra_env.get("XLA_FLAGS", "")]
  env.update(extra_env, XLA_FLAGS=" ".join(f for f in flags if f))
  t0, cpu0 = time.time(), _children_cpu()
  out = subprocess.run(argv, cwd=ctx.root, env=env, capture_output=True, text=True, timeout=600)
  log = out.stdout + out.stderr
  where = (f"{what}\nran:    {shlex.join(argv[1:])}\nexit {out.returncode} after "
           f"{time.time() - t0:.0f} s; output tail:\n{log[-4000:]}")
  assert out.returncode == 0, where
  # Shown with -s: where the time goes (CPU seconds depend less on the machine's load).
  print(f"{time.time() - t0:5.1f} s wall {_children_cpu() - cpu0:5.1f} s cpu  {what}")
  for path in files:
    assert (ctx.root / path).exists(), f"{path} not written\n{where}"
  for needle in output:
    assert needle in log, f"{needle!r} not printed\n{where}"


def _run(command: str, row: rc.Run, ctx: Context) -> None:
  text, extra = rc.apply(command, row, ctx)
  argv = shlex.split(text) + extra
  assert argv[0] in ("python", "python3"), argv
  _subprocess([sys.executable, *argv[1:]], ctx, dict(row.env), f"README: {command}",
              row.files, row.output)


def _run_python(heading: str, code: str, block: rc.PythonBlock, ctx: Context) -> None:
  """The block as a script between the prelude and the checks, run like the commands."""
  script = ctx.root / ("readme_block_" + re.sub(r"\W+", "_", heading).lower() + ".py")
  script.write_text(f"{block.prelude}\n# ---- README.md, {heading}\n{code}\n# ---- checks\n"
                    f"{block.check}\nprint('README block ran')\n")
  _subprocess([sys.executable, str(script)], ctx, {}, f"README python block {heading!r}",
              output=("README block ran",))


@pytest.mark.parametrize("chain", CHAINS)
def test_readme_chain(chain, workspace):
  steps = []
  for b, command in rc.readme_commands(_readme()):
    row = rc.COMMANDS.get(command)
    if isinstance(row, rc.Run) and row.chain == chain:
      steps.append((b.line, command, row))
  for b in rc.blocks(_readme()):
    block = rc.PYTHON_BLOCKS.get(b.heading)
    if b.lang == "python" and block is not None and block.chain == chain:
      steps.append((b.line, b, block))
  assert steps, f"no README command in chain {chain!r}"
  for _, what, row in sorted(steps, key=lambda s: s[0]):
    if isinstance(row, rc.PythonBlock):
      _run_python(what.heading, what.text, row, workspace)
    else:
      _run(what, row, workspace)
  if chain == "convert":  # the extracted features: one row per list entry, both readable
    z = np.load(workspace.root / "feats.npz")
    assert z["features"].shape == (2, 64) and not np.isnan(z["features"]).any()
