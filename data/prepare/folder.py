"""`folder`: any class-folder dataset (JAFFE, KDEF, CK+48, a user's own photos).

Reads `<src>/<class>/<image>` (images may sit in sub-folders), or `<src>/<split>/<class>/<image>`
when the top folders are split names (train, val, test), keeping those splits.
"""
import re
from pathlib import Path
from typing import Optional

from common.errors import UserError
from data.classes import normalize_class_name
from data.prepare.common import Problems, Sample, image_files, source_name, sub_folders

_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                "validation": "val", "test": "test", "testing": "test"}
# Folder names that say nothing about the dataset; its parent's name is used instead.
_GENERIC_NAMES = {"all", "data", "images", "dataset", "train", "basic"}


def add_arguments(parser) -> None:
    """Options of the `folder` kind."""
    parser.add_argument("--subject-regex", default=None,
                        help="regular expression whose first group (or group 'subject') is the subject in a "
                             "file name, e.g. '^(S\\d+)_' for CK+48; makes every split subject-disjoint")
    parser.add_argument("--source", default=None,
                        help="source name recorded in the manifest (default: the --src folder's name)")


def read(args, problems: Problems) -> list[Sample]:
    """Samples of a class-folder dataset; split None unless the folders carry one."""
    root = Path(args.src)
    source = source_name(args.source or default_source(root))
    return read_class_folders(root, source, compile_subject_regex(args.subject_regex), problems)


def default_source(root: Path) -> str:
    """The dataset's name from its folder: `ck_plus_48/all` → 'ck_plus_48'."""
    root = root.resolve()
    return root.parent.name if root.name.lower() in _GENERIC_NAMES else root.name


def compile_subject_regex(text: Optional[str]) -> Optional[re.Pattern]:
    """The compiled --subject-regex, or None."""
    if not text:
        return None
    try:
        return re.compile(text)
    except re.error as err:
        raise UserError(f"--subject-regex {text!r} is not a valid regular expression ({err})") from None


def read_class_folders(root: Path, source: str, subject_regex: Optional[re.Pattern],
                       problems: Problems) -> list[Sample]:
    """Samples of `root/<class>/...` or `root/<split>/<class>/...`."""
    if not root.is_dir():
        raise UserError(f"--src {root} is not a folder: give the folder that holds one folder per class")
    folders = sub_folders(root)
    if not folders:
        raise UserError(f"{root} holds no class folders: give the folder that holds one folder per class")
    if all(f.name.lower() in _SPLIT_NAMES for f in folders):
        samples = []
        for folder in folders:
            split = _SPLIT_NAMES[folder.name.lower()]
            samples += _read_classes(folder, split, source, subject_regex, problems)
        return samples
    return _read_classes(root, None, source, subject_regex, problems)


def _read_classes(root: Path, split: Optional[str], source: str, subject_regex: Optional[re.Pattern],
                  problems: Problems) -> list[Sample]:
    samples = []
    for class_dir in sub_folders(root):
        label = normalize_class_name(class_dir.name)
        for path in image_files(class_dir):
            subject = ""
            if subject_regex is not None:
                subject = subject_of(path.name, subject_regex)
                if not subject:
                    problems.report(str(path), f"file name does not match --subject-regex {subject_regex.pattern!r}")
                    continue
            name = "-".join(path.relative_to(class_dir).parts)
            samples.append(Sample(name=name, label=label, split=split, source=source,
                                  original=str(path), subject=subject, path=path))
    return samples


def subject_of(name: str, subject_regex: re.Pattern) -> str:
    """The subject in a file name: group 'subject', else group 1, else the whole match; '' if none."""
    match = subject_regex.search(name)
    if match is None:
        return ""
    if "subject" in subject_regex.groupindex:
        return match.group("subject") or ""
    return (match.group(1) if subject_regex.groups else match.group(0)) or ""
