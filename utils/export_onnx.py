"""`python3 -m utils.export_onnx`: the command line of utils/inference/export.py (kept at this path)."""
import sys

from utils.errors import run_cli
from utils.inference.export import get_args_parser, main

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
