"""argparse value types that check ranges, so that a bad number is a one-line usage error
naming the option (``argparse`` prints ``argument --x: invalid positive int value: '-1'``)."""

from __future__ import annotations

import argparse


def _int_at_least(minimum: int, what: str):
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f"{value} is not {what} (>= {minimum})")
    return value

  parse.__name__ = what.replace(" ", "_")
  return parse


positive_int = _int_at_least(1, "a positive integer")
nonnegative_int = _int_at_least(0, "a non-negative integer")
