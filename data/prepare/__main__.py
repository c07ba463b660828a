"""`python3 -m data.prepare <kind> ...`: see data/prepare/cli.py and docs/prepare.md."""
import sys

from data.prepare.cli import main
from utils.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
