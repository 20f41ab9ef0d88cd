#!/usr/bin/env python
"""Convert UniFormerV2 weights between PyTorch formats and this project's Orbax checkpoints.

The direction follows from SRC. Import (SRC a weights file or a Hugging Face model directory):
DST becomes an Orbax checkpoint directory, whatever it is called, that
``uniformerv2_jax.load_checkpoint`` restores. SRC may be
  official   OpenGVLab/UniFormerV2 .pyth/.pth (flat backbone.* or {'model_state': ...})
  mmaction2  MMAction2 checkpoint ({'meta', 'state_dict'}, or a backbone-only dict)
  clip       OpenAI CLIP: full state dict, the official recipe's visual-only extraction
             (vit_b16.pth ...), or the released TorchScript .pt archive (tensors read, no code run)
  hf         Hugging Face CLIPVisionModel / CLIPModel (.safetensors, .bin, or the model directory)
  hf_vit     Hugging Face ViTModel (the model directory, e.g. google/vit-base-patch16-224-in21k)
  timm       timm ViTs: a folder as timm writes it (config.json + model.safetensors or
             pytorch_model.bin) or a bare state dict: CLIP, supervised / augreg, DeiT, MAE (also
             the official MAE release's {'model': ...}) and DINOv2 towers
The format is detected from the key names (--format to insist). Image towers initialise the
backbone as the official loader does with CLIP (centre-inflated patch kernel, float32; the
image head and text tower dropped; a positional embedding for another resolution is resized as
the tower's own library resizes it); everything else keeps the official initialisation.

A tower brings its options into the model config (activation, patch bias, pre-norm, LayerNorm
eps, layer scale): read from what the source records (a timm config.json's model name, a Hugging
Face config.json, an open_clip_config.json, a TorchScript archive's activation modules) or
from what its keys show (norm_pre: CLIP; layer scale: DINOv2). Where neither tells, the
command says which option to add: --timm-model NAME for timm towers (e.g.
vit_base_patch16_224.mae), --clip-activation quick_gelu|gelu for CLIP towers. Nothing is
guessed, and an option that the source contradicts is an error. The config's geometry can be
changed as main.py's is: --config.model.patch_size=14 for a B/14 tower.

Export (SRC an Orbax directory written by this project): DST's extension picks the file format,
the official flat state dict (.pth/.pyth via torch.save, or .safetensors/.npz), or with --format
mmaction2 MMAction2's
{'meta', 'state_dict'} layout. Both load with strict=True in those code bases. --format hub
writes a folder for a model hub instead: model.safetensors (official layout), config.json,
labels.txt and a README.md model card (uniformerv2_jax/hub.py).

Examples:
  python convert_torch_weights.py --input k400_b16_f8x224.pyth --output ckpt/k400_b16 \\
      --config configs/k400.py:b16_8x224 --verify
  python convert_torch_weights.py --input tiny/model.pth --output ckpt/tiny \\
      --official-config tiny/config.json
  python convert_torch_weights.py --input uniformerv2_mmaction2.pth --output ckpt/mm --verify
  python convert_torch_weights.py --input ViT-B-16.pt --output ckpt/clip_init \\
      --config zoo:k400:b16_8x224 --clip-activation quick_gelu
  python convert_torch_weights.py --input laion_vit_b16.pth --output ckpt/laion_init \\
      --config zoo:k400:b16_8x224 --clip-activation gelu
  python convert_torch_weights.py --input timm/vit_base_patch14_dinov2 --output ckpt/dinov2 \
      --config configs/k400.py:b16_8x224 --config.model.patch_size=14
  python convert_torch_weights.py --input mae_pretrain_vit_base.pth --output ckpt/mae \
      --config configs/k400.py:b16_8x224 --timm-model vit_base_patch16_224.mae
  python convert_torch_weights.py --input ckpt/k400_b16 --output k400_b16.pyth --verify
  python convert_torch_weights.py --input ckpt/k400_b16 --output mm.pth --format mmaction2
  python convert_torch_weights.py --input ckpt/k400_b16 --output hub/k400_b16 --format hub

Exit status: 0 on success, 1 when --verify fails, 2 for unusable input (message on stderr).
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

PROGRESS_BYTES = 64 << 20  # show progress bars above this many bytes of tensors


class UsageError(Exception):
  """Bad command-line use (message printed, exit status 2)."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    prog=None,  # as started: convert_torch_weights.py, or uniformerv2-jax convert
    description=__doc__.split("\n\n")[0] + " See the module docstring (below) for details.",
    epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--input", "-i", required=True, metavar="SRC",
                 help="a PyTorch / safetensors / npz file or Hugging Face model directory "
                      "(import), or an Orbax checkpoint directory of this project (export)")
  p.add_argument("--output", "-o", required=True, metavar="DST",
                 help="the Orbax checkpoint directory to create (import: any name, e.g. "
                      "run.ckpt), or a .pth/.pyth/.pt/.safetensors/.npz file (export)")
  cfg = p.add_mutually_exclusive_group()
  cfg.add_argument("--official-config", metavar="CFG.json",
                   help="the model in the official config names (MODEL, DATA, UNIFORMERV2, "
                        "backbone_arch), e.g. a fixture's config.json")
  cfg.add_argument("--config", metavar="CONFIG",
                   help="a project config, configs/<file>.py:<arg> (its config.model), or "
                        "zoo:<dataset>:<arg> for a model-zoo row, e.g. zoo:k400:b16_8x224")
  p.add_argument("--format", choices=("official", "mmaction2", "clip", "hf", "hf_vit", "timm",
                                      "hub"),
                 help="import: insist on this source format (default: detected from the keys); "
                      "export: official (default) or mmaction2")
  p.add_argument("--clip-activation", choices=("quick_gelu", "gelu"),
                 help="import of a CLIP image tower: the activation its MLPs were trained with "
                      "(quick_gelu: OpenAI CLIP; gelu: exact GELU, e.g. open_clip ViT-B-16 on "
                      "LAION, timm vit_*_clip_* without quickgelu). Required when the source "
                      "does not record it; an error when it contradicts the source")
  p.add_argument("--timm-model", metavar="NAME",
                 help="the timm model a bare timm state dict is (architecture[.tag], e.g. "
                      "vit_base_patch16_224.augreg_in21k, deit_base_patch16_224, "
                      "vit_base_patch16_224.mae, vit_base_patch14_dinov2); read from the "
                      "config.json of a timm folder")
  p.add_argument("--verify", action="store_true",
                 help="reload what was written and compare every tensor and a forward pass on a "
                      "random clip with the source; prints PASS/FAIL, exit status 1 on FAIL")
  p.add_argument("--allow-missing", action="store_true",
                 help="import: accept a checkpoint without some of the model's tensors (they "
                      "keep the official initialisation and are listed)")
  p.add_argument("--seed", type=int, default=0,
                 help="seed of the official initialisation of tensors the source does not "
                      "provide (default 0)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an existing output file or Orbax checkpoint directory")
  p.add_argument("--verbose", "-v", action="store_true",
                 help="list every tensor in the summary and the --verify report")
  args, rest = p.parse_known_args(argv)
  args.model_overrides = {}
  for item in rest:
    m = re.fullmatch(r"--config\.model\.(\w+)=(.*)", item)
    if m is None:
      p.error(f"unrecognized argument {item} (config overrides are --config.model.FIELD=VALUE)")
    args.model_overrides[m.group(1)] = m.group(2)
  return args


def apply_model_overrides(cfg, overrides: Mapping[str, str]):
  """``--config.model.FIELD=VALUE`` on a ModelConfig, each value read as the field's type."""
  import ast
  import dataclasses

  if not overrides:
    return cfg
  if cfg is None:
    raise UsageError("--config.model.* overrides need --config or --official-config")
  fields = {f.name: f for f in dataclasses.fields(cfg)}
  changes = {}
  for name, text in overrides.items():
    if name not in fields:
      raise UsageError(f"--config.model.{name}: no such model field (one of "
                       f"{', '.join(sorted(fields))})")
    current = getattr(cfg, name)
    try:
      if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
          raise ValueError(text)
        value = text.lower() in ("true", "1")
      elif isinstance(current, (int, float)):
        value = type(current)(text)
      elif isinstance(current, tuple):
        value = tuple(ast.literal_eval(text))
      else:
        value = text
    except (ValueError, SyntaxError):
      raise UsageError(f"--config.model.{name}={text}: expected a {type(current).__name__}, as "
                       f"the current value {current!r}") from None
    changes[name] = value
  return cfg.replace(**changes)


# ----------------------------------------------------------------------------- configs
def resolve_config(args):
  """The ModelConfig named by --official-config / --config, or None."""
  from uniformerv2_jax.config_files import load_config_file, resolve_recipe, split_config_spec
  from uniformerv2_jax.model import ModelConfig
  from uniformerv2_jax.variants import config_from_official

  if args.official_config:
    path = Path(args.official_config)
    if not path.is_file():
      raise UsageError(f"--official-config {path}: no such file")
    return config_from_official(path)
  if not args.config:
    return None
  spec = args.config
  if spec.startswith("zoo:"):
    from uniformerv2_jax import zoo

    parts = spec.split(":")
    if len(parts) != 3:
      raise UsageError(f"--config {spec}: expected zoo:<dataset>:<arg>, e.g. zoo:k400:b16_8x224")
    try:
      cfg = zoo.get(parts[1], parts[2]).model_config()
      args.zoo_name = f"{parts[1]}:{parts[2]}"  # recorded so predict can use its test views
      return cfg
    except (KeyError, ValueError) as e:
      raise UsageError(f"--config {spec}: {e}") from None
  spec = resolve_recipe(spec)
  path, arg = split_config_spec(spec)
  if not path.is_file():
    raise UsageError(f"--config {spec}: no such file {path} (expected configs/<file>.py:<arg> "
                     "or zoo:<dataset>:<arg>)")
  config = load_config_file(spec)
  zoo_cfg = config.get("zoo") if isinstance(config, Mapping) else getattr(config, "zoo", None)
  if zoo_cfg is not None and getattr(zoo_cfg, "name", None):
    args.zoo_name = zoo_cfg.name
  model = config["model"] if isinstance(config, Mapping) else getattr(config, "model", None)
  if isinstance(model, ModelConfig):
    return model
  if hasattr(model, "model_config"):
    return model.model_config()
  if hasattr(model, "to_dict"):
    model = model.to_dict()
  if isinstance(model, Mapping):
    return ModelConfig(**dict(model))
  raise UsageError(f"--config {spec}: get_config({arg!r}).model is not a model config")


# ----------------------------------------------------------------------------- reporting
def grouped(keys: Sequence[str], verbose: bool = False, limit: int = 12) -> str:
  """Key names with layer indices folded (``resblocks.N.ln_1.weight x12``) unless verbose."""
  if verbose:
    return "\n".join(f"    {k}" for k in keys)
  counts = Counter(re.sub(r"(resblocks|dec|dpe|layers|blocks)\.\d+\.", r"\1.N.", k)
                   for k in keys)
  lines = [f"    {k}" + (f"  x{n}" if n > 1 else "") for k, n in counts.items()]
  if len(lines) > limit:
    lines = lines[:limit] + [f"    ... and {len(lines) - limit} more patterns"]
  return "\n".join(lines)


def say(msg: str = "") -> None:
  print(msg, flush=True)


def summary(imp, dst: Path, verbose: bool) -> None:
  c, src = imp.converted, imp.source
  wrapper = f", wrapper {src.wrapper!r}" if src.wrapper else ""
  say(f"source: {src.path} ({c.fmt} format, {src.container}{wrapper}, "
      f"{len(src.tensors)} tensors)")
  say(f"model: width {imp.cfg.width}, {imp.cfg.layers} layers, patch {imp.cfg.patch_size}, "
      f"{imp.cfg.input_resolution}px, {imp.cfg.num_frames} frames, "
      f"{imp.cfg.num_classes} classes{', frozen' if imp.cfg.frozen else ''}, "
      f"activation {imp.cfg.activation}")
  if imp.tower is not None:
    options = ", ".join(f"{k} {v}" for k, v in imp.tower.options.items())
    say(f"tower: {imp.tower.family} ({options})")
  say(f"converted: {len(c.state)} tensors into the model ({c.renamed} renamed)")
  if c.inflated:
    say("inflated: " + "; ".join(c.inflated))
  for r in c.resized:
    say("resized: " + r)
  if c.cast:
    dtypes = ", ".join(sorted({s.split()[-1] for s in c.cast}))
    say(f"cast to float32: {len(c.cast)} tensors (from {dtypes})")
  for n in c.notes:
    say("note: " + n)
  if c.ignored:
    say(f"ignored ({len(c.ignored)} source tensors not used by the video model):")
    say(grouped(c.ignored, verbose))
  if imp.kept_at_init:
    why = "not in an image tower" if c.partial else "missing from the checkpoint"
    say(f"kept at official init ({len(imp.kept_at_init)} tensors, {why}):")
    say(grouped(imp.kept_at_init, verbose))
  say(f"wrote: {dst}")
  if imp.tower is not None and imp.tower.overrides():
    say(f"train from it with: --config.init_from={dst} {imp.tower.overrides()}")


# ----------------------------------------------------------------------------- verification
def _max_diff(a, b) -> float:
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape:
    return float("inf")
  if a.size == 0:
    return 0.0
  return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


_JITTED = {}


def _forward(model, seed: int = 0) -> np.ndarray:
  """Eval-mode logits on a seeded random clip [1, T, H, W, 3] (one compilation per config)."""
  import jax.numpy as jnp
  from flax import nnx

  if "fn" not in _JITTED:
    _JITTED["fn"] = nnx.jit(lambda m, x: m(x, train=False))
  cfg = model.cfg
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((1, cfg.num_frames, cfg.input_resolution, cfg.input_resolution, 3))
  return np.asarray(_JITTED["fn"](model, jnp.asarray(x, jnp.float32)))


def _report(rows: list[tuple[str, float, str]], verbose: bool, what: str) -> bool:
  """rows: (name, max diff, problem or ''). Prints and returns whether all are exact."""
  bad = [r for r in rows if r[2] or r[1] != 0.0]
  worst = max((r[1] for r in rows), default=0.0)
  say(f"  {what}: {len(rows)} compared, {len(rows) - len(bad)} bit-exact, max |diff| {worst:.3g}")
  shown = rows if verbose else sorted(bad, key=lambda r: -r[1])[:10]
  for name, d, problem in shown:
    say(f"    {name}: max |diff| {d:.3g}{'  ' + problem if problem else ''}")
  return not bad


def verify_import(imp, dst: Path, verbose: bool, tol: float = 1e-5) -> bool:
  from uniformerv2_jax.checkpoint import load_checkpoint
  from uniformerv2_jax.mapping import torch_from_flax
  from uniformerv2_jax.trees import flat_state

  say("verify: reloading " + str(dst))
  reloaded = load_checkpoint(dst)
  ok = reloaded.cfg == imp.cfg
  if not ok:
    say("  config differs after reload")
  a, b = flat_state(imp.model), flat_state(reloaded)
  rows = []
  for path in sorted(set(a) | set(b)):
    name = "/".join(path)
    if path not in a or path not in b:
      rows.append((name, float("inf"), "missing after reload" if path in a else "unexpected"))
      continue
    problem = "" if np.asarray(a[path]).dtype == np.asarray(b[path]).dtype else "dtype differs"
    rows.append((name, _max_diff(a[path], b[path]), problem))
  ok &= _report(rows, verbose, "model variables, reloaded vs converted")
  official = torch_from_flax(b, reloaded.cfg, prefix="")
  rows = [(k, _max_diff(official[k], v), "") for k, v in imp.converted.state.items()]
  ok &= _report(rows, verbose, "source tensors (official names), reloaded vs source")
  la, lb = _forward(imp.model), _forward(reloaded)
  d = _max_diff(la, lb)
  r = imp.cfg.input_resolution
  say(f"  forward on a random clip [1, {imp.cfg.num_frames}, {r}, {r}, 3]: max |logits diff| "
      f"{d:.3g} (source mapped directly vs reloaded Orbax model)")
  return ok and d <= tol


def verify_export(model, sd, out: Path, fmt: str, verbose: bool, tol: float = 1e-5) -> bool:
  from uniformerv2_jax import convert
  from uniformerv2_jax.checkpoint_files import read_source

  say("verify: reloading " + str(out))
  src = read_source(out)
  ok = True
  if out.suffix.lower() != ".safetensors" and out.suffix.lower() != ".npz":
    if list(src.tensors) != list(sd):
      say("  key order differs from the official order")
      ok = False
  else:
    ok &= set(src.tensors) == set(sd)
  rows = []
  for k, v in sd.items():
    if k not in src.tensors:
      rows.append((k, float("inf"), "missing in the file"))
      continue
    got = src.tensors[k]
    problem = "" if got.dtype == np.asarray(v).dtype and got.shape == np.shape(v) else (
      f"{got.dtype}{list(got.shape)} vs {np.asarray(v).dtype}{list(np.shape(v))}")
    rows.append((k, _max_diff(got, v), problem))
  ok &= _report(rows, verbose, f"tensors in {out.name} vs the Orbax checkpoint")
  back = convert.import_model(out, model.cfg, fmt, src=src)
  d = _max_diff(_forward(model), _forward(back.model))
  say(f"  forward on a random clip: max |logits diff| {d:.3g} (Orbax model vs the exported file "
      "loaded back)")
  return ok and d <= tol


# ----------------------------------------------------------------------------- commands
def _is_orbax_dir(path: Path) -> bool:
  from uniformerv2_jax.checkpoint import checkpoint_steps

  try:
    return path.is_dir() and bool(checkpoint_steps(path.resolve()))
  except Exception:  # noqa: BLE001 - anything unreadable is "not ours"
    return False


def run_import(args, src_path: Path, dst: Path) -> int:
  from uniformerv2_jax import convert
  from uniformerv2_jax.checkpoint import save_model

  if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
    if not args.overwrite:
      raise UsageError(f"{dst} exists; pass --overwrite to replace it")
    if not _is_orbax_dir(dst):
      raise UsageError(f"{dst} exists and is not an Orbax checkpoint; refusing to replace it")
    others = sorted(p.name for p in dst.iterdir() if not p.name.isdigit())
    if others:  # a training workdir (checkpoints/, metrics, TensorBoard) is not ours to delete
      raise UsageError(
        f"{dst} holds more than a converted checkpoint ({', '.join(others[:4])}"
        f"{', ...' if len(others) > 4 else ''}): --overwrite replaces only what this converter "
        "wrote, never a training run; choose another --output")
    shutil.rmtree(dst)
  cfg = apply_model_overrides(resolve_config(args), args.model_overrides)
  imp = convert.import_model(src_path, cfg, args.format, allow_missing=args.allow_missing,
                             seed=args.seed, clip_activation=args.clip_activation,
                             timm_model=args.timm_model)
  extra = {"source": "convert_torch_weights.py", "format": imp.converted.fmt,
           "converted_from": str(src_path.resolve()),
           "kept_at_init": len(imp.kept_at_init), "init_seed": args.seed}
  if getattr(args, "zoo_name", None):
    extra["zoo"] = args.zoo_name
  if imp.tower is not None:
    extra["tower"] = imp.tower.family
  save_model(dst.resolve(), imp.model, step=0, extra_config=extra)
  summary(imp, dst, args.verbose)
  if args.verify:
    ok = verify_import(imp, dst.resolve(), args.verbose)
    say("PASS" if ok else "FAIL")
    return 0 if ok else 1
  return 0


def run_export(args, src_dir: Path, out: Path) -> int:
  from uniformerv2_jax import convert
  from uniformerv2_jax.checkpoint import load_checkpoint, read_config

  if args.official_config or args.config:
    raise UsageError("an export needs no config: the Orbax directory carries it")
  if args.allow_missing:
    raise UsageError("--allow-missing applies to imports only")
  if args.clip_activation:
    raise UsageError("--clip-activation applies to imports only (an Orbax checkpoint's config "
                     "carries its activation)")
  fmt = args.format or "official"
  if fmt not in ("official", "mmaction2"):
    raise UsageError(f"--format {fmt}: exports write the official or the mmaction2 layout")
  if out.exists() and not args.overwrite:
    raise UsageError(f"{out} exists; pass --overwrite to replace it")
  model = load_checkpoint(src_dir.resolve())
  info = read_config(src_dir.resolve())
  sd = convert.export_state(model, fmt)
  meta = {"converted_from": str(src_dir.resolve()), "note": "exported by uniformerv2_jax "
          "convert_torch_weights.py"}
  if info.get("converted_from"):
    meta["original_source"] = str(info["converted_from"])
  progress = sum(np.asarray(v).nbytes for v in sd.values()) > PROGRESS_BYTES
  convert.write_state(out, sd, model.cfg, fmt, meta=meta if fmt == "mmaction2" or
                out.suffix.lower() == ".safetensors" else None, progress=progress)
  say(f"source: {src_dir} (Orbax, {len(sd)} tensors)")
  say(f"wrote: {out} ({fmt} layout, {len(sd)} tensors"
      + (", frozen model: balance = -1e4 added" if fmt == "mmaction2" and model.cfg.frozen
         else "") + ")")
  if args.verify:
    ok = verify_export(model, sd, out, fmt, args.verbose)
    say("PASS" if ok else "FAIL")
    return 0 if ok else 1
  return 0


def run_export_hub(args, src_dir: Path, out: Path) -> int:
  """``--format hub``: the folder a model hub takes (``uniformerv2_jax/hub.py``)."""
  from uniformerv2_jax import hub
  from uniformerv2_jax.checkpoint import load_checkpoint
  from uniformerv2_jax.trees import flat_state

  if args.official_config or args.config or args.allow_missing or args.clip_activation:
    raise UsageError("--format hub exports an Orbax checkpoint as it is: no config, "
                     "--allow-missing or --clip-activation")
  hub.write_hub(str(src_dir.resolve()), out, overwrite=args.overwrite)
  files = sorted(p.name for p in out.iterdir())
  say(f"source: {src_dir} (Orbax)")
  say(f"wrote: {out}/ ({', '.join(files)})")
  if args.verify:
    a, b = flat_state(load_checkpoint(src_dir.resolve())), flat_state(load_checkpoint(out))
    ok = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    say("verify: the folder loads back " + ("bit-identical" if ok else "DIFFERENT"))
    say("PASS" if ok else "FAIL")
    return 0 if ok else 1
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  for name in ("absl", "orbax", "jax"):
    logging.getLogger(name).setLevel(logging.ERROR)
  src, dst = Path(args.input), Path(args.output)
  try:
    from uniformerv2_jax.checkpoint_files import FILE_SUFFIXES, CheckpointError
  except ImportError as e:  # pragma: no cover
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    if not src.exists():
      raise UsageError(f"{src}: no such file or directory")
    # The input alone sets the direction: an Orbax directory is exported to the file format its
    # output's extension names; anything else is imported into an Orbax directory, whatever the
    # output is called (``run.ckpt`` is a fine directory name).
    if src.is_dir() and _is_orbax_dir(src) and args.format == "hub":
      return run_export_hub(args, src, dst)
    if args.format == "hub":
      raise UsageError(f"--format hub writes a hub folder from an Orbax checkpoint; {src} is not "
                       "one")
    if src.is_dir() and _is_orbax_dir(src):
      if dst.suffix.lower() not in FILE_SUFFIXES:
        raise UsageError(f"{src} is an Orbax checkpoint: the output of an export must be a "
                         f"file ending in {', '.join(FILE_SUFFIXES)}")
      return run_export(args, src, dst)
    return run_import(args, src, dst)
  except (UsageError, CheckpointError, ValueError, FileNotFoundError, KeyError) as e:
    msg = str(e) if not isinstance(e, KeyError) else f"missing entry {e}"
    print(f"error: {msg}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
