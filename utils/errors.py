"""Errors meant for people, and the wrapper that turns them into one line on stderr."""
import logging
import re
import sys


class UserError(Exception):
    """A problem with the user's input or files: the message says what to do."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message without terminal colour codes (its type's name
    when it has none), cut to `limit`."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


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
