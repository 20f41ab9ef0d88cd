"""Class-name maps: files shipped with the package (``uniformerv2_jax/label_maps/NAME.txt``) or
any file with one name per line, in label order."""

from __future__ import annotations

from pathlib import Path

from etils import epath

from uniformerv2_jax.data import splits
from uniformerv2_jax.errors import InputError, InputNotFound

MAPS_DIR = Path(__file__).resolve().parent / "label_maps"

# The label map shipped for each model-zoo dataset ("" = none shipped: no list could be checked
# against the released heads). Configs take ``dataset.labels`` from here, and prediction from a
# converted zoo checkpoint without a config names its classes with it.
DATASET_LABELS = {"k400": "kinetics400", "k600": "kinetics600", "k700": "kinetics700",
                  "k710": "kinetics710", "mit": "mit", "sthv1": "", "sthv2": "sthv2",
                  "anet": "", "hacs": ""}
# A converted checkpoint without any dataset information: the class count is a strong hint
# (174 is SSv1 or SSv2 and 200 ActivityNet or HACS: no guess there).
LABELS_BY_CLASS_COUNT = {400: "kinetics400", 600: "kinetics600", 700: "kinetics700",
                         710: "kinetics710", 339: "mit"}


def available() -> list[str]:
  return sorted(p.stem for p in MAPS_DIR.glob("*.txt")) if MAPS_DIR.is_dir() else []


def read_label_file(path: str | Path | epath.Path, num_classes: int | None = None) -> list[str]:
  names = [line.strip() for line in epath.Path(path).read_text().splitlines() if line.strip()]
  if num_classes is not None and len(names) != num_classes:
    raise InputError(f"{path}: {len(names)} class names, the model has {num_classes} classes")
  return names


def resolve(spec: str, root: str = "") -> epath.Path | None:
  """A label-map name (``kinetics400``) or a path (absolute, or relative to ``root``; local or
  a URL such as ``gs://``)."""
  if not spec:
    return None
  for cand in (epath.Path(spec), epath.Path(root) / spec if root else None,
               epath.Path(MAPS_DIR / f"{spec}.txt")):
    if cand is not None and cand.is_file():
      return cand
  return None


def load_labels(config, num_classes: int, override: str = "") -> list[str] | None:
  """Names for the config's dataset (``dataset.labels``), or ``override``; None if unknown."""
  spec = override or config.dataset.labels
  if not spec and config.dataset.kind in splits.KINDS:  # the split files define the map
    names = splits.class_names(config.dataset.kind, config.dataset.root)
    if len(names) != num_classes:
      raise InputError(f"{config.dataset.kind} split files under {config.dataset.root} define "
                       f"{len(names)} classes, the model has {num_classes} "
                       "(set --config.model.num_classes)")
    return names
  path = resolve(spec, config.dataset.root)
  if path is None:
    if override:
      raise InputNotFound(f"label file {override!r} not found (available maps: "
                              f"{', '.join(available()) or 'none'})")
    return None
  return read_label_file(path, num_classes)


def name_of(names: list[str] | None, index: int) -> str:
  return names[index] if names and 0 <= index < len(names) else str(index)


