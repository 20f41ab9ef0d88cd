"""Orbax checkpoints of UniFormerV2: one layout for the converter and the trainer.

A checkpoint directory is an Orbax ``CheckpointManager`` root holding step directories; each step
has the items
  ``params``       the model parameters (a nested dict of arrays, stacked layer axes as in the
                   model; plain Orbax ``StandardSave``, so Orbax alone can open it),
  ``batch_stats``  BatchNorm running statistics (only for models with local MHRA),
  ``config``       JSON: ``{"model": ModelConfig fields, "official": the official-name config,
                   ...}`` so a checkpoint restores without any other file,
and, written by the trainer, ``opt_state``, ``data_state`` and ``train_state``.
The converter writes step 0. ``WORKDIR`` (a training run) resolves to ``WORKDIR/checkpoints``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from uniformerv2_jax import storage
from uniformerv2_jax.errors import InputError, InputNotFound
from uniformerv2_jax.model import TOWER_FIELDS, ModelConfig, UniFormerV2, create_model
from uniformerv2_jax.variants import official_from_config

# Model fields that decide the parameters' shapes or what they compute: a checkpoint serves a
# config only when these agree (the frame count, dropout rates and implementation choices may
# differ; the input resolution may differ where prediction interpolates the positions).
ARCH_FIELDS = ("num_classes", "patch_size", "width", "layers", "heads", "temporal_kernel",
               "temporal_downsample", "no_lmhra", "double_lmhra", "dw_reduction", "return_list",
               "n_layers", "n_dim", "n_head", "mlp_factor", "frozen", *TOWER_FIELDS)


class CheckpointMismatchError(InputError):
  """The config describes a different model than the checkpoint holds."""


def model_differences(stored: ModelConfig, wanted: Mapping[str, Any],
                      fields: Sequence[str]) -> list[str]:
  """``name: checkpoint X, config Y`` for each of ``fields`` where ``wanted`` (a model config
  mapping) differs from the checkpoint's ``stored`` config."""
  bad = []
  for name in fields:
    if name not in wanted:
      continue
    want, have = wanted[name], getattr(stored, name)
    if isinstance(have, tuple):
      same = tuple(want) == have
    elif isinstance(have, float):
      same = math.isclose(float(want), have)
    else:
      same = want == have
    if not same:
      bad.append(f"{name}: checkpoint {have!r}, config {want!r}")
  return bad


def check_model_matches(directory: str | Path, wanted: Mapping[str, Any], *, action: str,
                        hint: str) -> None:
  """Before restoring for ``action`` (resume, evaluate): the checkpoint in ``directory`` holds
  the model ``wanted`` describes, else one error naming every differing field."""
  stored = config_from_json(read_config(directory)["model"])
  bad = model_differences(stored, wanted, (*ARCH_FIELDS, "input_resolution"))
  if bad:
    raise CheckpointMismatchError(f"cannot {action} {directory}: its model differs from the "
                                  f"config's ({'; '.join(bad)}). {hint}")


def config_to_json(cfg: ModelConfig) -> dict[str, Any]:
  d = dataclasses.asdict(cfg)
  d["return_list"] = list(cfg.return_list)
  d["mlp_dropout"] = list(cfg.mlp_dropout)
  return d


def config_from_json(d: dict[str, Any], **overrides) -> ModelConfig:
  """A ModelConfig from ``config_to_json``'s dict. Fields the writer did not know take their
  defaults: checkpoints from before the ``activation`` option are QuickGELU (the only
  activation then), which is that field's default."""
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(d) - known)
  if unknown:
    raise InputError(f"checkpoint config has unknown model fields {unknown}")
  return ModelConfig(**{**d, **overrides})


def check_init_tower(source: ModelConfig, run: ModelConfig, where: str) -> None:
  """Refuse to start a run from an image tower other than the one the run's config describes
  (activation, patch bias, pre-norm, LayerNorm eps, layer scale): the weights compute their
  features only with their own options. The error names each field and the overrides to add."""
  bad = [k for k in TOWER_FIELDS if getattr(source, k) != getattr(run, k)]
  if bad:
    fields = "; ".join(f"{k}: checkpoint {getattr(source, k)}, config {getattr(run, k)}"
                       for k in bad)
    flags = " ".join(f"--config.model.{k}={getattr(source, k)}" for k in bad)
    raise InputError(f"init_from {where}: its image tower differs from the run's config "
                     f"({fields}); pass {flags}")


def absolute(directory: str | Path) -> epath.Path:
  """Orbax needs absolute paths: a relative local path is taken from the working directory
  (``gs://...`` and other URLs are left as they are)."""
  text = str(directory)
  return epath.Path(text if storage.is_url(text) else os.path.abspath(text))


def resolve_directory(directory: str | Path) -> epath.Path:
  """A manager root; a training workdir is accepted and resolves to its ``checkpoints``."""
  path = absolute(directory)
  if (path / "checkpoints").is_dir():
    path = path / "checkpoints"
  return path


def _manager(directory, *, read_only: bool) -> ocp.CheckpointManager:
  if read_only and not epath.Path(directory).is_dir():
    raise InputNotFound(f"{directory}: no such checkpoint directory")
  return ocp.CheckpointManager(
    directory,
    options=ocp.CheckpointManagerOptions(read_only=read_only, create=not read_only,
                                         enable_async_checkpointing=False),
  )


def _pure(model: nnx.Module, kind) -> dict:
  return nnx.to_pure_dict(nnx.state(model, kind))


def save_model(directory: str | Path, model: UniFormerV2, *, step: int = 0,
               extra_config: dict[str, Any] | None = None) -> Path:
  """Write ``model`` (params, BatchNorm statistics and its config) as an Orbax checkpoint."""
  path = absolute(directory)
  config = {"model": config_to_json(model.cfg), "official": official_from_config(model.cfg)}
  config.update(extra_config or {})
  items = {"params": ocp.args.StandardSave(_pure(model, nnx.Param)),
           "config": ocp.args.JsonSave(config)}
  stats = _pure(model, nnx.BatchStat)
  if jax.tree.leaves(stats):
    items["batch_stats"] = ocp.args.StandardSave(stats)
  with _manager(path, read_only=False) as mngr:
    mngr.save(step, args=ocp.args.Composite(**items), force=True)
    mngr.wait_until_finished()
  return Path(str(path))


def checkpoint_steps(directory: str | Path) -> list[int]:
  path = resolve_directory(directory)
  if not path.is_dir():
    return []
  with _manager(path, read_only=True) as mngr:
    return list(mngr.all_steps())


def read_config(directory: str | Path, step: int | None = None) -> dict[str, Any]:
  """The ``config`` item of a checkpoint (model config and whatever the writer added); of a hub
  folder, what its ``config.json`` records for this package."""
  from uniformerv2_jax import hub

  if hub.is_hub_folder(directory):
    return hub.read_hub_config(directory)
  path = resolve_directory(directory)
  with _manager(path, read_only=True) as mngr:
    step = _pick_step(mngr, path, step)
    return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def _pick_step(mngr: ocp.CheckpointManager, path, step: int | None) -> int:
  steps = list(mngr.all_steps())
  if not steps:
    raise InputNotFound(f"{path}: no Orbax checkpoint steps found (expected a directory "
                            "written by convert_torch_weights.py or by training)")
  if step is None:
    return max(steps)
  if step not in steps:
    raise InputNotFound(f"{path}: no step {step}; available: {sorted(steps)}")
  return step


def _abstract(tree, *, keep_shardings: bool = False):
  """Restore targets with a sharding on every leaf: this process's first device (whatever mesh
  wrote the checkpoint), or with ``keep_shardings`` a leaf's own sharding where it has one.
  A leaf without one would make Orbax read the sharding the writer stored, which it warns is
  unsafe on another topology."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def target(a):
    sharding = getattr(a, "sharding", None) if keep_shardings else None
    return jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=sharding or device)

  return jax.tree.map(target, tree)


class NoEmaError(InputNotFound):
  """``use_ema`` was asked of a checkpoint without an ``ema`` item."""


def load_checkpoint(directory: str | Path, *, step: int | None = None, use_ema: bool = False,
                    **overrides) -> UniFormerV2:
  """Restore the model saved in ``directory`` (latest step unless ``step``), in eval mode. A hub
  folder (``hub.py``: ``model.safetensors`` + ``config.json``) is read too.

  ``use_ema``: take the parameters from the ``ema`` item (the exponential moving average a run
  with ``optim.ema_decay > 0`` keeps) instead of ``params``; BatchNorm statistics are the
  run's either way (EMA averages parameters only). A checkpoint without that item raises
  :class:`NoEmaError`. ``overrides`` change implementation fields of the stored config
  (``scan_layers``, ``remat_policy``, ``dtype``); they cannot change shapes.
  """
  from uniformerv2_jax import hub

  if hub.is_hub_folder(directory):
    if use_ema:
      raise NoEmaError(f"{directory} is a hub folder: it holds one set of weights (no EMA); "
                       "leave out --use_ema")
    return hub.load_hub(directory, **overrides)
  path = resolve_directory(directory)
  with _manager(path, read_only=True) as mngr:
    step = _pick_step(mngr, path, step)
    config = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    cfg = config_from_json(config["model"], **overrides)
    abstract = nnx.eval_shape(lambda: create_model(cfg))
    # The EMA item has the structure of ``params`` (a running average of them).
    source = "ema" if use_ema else "params"
    if use_ema and not (path / str(step) / "ema").is_dir():
      raise NoEmaError(
        f"{path} step {step} has no EMA weights (only runs trained with "
        "--config.optim.ema_decay > 0 write them; converted checkpoints never have them): "
        "leave out --use_ema")
    items = {source: ocp.args.StandardRestore(_abstract(_pure(abstract, nnx.Param)))}
    stats = _pure(abstract, nnx.BatchStat)
    if jax.tree.leaves(stats):
      items["batch_stats"] = ocp.args.StandardRestore(_abstract(stats))
    restored = mngr.restore(step, args=ocp.args.Composite(**items))
  values = {}
  for item in items:
    values.update(flatten_dict(restored[item]))
  return create_model(cfg, values=values)


def flatten_dict(tree: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten_dict(v, prefix + (str(k),)))
    else:
      out[prefix + (str(k),)] = v
  return out


# ----------------------------------------------------------------------------- training
class TrainCheckpointer:
  """Orbax manager of a training run: ``WORKDIR/checkpoints/<step>/`` with the model items above
  plus ``opt_state``, ``ema``, ``train_state`` (step, base key), ``data_state`` (the input
  iterator's position) and ``config``. Saves are asynchronous and atomic (Orbax writes a
  temporary directory and renames it when complete, so a crash mid-save leaves the previous
  checkpoints intact). Keeps the last ``keep`` steps and, with ``keep_best``, the best by eval
  top-1.
  """

  def __init__(self, directory: str | Path, *, keep: int = 2, keep_best: bool = True,
               async_save: bool = True):
    from orbax.checkpoint import checkpoint_managers as cm

    policies = [cm.LatestN(n=max(keep, 1))]
    if keep_best:
      policies.append(cm.BestN(get_metric_fn=lambda m: m.get("top1", -1.0), n=1,
                               keep_checkpoints_without_metrics=False))
    self.directory = absolute(directory)
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        preservation_policy=cm.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, *, data_state: Any, config: dict[str, Any],
           metrics: dict[str, float] | None = None, force: bool = False) -> bool:
    items = {
      "params": ocp.args.StandardSave(nnx.to_pure_dict(state.params)),
      "opt_state": ocp.args.StandardSave(_leaves_dict(state.opt_state)),
      "train_state": ocp.args.StandardSave({"step": state.step, "key": state.key}),
      "data_state": ocp.args.JsonSave(data_state),
      "config": ocp.args.JsonSave(config),
    }
    if jax.tree.leaves(state.batch_stats):
      items["batch_stats"] = ocp.args.StandardSave(nnx.to_pure_dict(state.batch_stats))
    if state.ema is not None:
      items["ema"] = ocp.args.StandardSave(nnx.to_pure_dict(state.ema))
    return self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics,
                             force=force)

  def restore(self, step: int, abstract_state) -> tuple[Any, Any]:
    """Restore into the structure (and shardings) of ``abstract_state`` (``jax.eval_shape`` of
    the state, leaves ``ShapeDtypeStruct`` with ``sharding``; a leaf without one restores on
    this process's first device). Returns ``(state, data_state)``."""
    target = functools.partial(_abstract, keep_shardings=True)
    items = {
      "params": ocp.args.StandardRestore(target(nnx.to_pure_dict(abstract_state.params))),
      "opt_state": ocp.args.StandardRestore(target(_leaves_dict(abstract_state.opt_state))),
      "train_state": ocp.args.StandardRestore(
        target({"step": abstract_state.step, "key": abstract_state.key})),
      "data_state": ocp.args.JsonRestore(),
    }
    if jax.tree.leaves(abstract_state.batch_stats):
      items["batch_stats"] = ocp.args.StandardRestore(
        target(nnx.to_pure_dict(abstract_state.batch_stats)))
    if abstract_state.ema is not None:
      items["ema"] = ocp.args.StandardRestore(target(nnx.to_pure_dict(abstract_state.ema)))
    try:
      r = self.manager.restore(step, args=ocp.args.Composite(**items))
    except ValueError as e:
      # Orbax words a stored tree that differs from the target either way, depending on
      # whether the target carries shardings.
      if not any(m in str(e) for m in ("Structure mismatch", "tree structures do not match")):
        raise
      raise InputError(  # one line: Orbax's own message spans several
        f"{self.directory} step {step}: the stored training state does not match this run's "
        f"({' '.join(str(e).split())}). The optimizer state changed layout on 2026-12-02 "
        "(one fused AdamW state instead of optax's chain), or the run's config differs "
        "(frozen backbone, EMA, gradient accumulation). To continue from its weights, start a "
        f"new workdir with --config.init_from={self.directory}") from None

    def fill(abstract_tree, pure):
      tree = jax.tree.map(lambda a: a, abstract_tree)  # a State we may overwrite
      nnx.replace_by_pure_dict(tree, pure)
      return tree

    opt_def = jax.tree.structure(abstract_state.opt_state)
    opt_leaves = [r["opt_state"][k] for k in sorted(r["opt_state"])]
    state = abstract_state.replace(
      step=r["train_state"]["step"], key=r["train_state"]["key"],
      params=fill(abstract_state.params, r["params"]),
      batch_stats=(fill(abstract_state.batch_stats, r["batch_stats"])
                   if "batch_stats" in items else abstract_state.batch_stats),
      opt_state=jax.tree.unflatten(opt_def, opt_leaves),
      ema=fill(abstract_state.ema, r["ema"]) if "ema" in items else None,
    )
    return state, r["data_state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _leaves_dict(tree) -> dict[str, Any]:
  """A pytree's leaves as ``{"00000": leaf, ...}`` (structure comes back from the abstract
  state on restore), so any optax state saves with plain Orbax."""
  return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree))}
