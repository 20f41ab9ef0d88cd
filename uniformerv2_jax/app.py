"""A web page that classifies a video with a checkpoint (gradio; ``pip install .[app]``).

  python -m uniformerv2_jax.app --checkpoint DIR [--port 7860] [--host 127.0.0.1]

Drop or upload a video (or pick a bundled example) and press *Classify*: the page shows the
top-5 classes with their probabilities, the frames the model was given (one row per temporal
clip) and the time the prediction took. The prediction is :mod:`uniformerv2_jax.predict`'s:
the same test views and the same model as ``--mode predict --checkpoint DIR``.

It is also an API endpoint, ``/predict`` (a video file in, a ``gr.Label`` out)::

  from gradio_client import Client, handle_file
  Client("http://127.0.0.1:7860/").predict(handle_file("clip.mp4"), api_name="/predict")
  # {"label": top class, "confidences": [{"label": name, "confidence": probability}, ...]}

Examples: the first videos of the checkpoint's validation list when its training dataset is on
this machine, else a few demo-dataset clips written once into
``$XDG_CACHE_HOME/uniformerv2_jax/app_examples``. The compiled model is kept in JAX's
persistent cache (``.../uniformerv2_jax/jax_cache``, unless ``JAX_COMPILATION_CACHE_DIR`` names
one), so that later starts skip the compilation. The server listens on 127.0.0.1 unless
``--host`` says otherwise, and sends no usage statistics (nothing leaves the machine).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from uniformerv2_jax import predict, storage
from uniformerv2_jax.arg_types import positive_int
from uniformerv2_jax.errors import InputError, InputNotFound, run_main

TOPK = 5
NUM_EXAMPLES = 3
STRIP_HEIGHT = 96  # pixels per frame in the strip: the demo's 32-64 px crops are tiny on screen
STRIP_COLUMNS = 8  # frames per row of the strip

# Set before gradio is imported: it reads them at import time. No usage statistics, no
# Hugging Face telemetry or downloads, no server-side rendering process (node).
QUIET_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1",
             "HF_HUB_OFFLINE": "1", "GRADIO_SSR_MODE": "False", "DO_NOT_TRACK": "1"}


class VideoError(InputError):
  """A video the model could not be run on (unreadable, not a video)."""


class Classifier:
  """A checkpoint ready to classify single videos the way ``--mode predict`` does."""

  def __init__(self, checkpoint: str):
    self.prepared = predict.prepare(checkpoint)
    self.views = self.prepared.views
    # All views of one video in one batch: one compiled shape, one model call per video.
    self.batch_size = self.views.num_views

  def probabilities(self, video: str) -> np.ndarray:
    """The view-averaged class probabilities of ``video`` ([K] float64), as ``--mode predict``
    computes them; raises VideoError when it cannot be read."""
    results = predict.run_videos(self.prepared, [video], batch_size=self.batch_size,
                                 read_threads=1, progress=False)
    if results.errors[0]:
      raise VideoError(results.errors[0])
    return results.probs[0]

  def top(self, probs: np.ndarray, k: int = TOPK) -> dict[str, float]:
    """The ``k`` most probable classes: name -> probability."""
    return {e["label"]: e["prob"] for e in predict.topk_entries(probs, self.prepared.names, k)}

  def frame_strip(self, video: str) -> np.ndarray:
    """The sampled frames of every temporal test clip as one uint8 RGB image (frames in rows
    of up to STRIP_COLUMNS, each clip from a new row)."""
    from PIL import Image

    from uniformerv2_jax.data.pipeline import read_test_clips
    from uniformerv2_jax.data.sources import video_record

    v = self.views
    clips = read_test_clips(video_record(video, bgr=v.bgr), v.sampling, v.reader, v.num_clips)
    if v.bgr:  # shown as a person sees the video
      clips = clips[..., ::-1]
    h, w = clips.shape[2:4]
    size = (max(1, round(w * STRIP_HEIGHT / h)), STRIP_HEIGHT)
    frames = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.NEAREST))
                       for f in clips.reshape(-1, h, w, 3)])
    # Rows of at most STRIP_COLUMNS frames, each clip starting a new row (the tail left black).
    per_clip = clips.shape[1]
    cols = min(per_clip, STRIP_COLUMNS)
    rows_per_clip = -(-per_clip // cols)
    grid = np.zeros((len(clips), rows_per_clip * cols, *frames.shape[1:]), np.uint8)
    grid[:, :per_clip] = frames.reshape(len(clips), per_clip, *frames.shape[1:])
    grid = grid.reshape(len(clips) * rows_per_clip, cols, *frames.shape[1:])
    return np.concatenate([np.concatenate(list(row), axis=1) for row in grid], axis=0)


# ----------------------------------------------------------------------------- examples
def _cache_dir(name: str) -> str:
  cache = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
  return os.path.join(cache, "uniformerv2_jax", name)


def _dataset_examples(prepared: predict.Prepared) -> list[str]:
  """The first videos of the training run's validation list, when that dataset is here."""
  root = predict._get(prepared.config, "dataset.root", "") or ""
  listing = predict._get(prepared.config, "dataset.val_list", "") or ""
  path = os.path.join(root, listing)
  if not root or not listing or not os.path.isfile(path):
    return []
  try:
    videos = predict.find_videos(path, root)
  except (OSError, ValueError):
    return []
  return [v for v in videos if os.path.isfile(v)][:NUM_EXAMPLES]


def _demo_examples(directory: str) -> list[str]:
  """A few clips of the demo dataset's generator (seeded, so the same on every start)."""
  from uniformerv2_jax.data import demo_dataset

  os.makedirs(directory, exist_ok=True)
  paths = []
  for label in range(NUM_EXAMPLES):
    path = os.path.join(directory, f"{demo_dataset.CLASSES[label]}.mp4")
    if not os.path.isfile(path):
      tmp = f"{path}.tmp{os.getpid()}.mp4"  # a crash never leaves half a clip under the name
      frames = demo_dataset.render_clip(label, np.random.default_rng([7, label]))
      demo_dataset.write_mp4(tmp, frames)
      os.replace(tmp, path)
    paths.append(path)
  return paths


def examples(prepared: predict.Prepared, cache_dir: str | None = None) -> list[str]:
  """Example videos for the page (see the module docstring)."""
  return _dataset_examples(prepared) or _demo_examples(cache_dir or _cache_dir("app_examples"))


# ----------------------------------------------------------------------------- the page
def build_page(classifier: Classifier, example_videos: Sequence[str]) -> Any:
  """The gradio Blocks of the page; its *Classify* event is the ``/predict`` endpoint."""
  import gradio as gr

  def classify(video: str | None) -> tuple[dict[str, float], float]:
    if not video:
      raise gr.Error("Drop a video file (or pick an example) first.")
    start = time.perf_counter()
    try:
      probs = classifier.probabilities(video)
    except VideoError as e:  # the upload's temporary path means nothing to the visitor
      name = os.path.basename(video)
      raise gr.Error(f"{name}: {str(e).replace(video, name)}") from None
    return classifier.top(probs), time.perf_counter() - start

  def details(video: str, seconds: float) -> tuple[np.ndarray, str]:
    views = classifier.views
    return classifier.frame_strip(video), (
      f"**{seconds:.2f} s** to decode and classify ({views.describe()}).")

  with gr.Blocks(title="UniFormerV2 video classifier") as page:
    gr.Markdown("# UniFormerV2 video classifier\nDrop a video (or pick an example), then "
                "press **Classify**.")
    with gr.Row():
      with gr.Column():
        # format=None, include_audio=True: the file as uploaded (no ffmpeg conversion)
        video = gr.Video(label="Video", sources=["upload"], format=None, include_audio=True,
                         height=320, elem_id="video")
        button = gr.Button("Classify", variant="primary", elem_id="classify")
        if example_videos:
          gr.Examples([[v] for v in example_videos], inputs=[video], label="Examples")
      with gr.Column():
        top = gr.Label(num_top_classes=TOPK, label=f"Top-{TOPK} classes", elem_id="top")
        timing = gr.Markdown(elem_id="timing")
        strip = gr.Image(label="Sampled frames (each clip from a new row)", type="numpy",
                         interactive=False, elem_id="frames")
    seconds = gr.State(0.0)  # a State is no part of the API: /predict returns the label only
    button.click(classify, inputs=[video], outputs=[top, seconds], api_name="predict").success(
      details, inputs=[video, seconds], outputs=[strip, timing], api_visibility="private")
  return page


# ----------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m uniformerv2_jax.app",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True,
                      help="a training workdir, Orbax checkpoint, hub folder or exported .jax")
  parser.add_argument("--port", type=positive_int, default=7860)
  parser.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (0.0.0.0: every interface)")
  return parser.parse_args(argv)


def check_checkpoint(checkpoint: str) -> None:
  """A local ``--checkpoint`` must exist before anything is loaded."""
  if not storage.is_url(checkpoint) and not os.path.exists(checkpoint):
    raise InputNotFound(f"--checkpoint {checkpoint}: no such file or directory (give a training "
                        "workdir, an Orbax checkpoint, a hub folder or an exported .jax model)")


def load_classifier(checkpoint: str) -> Classifier:
  """The checkpoint's classifier; what cannot be read becomes an InputError naming it."""
  check_checkpoint(checkpoint)
  try:
    return Classifier(checkpoint)
  except InputError:
    raise
  except (OSError, ValueError, KeyError) as e:
    raise InputError(f"--checkpoint {checkpoint}: not a checkpoint this package can read "
                     f"({type(e).__name__}: {e})") from None


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  for key, value in QUIET_ENV.items():
    os.environ.setdefault(key, value)
  start = time.perf_counter()
  check_checkpoint(args.checkpoint)
  import jax

  if not jax.config.jax_compilation_cache_dir:  # later starts skip the model's compilation
    jax.config.update("jax_compilation_cache_dir", _cache_dir("jax_cache"))
  # gradio takes seconds to import: in a thread, while the model loads and compiles.
  web = threading.Thread(target=importlib.import_module, args=("gradio",), daemon=True)
  web.start()
  classifier = load_classifier(args.checkpoint)
  videos = examples(classifier.prepared)
  if videos:  # compile now, so that the first visitor does not wait for it
    classifier.probabilities(videos[0])
  web.join()
  page = build_page(classifier, videos)
  print(f"model ready in {time.perf_counter() - start:.1f} s; serving on "
        f"http://{args.host}:{args.port}/", flush=True)
  page.queue().launch(server_name=args.host, server_port=args.port, share=False,
                      show_error=True, quiet=True)
  return 0


if __name__ == "__main__":
  sys.argv[0] = "python -m uniformerv2_jax.app"
  run_main(lambda: main(sys.argv[1:]))
