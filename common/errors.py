"""Errors meant for people, and the wrapper that turns them into one line on stderr.

Also the scripts' argument parser, whose errors are one line too, and the `type=` checks
that refuse an out-of-range value where it is parsed.
"""
import argparse
import logging
import math
import re
import sys
from typing import Callable, Optional


class UserError(Exception):
    """A problem with the user's input or files: the message says what to do."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message without terminal colour codes (its type's name
    when it has none); a line over `limit` characters is cut after its last whole sentence, or
    else its last whole word, and marked with "...".
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    if len(line) <= limit:
        return line
    head = line[:limit]
    sentence = max(head.rfind(". "), head.rfind("; "), head.rfind(": "))
    cut = sentence if sentence > limit // 3 else head.rfind(" ")
    return head[:cut if cut > 0 else limit].rstrip(" .;:,") + "..."


def run_cli(main, *args, **kwargs):
    """Run a script's main; a UserError becomes one line on stderr and exit code 2.

    Ctrl-C exits with 130 without a traceback. Anything else is a bug and keeps its traceback.
    """
    try:
        return main(*args, **kwargs)
    except UserError as err:
        logging.shutdown()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: <script>: <what> (see --help)` and exit code 2,
    like every other refusal of the scripts, instead of the whole usage text."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def number(kind: Callable = float, low: Optional[float] = None, high: Optional[float] = None,
           low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """An argparse `type=` that reads an `int` or finite `float` in [low, high] (an end is left
    out with `low_open`/`high_open`; None: unbounded) and refuses anything else in one line."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            raise argparse.ArgumentTypeError(f"{text} is out of range: {_range(low, high, low_open, high_open)}")
        return value
    return parse


def _range(low, high, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"must be {'over' if low_open else 'at least'} {low:g}"
    if low is None:
        return f"must be {'under' if high_open else 'at most'} {high:g}"
    return f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
