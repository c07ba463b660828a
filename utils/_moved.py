"""Commands that moved in this release, kept under their old names until the next one.

`python3 -m utils.convert` and the others below still run; each says where it moved and runs the
new module by name (runpy), so the old location imports nothing of the layers above utils/.
"""
import runpy
import sys

MOVED = {
    "utils.convert": "tools.convert",
    "utils.average": "tools.average",
    "utils.export_onnx": "tools.export_onnx",
    "utils.inference.reframe": "tools.reframe",
}


def forward(old: str) -> None:
    """Run the command `old` now lives at as `__main__`, after a one-line note on stderr."""
    new = MOVED[old]
    print(f"note: python3 -m {old} is now python3 -m {new}; the old name goes in the next release",
          file=sys.stderr)
    runpy.run_module(new, run_name="__main__", alter_sys=True)
