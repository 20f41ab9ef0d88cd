"""A folder ready for a model hub: the weights in the official key layout, the config, the class
names and a model card.

    python convert_torch_weights.py --input CKPT --output DIR --format hub

``DIR/model.safetensors``  the official flat state dict (``backbone.*``; PyTorch users load it
                           with ``load_state_dict(strict=True)``), our model config in its
                           metadata;
``DIR/config.json``        the model in the official config names (``MODEL``, ``DATA``,
                           ``UNIFORMERV2``, ``backbone_arch``), this package's model config and
                           the test views;
``DIR/labels.txt``         one class name per line (when the checkpoint knows them);
``DIR/README.md``          the model card: architecture, input, views, the measured top-1 with
                           the command that measured it (a training workdir's last eval), and
                           how to load it in JAX and in the official code.

``uniformerv2_jax.load_checkpoint(DIR)`` reads the folder back (bit-exact), and so do
``--mode predict`` and the converter.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from uniformerv2_jax import storage
from uniformerv2_jax.errors import InputError

WEIGHTS, CONFIG, LABELS, CARD = "model.safetensors", "config.json", "labels.txt", "README.md"
MARKER = "uniformerv2_jax"  # the config.json key that marks a folder as ours


def is_hub_folder(directory: str | Path) -> bool:
  d = Path(str(directory))
  if storage.is_url(directory) or not (d / WEIGHTS).is_file() or not (d / CONFIG).is_file():
    return False
  try:
    return MARKER in json.loads((d / CONFIG).read_text())
  except (OSError, ValueError):
    return False


def load_hub(directory: str | Path, **overrides):
  """The model of a hub folder, in eval mode (``overrides``: implementation fields such as
  ``dtype``, as ``load_checkpoint`` takes them)."""
  from uniformerv2_jax.checkpoint import config_from_json
  from uniformerv2_jax.convert import import_model

  d = Path(directory)
  config = json.loads((d / CONFIG).read_text())[MARKER]
  cfg = config_from_json(config["model"], **overrides)
  return import_model(d / WEIGHTS, cfg, "official").model


def read_hub_config(directory: str | Path) -> dict[str, Any]:
  """What ``checkpoint.read_config`` gives for an Orbax directory: the model config and the
  rest the writer recorded (labels, views)."""
  return json.loads((Path(directory) / CONFIG).read_text())[MARKER]


def write_hub(checkpoint: str, out: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
  """Write the hub folder of ``checkpoint`` (an Orbax directory or training workdir) to
  ``out``. Returns the ``config.json`` written."""
  from uniformerv2_jax import convert, predict
  from uniformerv2_jax.checkpoint import config_to_json, read_config
  from uniformerv2_jax.model import count_params
  from uniformerv2_jax.variants import official_from_config

  out = Path(out)
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    if not overwrite or not is_hub_folder(out):
      raise InputError(f"{out} exists and is not empty" + (
        "; pass --overwrite to replace it" if not overwrite else
        " and is not a hub folder written here; refusing to replace it"))
  prepared = predict.prepare(checkpoint)
  model, views = prepared.model, prepared.views
  cfg = model.cfg
  info = read_config(checkpoint)
  results = _eval_results(checkpoint)
  ours = {"model": config_to_json(cfg), "views": dataclasses.asdict(views),
          "labels": prepared.names, "source": str(checkpoint)}
  if results is not None:
    ours["eval"] = results
  config = {**official_from_config(cfg), MARKER: ours}
  out.mkdir(parents=True, exist_ok=True)
  sd = convert.export_state(model)
  convert.write_state(out / WEIGHTS, sd, cfg, "official",
                      meta={"format": "pt", "source": str(checkpoint)})
  (out / CONFIG).write_text(json.dumps(config, indent=1))
  if prepared.names:
    (out / LABELS).write_text("\n".join(prepared.names) + "\n")
  elif (out / LABELS).exists():
    (out / LABELS).unlink()
  (out / CARD).write_text(model_card(cfg, views, prepared.names, results, info,
                                     count_params(model), out.name,
                                     workdir=str(checkpoint) if results is not None else None))
  return config


def _eval_results(checkpoint: str) -> dict[str, Any] | None:
  """A training workdir's last ``eval_results.json`` (top-1 etc.), if ``checkpoint`` is one."""
  path = Path(str(checkpoint)) / "eval_results.json"
  if storage.is_url(checkpoint) or not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def model_card(cfg, views, names: list[str] | None, results: dict[str, Any] | None,
               info: dict[str, Any], params: int, folder: str,
               workdir: str | None = None) -> str:
  """The README.md of a hub folder (``workdir``: the training run the results are of)."""
  train = info.get("train_config") if isinstance(info.get("train_config"), dict) else {}
  dataset = (train.get("dataset") or {}).get("name") or info.get("zoo") or "unknown"
  tower = ", ".join(f"{k} {getattr(cfg, k)}" for k in ("activation", "patch_bias", "ln_pre",
                                                       "layer_norm_eps", "layer_scale"))
  lines = [
    f"# UniFormerV2 video classifier ({cfg.num_classes} classes)", "",
    "UniFormerV2 (Li et al., 2022): an image ViT armed with local (LMHRA) and global UniFormer "
    "blocks for video recognition. Written by `uniformerv2_jax` (JAX / Flax NNX).", "",
    "## Architecture", "",
    f"- backbone: ViT width {cfg.width}, {cfg.layers} layers, {cfg.heads} heads, patch "
    f"{cfg.patch_size}; tower options: {tower}",
    f"- local MHRA: {'off' if cfg.no_lmhra else ('double' if cfg.double_lmhra else 'single')}; "
    f"temporal downsampling: {cfg.temporal_downsample}",
    f"- global blocks after layers {list(cfg.return_list)} (dim {cfg.n_dim}, {cfg.n_head} heads)"
    f"; frozen backbone recipe: {cfg.frozen}",
    f"- {params:,} parameters", "",
    "## Input", "",
    f"`[batch, {views.sampling.num_frames}, {views.eval_cfg.crop_size}, "
    f"{views.eval_cfg.crop_size}, 3]` float32, {'BGR' if views.bgr else 'RGB'} frames scaled "
    f"to [0, 1], then `(x - mean) / std` with mean {list(views.eval_cfg.mean)} and std "
    f"{list(views.eval_cfg.std)}.", "",
    f"Test views: {views.describe()}; the prediction is the softmax averaged over the views.", "",
    "## Evaluation", "",
  ]
  if results and "top1" in results:
    lines += [f"top-1 {100 * float(results['top1']):.2f} %, top-5 "
              f"{100 * float(results.get('top5', float('nan'))):.2f} % on "
              f"{results.get('num_videos', '?')} videos of {dataset} (step "
              f"{results.get('step', '?')}), measured with:", "",
              "```bash", "python main.py --mode eval --config <the run's config> "
              f"--checkpoint {workdir or '<the run workdir>'}", "```", ""]
  else:
    lines += ["Not measured with this package (no evaluation recorded with the checkpoint).", ""]
  lines += [
    "## Classes", "",
    "`labels.txt`, one name per line in class order." if names else
    "Class names were not recorded; outputs are class indices.", "",
    "## Use", "",
    "JAX (`pip install uniformerv2_jax`):", "",
    "```python", "import uniformerv2_jax", "",
    f"model = uniformerv2_jax.load_checkpoint({folder!r})  # this folder",
    "logits = model(video)  # video as described above", "```", "",
    f"Command line: `uniformerv2-jax predict --checkpoint {folder} --input video.mp4`.", "",
    "PyTorch, the official code (OpenGVLab/UniFormerV2): build the model from the official "
    "names in `config.json` (`MODEL`, `DATA`, `UNIFORMERV2`, `backbone_arch`), then "
    "`model.load_state_dict(safetensors.torch.load_file('model.safetensors'), strict=True)`.",
    "",
  ]
  if cfg.tower_changes():
    lines += ["The backbone is not OpenAI CLIP's tower (see the tower options above), which "
              "the official code cannot build: use it from JAX.", ""]
  return "\n".join(lines)
