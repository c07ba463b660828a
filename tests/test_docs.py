"""The README and docs/ name only what exists: every project path they mention is a file or folder
of the repository, every link between pages resolves, and every `--flag` of a command they show
is accepted by that command (its argparse help lists it).

    python3 tests/test_docs.py        # prints what is missing, as the test does

Paths under Data/ and ../shared are left alone (datasets and runs are the user's), as are
placeholders (`runs/dan-.../best.pth`, `<name>`, glob patterns).
"""
import functools
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE_DIRS = ("utils", "data", "networks", "benchmarks", "docs", "tests", ".ci")
PATH = re.compile(r"(?<![\w./~-])((?:%s)/[\w./-]*\w|(?:train|test|predict|serve)\.py)(?![\w/*<>{}])"
                  % "|".join(re.escape(d) for d in CODE_DIRS))
LINK = re.compile(r"\]\(([^)\s]+)\)")
COMMAND = re.compile(r"(?:python3?|torchrun(?: --\S+)*)\s+(-m\s+[\w.]+|[\w/]+\.py)((?:[^\n`|#]|\\\n)*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
SUBCOMMANDS = {"data.prepare"}  # `python3 -m data.prepare <kind> ...`: each kind has its own options


def mentioned_paths(text: str) -> Iterator[str]:
    for match in PATH.finditer(text):
        path = match.group(1).rstrip(".")
        if "..." not in path and not re.search(r"[<>*{]", path):
            yield path


def broken_links(page: Path, text: str) -> Iterator[str]:
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#")[0]
        if path and not (page.parent / path).exists():
            yield target


def commands(text: str) -> Iterator[Tuple[str, Optional[str], List[str]]]:
    """(script or module, subcommand, flags) of every command line shown."""
    for match in COMMAND.finditer(text):
        target, rest = match.group(1), match.group(2).replace("\\\n", " ")
        module = target.split()[-1] if target.startswith("-m") else None
        script = module or target
        if module is None and not (ROOT / script).is_file():
            continue  # a path of the user's, or an example of another tool
        rest = re.sub(r"\"[^\"]*\"|'[^']*'", "", rest)  # a quoted argument is another program's: --server-args "..."
        words = rest.split()
        sub = words[0] if module in SUBCOMMANDS and words and not words[0].startswith("-") else None
        if sub is not None and not re.fullmatch(r"[a-z0-9]+", sub):
            continue  # a placeholder such as <kind>
        yield script, sub, FLAG.findall(rest)


@functools.lru_cache(maxsize=None)
def help_text(script: str, sub: Optional[str] = None) -> str:
    """The --help of a script or module (with its subcommand), from a fresh interpreter."""
    argv = [sys.executable, *(["-m", script] if not script.endswith(".py") else [script]), *([sub] if sub else []),
            "--help"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


def problems() -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {}
    for page in PAGES:
        text = page.read_text()
        name = str(page.relative_to(ROOT))
        missing = sorted({p for p in mentioned_paths(text) if not (ROOT / p).exists()})
        missing += [f"link {t}" for t in broken_links(page, text)]
        for script, sub, flags in commands(text):
            if not flags:
                continue
            known = set(FLAG.findall(help_text(script, sub)))
            missing += [f"{script}{' ' + sub if sub else ''} {f}" for f in flags if f not in known and f != "--help"]
        if missing:
            found[name] = sorted(set(missing))
    return found


def test_docs_name_only_paths_links_and_flags_that_exist():
    assert problems() == {}


def test_the_checker_catches_a_missing_path_a_broken_link_and_an_unknown_flag(tmp_path):
    text = ("See `utils/nowhere.py` and [the page](absent.md#x); "
            "`python3 predict.py --params a.jpg --no-such-flag` and `python3 predict.py --json`; "
            "`python3 benchmarks/bench_serve.py --server-args \"--threads 1\"`.")
    assert list(mentioned_paths(text)) == ["utils/nowhere.py", "predict.py", "predict.py", "benchmarks/bench_serve.py"]
    assert list(broken_links(ROOT / "docs" / "x.md", text)) == ["absent.md#x"]
    flags = [f for script, _, found in commands(text) for f in found]
    assert flags == ["--params", "--no-such-flag", "--json", "--server-args"]  # not the server's --threads
    known = set(FLAG.findall(help_text("predict.py")))
    assert "--json" in known and "--params" in known and "--no-such-flag" not in known


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 170


if __name__ == "__main__":
    for page, items in problems().items():
        print(page)
        for item in items:
            print("  ", item)
