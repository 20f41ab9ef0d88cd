"""The README's commands and how ``tests/test_readme_commands.py`` runs each on tiny settings.

``shell_commands`` extracts every command of every ```bash block of README.md (``\\``
continuations joined, comments dropped, whitespace collapsed, top-level ``&&`` chains split into
their parts). ``COMMANDS`` maps each such command, exactly as it reads there, to either

* :class:`Run`: the command is run in a scratch workspace (a stand-in for the user's checkout:
  ``main.py``, ``convert_torch_weights.py`` and ``configs/`` linked from the repository, the
  files of ``WORKSPACE_FILES`` beside them) after the listed textual replacements, with the
  listed arguments appended; ``python``/``python3`` is this interpreter. It must exit 0 and
  leave the listed files / print the listed text. Or
* :class:`InCI`: a fresh-machine setup step that CI itself performs (``.ci/run`` holds the
  witness line), so the test does not repeat it (no new venv, no recursive pytest).

A README command missing from ``COMMANDS`` fails the test, and so does an entry whose README
command is gone or whose replacement text no longer occurs in it. ``PYTHON_BLOCKS`` does the
same for the ```python blocks (keyed by their section heading): each block is executed as
written, in the workspace, with the names it leaves to the reader defined by a prelude.

Placeholders in replacements and appended arguments: ``{ws}`` the workspace, ``{tiny}``
``tests/readme_tiny_config.py``, ``{demo}`` the generated demo dataset, ``{k400}`` a generated
list-file dataset in the K400 layout (``train.csv``/``val.csv``/``test.csv`` + videos),
``{ucf101}`` a 3-class UCF-101 archive with its official split files.
"""

from __future__ import annotations

import dataclasses
import re


# ----------------------------------------------------------------------------- the table
@dataclasses.dataclass(frozen=True)
class Run:
  """Run the command (after ``replace``, plus ``append``) in the workspace."""

  chain: str  # commands of one chain run in README order in one test (later ones use outputs)
  replace: tuple[tuple[str, str], ...] = ()  # (README text, tiny stand-in), applied in order
  append: tuple[str, ...] = ()  # extra arguments: fewer steps, the tiny dataset's root
  env: tuple[tuple[str, str], ...] = ()  # extra environment variables
  files: tuple[str, ...] = ()  # workspace paths that must exist afterwards
  output: tuple[str, ...] = ()  # text that must appear in stdout + stderr


@dataclasses.dataclass(frozen=True)
class InCI:
  """A setup step that CI performs itself: ``witness`` is the ``.ci/run`` line doing it."""

  witness: str
  why: str


@dataclasses.dataclass(frozen=True)
class PythonBlock:
  """Execute the block in the workspace between ``prelude`` (defines the names the README
  leaves to the reader) and ``check`` (asserts on what the block computed)."""

  chain: str
  prelude: str
  check: str


# Files the README names, as the test provides them (paths under tests/fixtures, or how the
# test makes them).
WORKSPACE_FILES = {
  "k400_uniformerv2_b16_8x224.pyth": "fixture tiny_k400/model.pth (official flat state dict)",
  "model.pth": "fixture tiny_k400/model.pth",
  "config.json": "fixture tiny_k400/config.json (official config schema)",
  "mmaction2_uniformerv2.pth": "fixture tiny_k400_mmaction2/model.pth (MMAction2 layout)",
  "ViT-B-16.pt": "fixture tiny_clip/clip.pth (OpenAI CLIP state dict, fp16 tensors)",
  "input.npy, logits.npy, features.npy": "fixture tiny_k400/ (clip and expected outputs)",
  "ckpt_dir/": "the tiny_k400 model saved with checkpoint.save_model",
  "my_video.mp4": "a generated 12-frame 48x64 H.264 clip",
  "videos/": "two generated clips (different sizes and lengths)",
  "list.csv": "official list lines: my_video.mp4,3 and videos/b.mp4,1",
  "timm/vit_base_patch16_224.augreg_in21k, timm/deit_base_patch16_224, "
  "timm/vit_base_patch14_dinov2": "fixtures towers/supervised, deit, dinov2 (timm folders)",
  "mae_pretrain_vit_base.pth": "fixture towers/mae_official/mae_pretrain.pth",
  "google/vit-base-patch16-224-in21k": "a tiny random transformers ViTModel (save_pretrained)",
  "{demo}": "demo dataset, demo_dataset.generate(train_per_class=2, val_per_class=1)",
  "{k400}": "the same generator (10 classes) plus test.csv = val.csv",
  "{ucf101}": "a 3-class UCF-101 archive in the official layout (tests/fake_archives.py)",
}

TRAIN_STEPS = "--config.total_steps=2"

COMMANDS: dict[str, Run | InCI] = {
  # -- Two commands on a fresh machine
  "python3 -m venv .venv": InCI("python3 -m venv .venv", "CI creates the venv"),
  ". .venv/bin/activate": InCI(". .venv/bin/activate", "CI activates it"),
  "pip install -r requirements.txt": InCI(
    "pip install -q -r requirements-dev.txt", "requirements-dev.txt includes requirements.txt"),
  "python main.py --config configs/demo.py --workdir demo_run": Run(
    "demo", append=("--config.dataset.root={demo}", TRAIN_STEPS),
    files=("demo_run/metrics.jsonl", "demo_run/eval_results.json",
           "demo_run/training_curves.png", "demo_run/checkpoints", "demo_run/hub/README.md"),
    output=('"final_eval"',)),
  "pip install -r requirements-dev.txt": InCI(
    "pip install -q -r requirements-dev.txt", "CI installs the test requirements"),
  "pip install --no-deps -r requirements-onnx.txt": InCI(
    "pip install -q --no-deps -r requirements-onnx.txt", "CI installs the ONNX converter"),
  "python -m pytest -q -n 2 tests": InCI(
    "python -m pytest -q -n 2 tests", "this very test suite: not run recursively"),
  "python -m pytest -q tests/test_gcs.py": InCI(
    "python -m pytest -q -n 2 tests", "part of this very test suite: not run recursively"),
  "apt-get install -y chromium chromium-driver": InCI(
    "  || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }",
    "CI installs the browser test's Chromium and chromedriver"),
  "python main.py --mode eval --config configs/demo.py --checkpoint demo_run": Run(
    "demo", append=("--config.dataset.root={demo}",), output=('"top1"',)),
  "python main.py --mode predict --checkpoint demo_run --input "
  "~/.cache/uniformerv2_jax/demo/val": Run(
    "demo", replace=(("~/.cache/uniformerv2_jax/demo", "{demo}"),),
    output=("10 of 10 videos processed", "move_")),
  # A server that runs until stopped: tests/test_app_browser.py starts it (on a tiny checkpoint)
  # and drives it in headless Chromium.
  "python -m uniformerv2_jax.app --checkpoint demo_run": InCI(
    "python -m pytest -q -n 2 tests", "tests/test_app_browser.py runs the app"),
  "python -m uniformerv2_jax.app --checkpoint demo_run --port 7860 --host 127.0.0.1": InCI(
    "python -m pytest -q -n 2 tests", "tests/test_app_browser.py runs the app"),
  # -- Installed as a package (the command's code, run from the checkout as python -m)
  "uniformerv2-jax recipes": Run(
    "installed", replace=(("uniformerv2-jax", "python -m uniformerv2_jax"),),
    output=("k400:b16_8x224", "ucf101:b16_8x224", "demo")),
  "uniformerv2-jax train --config demo --workdir runs/demo": Run(
    "installed", replace=(("uniformerv2-jax", "python -m uniformerv2_jax"),),
    append=("--config.dataset.root={demo}", TRAIN_STEPS),
    files=("runs/demo/checkpoints/2",), output=('"final_eval"',)),
  "uniformerv2-jax convert --input k400_uniformerv2_b16_8x224.pyth --output k400_b16.ckpt "
  "--config k400:b16_8x224": Run(
    "installed", replace=(("uniformerv2-jax", "python -m uniformerv2_jax"),
                          ("k400:b16_8x224", "{tiny}:k400:b16_8x224:tiny_k400")),
    files=("k400_b16.ckpt/0",)),
  "uniformerv2-jax predict --checkpoint k400_b16.ckpt --input my_video.mp4": Run(
    "installed", replace=(("uniformerv2-jax", "python -m uniformerv2_jax"),),
    output=("1 of 1 videos processed",)),
  # -- Converting weights
  "python convert_torch_weights.py --input k400_uniformerv2_b16_8x224.pyth --output "
  "ckpt/k400_b16 --config configs/k400.py:b16_8x224 --verify": Run(
    "convert", replace=(("configs/k400.py:b16_8x224", "{tiny}:k400:b16_8x224:tiny_k400"),),
    files=("ckpt/k400_b16",), output=("PASS",)),
  "python convert_torch_weights.py --input model.pth --output ckpt/tiny --official-config "
  "config.json": Run("convert", files=("ckpt/tiny",)),
  "python convert_torch_weights.py --input mmaction2_uniformerv2.pth --output ckpt/mm "
  "--verify": Run("convert", files=("ckpt/mm",), output=("PASS",)),
  "python convert_torch_weights.py --input ViT-B-16.pt --output ckpt/clip_b16 --config "
  "configs/k400.py:b16_8x224 --clip-activation quick_gelu": Run(
    "train", replace=(("configs/k400.py:b16_8x224", "{tiny}:k400:b16_8x224:tiny_clip"),),
    files=("ckpt/clip_b16",)),
  "python convert_torch_weights.py --input timm/vit_base_patch16_224.augreg_in21k --output "
  "ckpt/vit_in21k --config configs/k400.py:b16_8x224": Run(
    "convert", replace=(("configs/k400.py:b16_8x224", "{tiny}:k400:b16_8x224:tiny_tower"),),
    files=("ckpt/vit_in21k/0",), output=("tower: supervised",)),
  "python convert_torch_weights.py --input timm/deit_base_patch16_224 --output ckpt/deit "
  "--config configs/k400.py:b16_8x224": Run(
    "convert", replace=(("configs/k400.py:b16_8x224", "{tiny}:k400:b16_8x224:tiny_tower"),),
    files=("ckpt/deit/0",), output=("tower: deit",)),
  "python convert_torch_weights.py --input mae_pretrain_vit_base.pth --output ckpt/mae --config "
  "configs/k400.py:b16_8x224 --timm-model vit_base_patch16_224.mae": Run(
    "convert", replace=(("configs/k400.py:b16_8x224", "{tiny}:k400:b16_8x224:tiny_tower"),),
    files=("ckpt/mae/0",), output=("tower: mae", "antialiased")),
  "python convert_torch_weights.py --input timm/vit_base_patch14_dinov2 --output ckpt/dinov2 "
  "--config configs/k400.py:b16_8x224 --config.model.patch_size=14": Run(
    "convert", replace=(("configs/k400.py:b16_8x224", "{tiny}:k400:b16_8x224:tiny_dinov2"),),
    files=("ckpt/dinov2/0",), output=("tower: dinov2", "layer_scale True",
                                      "--config.model.layer_scale=True")),
  "python convert_torch_weights.py --input google/vit-base-patch16-224-in21k --output "
  "ckpt/hf_vit --config configs/k400.py:b16_8x224": Run(
    "convert", replace=(("configs/k400.py:b16_8x224", "{tiny}:k400:b16_8x224:tiny_tower"),),
    files=("ckpt/hf_vit/0",), output=("tower: hf_vit", "layer_norm_eps 1e-12")),
  "python convert_torch_weights.py --input ckpt/k400_b16 --output k400_b16.pyth": Run(
    "convert", files=("k400_b16.pyth",)),
  "python convert_torch_weights.py --input ckpt/k400_b16 --output k400_b16.safetensors": Run(
    "convert", files=("k400_b16.safetensors",)),
  "python convert_torch_weights.py --input ckpt/k400_b16 --output mm.pth --format mmaction2":
  Run("convert", files=("mm.pth",)),
  "python convert_torch_weights.py --input ckpt/k400_b16 --output hub/k400_b16 --format hub "
  "--verify": Run("convert", files=("hub/k400_b16/README.md", "hub/k400_b16/model.safetensors"),
                  output=("PASS",)),
  # -- Exported for serving (the tiny_k400 model converted in this chain)
  "python main.py --mode export --checkpoint ckpt/k400_b16 --output k400_b16.jax": Run(
    "convert", files=("k400_b16.jax",), output=("platforms cpu, cuda, tpu",)),
  "python main.py --mode predict --checkpoint k400_b16.jax --input my_video.mp4": Run(
    "convert", output=("1 of 1 videos processed",)),
  # -- Training and evaluation
  "python main.py --config configs/k400.py:b16_8x224 --workdir gs://bucket/k400_b16 "
  "--config.dataset.root=/data/k400 --config.init_from=ckpt/clip_b16": Run(
    "train", replace=(("configs/k400.py:b16_8x224", "{tiny}:k400:b16_8x224:tiny_clip"),
                      ("gs://bucket/", "{ws}/bucket/"), ("/data/k400", "{k400}")),
    append=(TRAIN_STEPS,), files=("bucket/k400_b16/checkpoints",),
    output=('"final_eval"',)),
  "python main.py --mode eval --config configs/k400.py:b16_8x224 --checkpoint "
  "gs://bucket/k400_b16 --config.dataset.root=/data/k400": Run(
    "train", replace=(("configs/k400.py:b16_8x224", "{tiny}:k400:b16_8x224:tiny_clip"),
                      ("gs://bucket/", "{ws}/bucket/"), ("/data/k400", "{k400}")),
    output=('"top1"',)),
  # -- Fine-tune on UCF-101 / HMDB-51 (tiny_k400's model fine-tuned on a 3-class archive)
  "python main.py --config configs/ucf101.py:b16_8x224 --workdir runs/ucf101_split1 "
  "--config.dataset.root=/data/ucf101 --config.init_from=ckpt/k400_b16": Run(
    "convert", replace=(("configs/ucf101.py:b16_8x224", "{tiny}:ucf101:b16_8x224:tiny_k400"),
                        ("/data/ucf101", "{ucf101}")),
    append=("--config.model.num_classes=3", TRAIN_STEPS),
    files=("runs/ucf101_split1/checkpoints",), output=('"final_eval"',)),
  "python main.py --mode eval --config configs/ucf101.py:b16_8x224 "
  "--config.dataset.root=/data/ucf101 --checkpoint 'runs/ucf101_split{split}' "
  "--eval_splits 1,2,3": Run(
    "convert", replace=(("configs/ucf101.py:b16_8x224", "{tiny}:ucf101:b16_8x224:tiny_k400"),
                        ("/data/ucf101", "{ucf101}"),
                        # one trained split stands in for each split's run
                        ("'runs/ucf101_split{split}'", "runs/ucf101_split1")),
    append=("--config.model.num_classes=3",), output=('"split": 3', '"mean_top1"')),
  # -- ArrayRecord shards (Beam's DirectRunner in this process: worker processes start in ~10 s)
  "python -m uniformerv2_jax.data.prepare --list /data/k400/train.csv --prefix /data/k400 "
  "--out shards/train --format jpeg": Run(
    "train", replace=(("/data/k400", "{k400}"),), append=("--direct_running_mode=in_memory",),
    files=("shards/train/index.json", "shards/train/errors.jsonl"),
    output=("wrote 1 shard(s) to shards/train", "0 errors")),
  # -- Sharding: the launchers run the inner command on every host; here it runs once, on 4
  # simulated CPU devices (what one TPU VM worker of a v4-32 slice shows for fsdp=4).
  'gcloud compute tpus tpu-vm ssh NAME --worker=all --command "cd uniformerv2_jax && python '
  'main.py --config configs/k400.py:l14_8x224_k710 --workdir gs://bucket/run '
  '--config.mesh.fsdp=4"': Run(
    "scale", replace=(('gcloud compute tpus tpu-vm ssh NAME --worker=all --command "cd '
                       'uniformerv2_jax && ', ""),  # the workspace is the checkout
                      ('--config.mesh.fsdp=4"', "--config.mesh.fsdp=4"),
                      ("configs/k400.py:l14_8x224_k710", "{tiny}:k400:l14_8x224_k710"),
                      ("gs://bucket/", "{ws}/bucket/")),
    append=("--config.dataset.root={k400}", TRAIN_STEPS),
    env=(("XLA_FLAGS", "--xla_force_host_platform_device_count=4"),),
    files=("bucket/run/checkpoints",), output=('"final_eval"',)),
  "srun --nodes=4 --ntasks-per-node=1 python main.py --config configs/k400.py:l14_8x224_k710 "
  "--workdir /shared/run": Run(
    "scale", replace=(("srun --nodes=4 --ntasks-per-node=1 ", ""),
                      ("configs/k400.py:l14_8x224_k710", "{tiny}:k400:l14_8x224_k710"),
                      ("/shared/run", "{ws}/shared/run")),
    append=("--config.dataset.root={k400}", TRAIN_STEPS),
    files=("shared/run/checkpoints",), output=('"final_eval"',)),
  # -- Predicting and extracting
  "python main.py --mode predict --checkpoint ckpt/k400_b16 --input my_video.mp4 --topk 5":
  Run("convert", output=("my_video.mp4", " 5. ", "1 of 1 videos processed")),
  "python main.py --mode predict --checkpoint demo_run --input videos/ --output "
  "predictions.json": Run("demo", files=("predictions.json",),
                          output=("2 of 2 videos processed",)),
  "python main.py --mode extract --checkpoint ckpt/k400_b16 --input list.csv --output "
  "feats.npz --extract_all": Run("convert", files=("feats.npz",),
                                 output=("2 of 2 videos processed", "block_cls")),
  # One process here (srun dropped): --merge has no parts to join and the output is written as
  # without it; two processes: tests/test_multihost_predict.py.
  "srun --nodes=4 --ntasks-per-node=1 python main.py --mode extract --checkpoint ckpt/k400_b16 "
  "--input list.csv --output /shared/feats.npz --merge": Run(
    "convert", replace=(("srun --nodes=4 --ntasks-per-node=1 ", ""),
                        ("/shared/feats.npz", "{ws}/shared/feats.npz")),
    files=("shared/feats.npz",), output=("2 of 2 videos processed",)),
  # -- Memory plan
  "python main.py --mode plan --config configs/k400.py:l14_64x336_k710 "
  "--config.remat_policy=full --config.precision=bfloat16 --config.batch_size=1 "
  "--device_memory_gb 80": Run(
    "scale", replace=(("configs/k400.py:l14_64x336_k710", "{tiny}:k400:l14_64x336_k710"),),
    output=("total / device", '"fits": true')),
}

PYTHON_BLOCKS: dict[str, PythonBlock] = {
  "Using the model from Python": PythonBlock(
    "convert",
    prelude=("import json, numpy as np\n"
             "official_config = json.load(open('config.json'))\n"
             "# the fixture's clip, [B, C, T, H, W] -> [B, T, H, W, 3]\n"
             "x = np.load('input.npy').transpose(0, 2, 3, 4, 1)\n"),
    check=("want = np.load('logits.npy')\n"
           "np.testing.assert_allclose(np.asarray(logits), want, atol=1e-4)\n"
           "np.testing.assert_allclose(np.asarray(feats), np.load('features.npy'), atol=1e-4)\n"
           "assert {'stem', 'block_00', 'global_00', 'fused'} <= set(inter), sorted(inter)\n"
           "np.testing.assert_allclose(np.asarray(model(x)), want, atol=1e-4)  # ckpt_dir\n")),
}


# ----------------------------------------------------------------------------- parsing
@dataclasses.dataclass(frozen=True)
class Block:
  lang: str
  heading: str
  line: int  # 1-based line of the opening fence
  text: str


def blocks(markdown: str) -> list[Block]:
  """Fenced code blocks with their language and the nearest heading above them."""
  out, heading, lang, start, body = [], "", None, 0, []
  for i, line in enumerate(markdown.splitlines(), start=1):
    if lang is None:
      if line.startswith("#"):
        heading = line.lstrip("#").strip()
      m = re.match(r"^```(\w*)\s*$", line)
      if m:
        lang, start, body = m.group(1), i, []
    elif line.strip() == "```":
      out.append(Block(lang, heading, start, "\n".join(body)))
      lang = None
    else:
      body.append(line)
  if lang is not None:
    raise ValueError(f"README: unclosed code block at line {start}")
  return out


def _unquoted(text: str):
  """(index, char, inside_quotes) for each character, shell-style quotes."""
  quote = None
  for i, ch in enumerate(text):
    if quote is None and ch in "'\"":
      quote = ch
      yield i, ch, True
      continue
    if ch == quote:
      quote = None
      yield i, ch, True
      continue
    yield i, ch, quote is not None


def strip_comment(line: str) -> str:
  """The line without a shell comment (``#`` at the start or after a blank, not quoted)."""
  for i, ch, quoted in _unquoted(line):
    if ch == "#" and not quoted and (i == 0 or line[i - 1].isspace()):
      return line[:i]
  return line


def split_and(command: str) -> list[str]:
  """The parts of a top-level ``a && b`` chain (an ``&&`` inside quotes stays)."""
  parts, last = [], 0
  for i, ch, quoted in _unquoted(command):
    if ch == "&" and not quoted and command[i:i + 2] == "&&" and i >= last:
      parts.append(command[last:i].strip())
      last = i + 2
  parts.append(command[last:].strip())
  return [p for p in parts if p]


def shell_commands(block: str) -> list[str]:
  """The commands of a bash block: continuations joined, comments dropped, ``&&`` split."""
  out, pending = [], ""
  for raw in block.splitlines():
    line = strip_comment(raw).rstrip()
    if line.endswith("\\"):
      pending += line[:-1] + " "
      continue
    full = " ".join((pending + line).split())
    pending = ""
    if full:
      out.extend(split_and(full))
  if pending.strip():
    out.extend(split_and(" ".join(pending.split())))
  return out


def readme_commands(markdown: str) -> list[tuple[Block, str]]:
  """Every (block, command) of the README's bash blocks, in order."""
  return [(b, c) for b in blocks(markdown) if b.lang in ("bash", "sh", "shell", "console")
          for c in shell_commands(b.text)]


def apply(command: str, run: Run, ctx: dict[str, str]) -> tuple[str, list[str]]:
  """The command after ``run.replace`` and the appended arguments (placeholders filled).

  Raises ``KeyError`` naming a replacement whose README text is not in the command."""
  for old, new in run.replace:
    if old not in command:
      raise KeyError(f"replacement {old!r} does not occur in {command!r}")
    command = command.replace(old, new.format_map(ctx))
  return command, [a.format_map(ctx) for a in run.append]
