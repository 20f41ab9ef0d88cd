"""The Apache Beam pipeline of :mod:`uniformerv2_jax.data.prepare`.

``Create(shard tasks) -> Reshuffle -> Map(write_task) -> ToList -> Map(finish)``: each element
is one shard's list positions (``prepare.ShardTask``; the worker reads those videos from the
plan the launcher wrote beside the output, so the job graph stays small for any list), a worker
encodes and writes a whole shard (with ArrayRecordWriter, inside the step) and the pipeline's
output does not depend on how the runner spreads the shards; the last step writes
``index.json`` and ``errors.jsonl`` once every shard is complete. The Reshuffle lets the runner
hand the shards to different workers (Create alone is one bundle).

With DirectRunner and no ``--direct_num_workers`` given, the pipeline runs in
``multi_processing`` mode with one worker process per local core.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from uniformerv2_jax.errors import InputError


def check_available(runner: str) -> None:
  """Raises InputError when apache-beam is not installed."""
  try:
    import apache_beam  # noqa: F401
  except ImportError:
    raise InputError(f"--runner {runner} needs apache-beam: pip install 'uniformerv2_jax[beam]' "
                     "(or apache-beam), or use --runner local") from None


def pipeline_args(runner: str, beam_args: Sequence[str]) -> list[str]:
  """Beam pipeline options: ``beam_args`` after the runner, plus DirectRunner's multi-process
  defaults (a worker per core, warnings only from the workers) unless the arguments set
  them."""
  args = [f"--runner={runner}", *beam_args]
  given = " ".join(beam_args)
  if runner == "DirectRunner":
    if "--direct_num_workers" not in given:
      args.append(f"--direct_num_workers={os.cpu_count() or 1}")
    if "--direct_running_mode" not in given:
      args.append("--direct_running_mode=multi_processing")
    if "--default_sdk_harness_log_level" not in given:  # the workers' INFO lines drown progress
      args.append("--default_sdk_harness_log_level=WARNING")
  return args


def run(tasks: Sequence, out: str, num_shards: int, runner: str,
        beam_args: Sequence[str] = ()) -> dict:
  """Write the shards of ``tasks`` (``prepare.ShardTask``) with a Beam pipeline, then the index
  of all ``num_shards`` shards; returns ``prepare.finish``'s summary."""
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions

  from uniformerv2_jax.data import prepare

  options = PipelineOptions(pipeline_args(runner, beam_args))
  with beam.Pipeline(options=options) as p:
    _ = (p
         | "Shards" >> beam.Create(list(tasks))
         | "Spread" >> beam.Reshuffle()
         | "Write" >> beam.Map(prepare.write_task)
         | "All" >> beam.combiners.ToList()
         | "Index" >> beam.Map(lambda _, o=out, n=num_shards: prepare.finish(o, n)))
  # The index step ran in a worker; the summary is read back from what it wrote.
  return prepare.read_summary(out)
