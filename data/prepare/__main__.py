"""`python3 -m data.prepare <kind> ...`: see data/prepare/cli.py and docs/prepare.md."""
import sys

from common.errors import run_cli
from data.prepare.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
