"""Convert published DAN weights into this project's self-describing checkpoints.

    python3 -m tools.convert --src rafdb_epoch21_acc0.897_bacc0.8275.pth --format dan-rafdb \\
        --dst Data/dan_rafdb.safetensors
    python3 predict.py --checkpoint Data/dan_rafdb.safetensors --params photo.jpg

`--dst` ending in `.safetensors` writes the shipped format (weights and metadata only);
`.pth` writes a `fer-checkpoint` dict. Both load with `utils.checkpoint.load_model`, so test.py and
predict.py take them as they are. The formats are listed in `FORMATS`; each fixes the class
names in the published model's output order. Source files are read with
`torch.load(weights_only=True)`: nothing in them is executed, and a file that needs more is
refused with the names of the objects it asks for.
"""
import argparse
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from common.errors import UserError, run_cli
from common.files import file_digest
from common.meta import ModelMeta
from common.paths import TINYFACE_WEIGHTS
from data.classes import normalize_class_name
from networks import build_model, model_meta
from networks.face_resnet import INPUT_SIZE as FACE_RESNET_SIZE
from networks.trunks import TRUNK_LAYERS
from tools.faceapi import LICENCE, TINYFACE_LICENCE, convert_faceapi, convert_tinyface
from utils.checkpoint import (check_keys, load_backbone, read_state_dict, save_checkpoint, save_safetensors,
                              short_keys, training_checkpoint)
from utils.misc import setup_logging

log = logging.getLogger("convert")

# Output orders of the published models, in canonical class names (data/classes.py).
RAFDB_ORDER = ("surprise", "fear", "disgust", "happy", "sad", "angry", "neutral")
AFFECTNET_ORDER = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "angry", "contempt")
EMOTION_RECOGNITION_ORDER = tuple(normalize_class_name(c)
                                  for c in ("anger", "disgust", "fear", "happy", "sadness", "surprise"))


@dataclass(frozen=True)
class Release:
    """A published weights file: how its outputs are labelled and where it comes from."""

    classes: Tuple[str, ...]  # canonical names in the order of the model's outputs
    origin: str  # where users find the file
    reported: str = ""  # the accuracy its authors report
    backbone_only: bool = False  # a ResNet-18 backbone: DAN's heads stay untrained


FORMATS: Dict[str, Release] = {
    "dan-rafdb": Release(RAFDB_ORDER, "yaoing/DAN: rafdb_epoch21_acc0.897_bacc0.8275.pth",
                         "RAF-DB accuracy 89.70%"),
    "dan-affectnet7": Release(AFFECTNET_ORDER[:7], "yaoing/DAN: affecnet7_epoch6_acc0.6569.pth",
                              "AffectNet-7 accuracy 65.69%"),
    "dan-affectnet8": Release(AFFECTNET_ORDER, "yaoing/DAN: affecnet8_epoch5_acc0.6209.pth",
                              "AffectNet-8 accuracy 62.09%"),
    "emotion-recognition-dan": Release(EMOTION_RECOGNITION_ORDER, "hyunyongPark/Emotion-Recognition: DAN_best.pth"),
    "msceleb-resnet18": Release(RAFDB_ORDER, "yaoing/DAN: resnet18_msceleb.pth", backbone_only=True),
}
FACEAPI_FORMAT = "faceapi-recognition"
TINYFACE_FORMAT = "faceapi-tinyface"

# The reference DAN keeps ResNet-18's children in an nn.Sequential called `features`:
# features.0 is conv1, features.4 is layer1, ..., features.7 is layer4 (TRUNK_LAYERS' order).
# Inside cat_head{i}: reference module path -> this project's, under heads.{i}.
HEAD_PARTS = {
    "sa.conv1x1": "spatial.conv1x1",
    "sa.conv_3x3": "spatial.conv3x3",
    "sa.conv_1x3": "spatial.conv1x3",
    "sa.conv_3x1": "spatial.conv3x1",
    "ca.attention": "channel.gate",
}


def reference_prefixes(num_heads: int) -> Dict[str, str]:
    """Module prefixes of the reference DAN mapped to this project's, e.g. "features.4." -> "trunk.layer1."."""
    prefixes = {f"features.{i}.": f"trunk.{name}." for i, name in enumerate(TRUNK_LAYERS)}
    for h in range(num_heads):
        prefixes.update({f"cat_head{h}.{ref}.": f"heads.{h}.{own}." for ref, own in HEAD_PARTS.items()})
    prefixes.update({"fc.": "fc.", "bn.": "bn."})
    return prefixes


def rename(keys, prefixes: Dict[str, str]) -> Dict[str, Optional[str]]:
    """Map each key through the first matching prefix; None for a key no prefix matches."""
    out = {}
    for key in keys:
        out[key] = next((new + key[len(old):] for old, new in prefixes.items() if key.startswith(old)), None)
    return out


def count_heads(state: Dict[str, torch.Tensor], path: Path) -> int:
    """N, from the highest cat_head{i} index in the keys."""
    heads = {int(m.group(1)) for k in state if (m := re.match(r"cat_head(\d+)\.", k))}
    if not heads:
        hint = (" It looks like a ResNet-18 backbone: use --format msceleb-resnet18."
                if "layer1.0.conv1.weight" in state else "")
        raise UserError(f"{path} has no cat_head* keys, so it is not a checkpoint of the reference DAN "
                        f"(its first keys: {short_keys(sorted(state), 4)}).{hint}")
    return max(heads) + 1


def load_reference_dan(state: Dict[str, torch.Tensor], fmt: str, path: Path) -> nn.Module:
    """A project DAN holding the weights of a reference-DAN state dict; every key accounted for.

    Raises:
        UserError: naming missing keys, unexpected keys and wrong shapes, in the file's own names.
    """
    classes = FORMATS[fmt].classes
    num_heads = count_heads(state, path)
    model = build_model("dan", num_classes=len(classes), num_heads=num_heads)
    own = model.state_dict()
    to_reference = {own_prefix: ref_prefix for ref_prefix, own_prefix in reference_prefixes(num_heads).items()}
    wanted = {ref: key for key, ref in rename(own, to_reference).items()}  # reference name -> project name
    # Files saved before PyTorch 0.4.1 lack BatchNorm's step counter; it takes no part in inference.
    absent_counters = [k for k in wanted if k.endswith("num_batches_tracked") and k not in state]
    if absent_counters:
        log.info("%s has no num_batches_tracked (an older PyTorch wrote it); set to 0", path)
        state = {**state, **{k: torch.zeros((), dtype=torch.long) for k in absent_counters}}
    check_keys({ref: own[key] for ref, key in wanted.items()}, state, path,
               f"the {fmt} DAN ({num_heads} heads, {len(classes)} classes)", _format_hint(state, fmt))
    model.load_state_dict({wanted[k]: v for k, v in state.items()})
    return model


def _format_hint(state: Dict[str, torch.Tensor], fmt: str) -> str:
    """When the classifier has another number of outputs, the formats that have that many."""
    fc = state.get("fc.weight")
    if fc is None or fc.dim() != 2 or fc.shape[0] == len(FORMATS[fmt].classes):
        return ""
    fits = [name for name, r in FORMATS.items() if not r.backbone_only and len(r.classes) == fc.shape[0]]
    return (f". The file's classifier has {fc.shape[0]} outputs but {fmt} has {len(FORMATS[fmt].classes)} classes"
            + (f"; did you mean --format {' or '.join(fits)}?" if fits else ""))


def load_msceleb_dan(src: Path, classes: Sequence[str], num_heads: int, seed: int) -> nn.Module:
    """A DAN whose trunk holds an MS-Celeb-1M ResNet-18 and whose heads and classifier are untrained."""
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise UserError(f"--classes needs at least two distinct names, got {list(classes)}")
    if num_heads < 1:
        raise UserError(f"--num-heads must be at least 1, got {num_heads}")
    torch.manual_seed(seed)
    # The loader train.py --pretrained uses, so the two read the file the same way.
    model = build_model("dan", num_classes=len(classes), num_heads=num_heads)
    load_backbone(model, src)
    return model


def convert(src, fmt: str, dst, classes: Optional[Sequence[str]] = None, num_heads: Optional[int] = None,
            half: bool = False, seed: int = 0) -> ModelMeta:
    """Read a published file in format `fmt` and write it to `dst` in this project's format.

    Args:
        src: the published file.
        fmt: a key of FORMATS.
        dst: output path ending in .safetensors or .pth.
        classes: msceleb-resnet18 only: class names (default the RAF-DB classes in their order).
        num_heads: msceleb-resnet18 only: DAN's heads N, default 4 (the other formats read N from the file).
        half: store floating tensors as fp16 (.safetensors only).
        seed: msceleb-resnet18 only: seeds the untrained heads' initialisation.

    Returns:
        The metadata written with the weights.
    """
    src, dst = Path(src), Path(dst)
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    release = FORMATS[fmt]
    if dst.suffix not in (".safetensors", ".pth"):
        raise UserError(f"--dst {dst} must end in .safetensors (shipped model) or .pth (checkpoint)")
    if half and dst.suffix != ".safetensors":
        raise UserError("--half applies to .safetensors outputs only")
    if not release.backbone_only and (classes is not None or num_heads is not None):
        raise UserError(f"--classes and --num-heads apply to msceleb-resnet18 only; {fmt} fixes its classes "
                        "and its number of heads is read from the file")
    if not src.is_file():
        raise UserError(f"--src {src}: no such file")

    if release.backbone_only:
        names = [normalize_class_name(c) for c in (classes or release.classes)]
        model = load_msceleb_dan(src, names, num_heads or 4, seed)
    else:
        names = list(release.classes)
        model = load_reference_dan(read_state_dict(src, "use it directly, no conversion needed"), fmt, src)

    # All of these releases were trained on 224x224 crops with ImageNet normalisation: the ResNet-18
    # trunk's registry input (networks.trunks).
    meta = model_meta("dan", {"num_classes": model.num_classes, "num_heads": model.num_heads}, names,
                      converted_from={"file": src.name, "format": fmt, "sha256": file_digest(src),
                                      "origin": release.origin, "reported": release.reported,
                                      "heads_trained": not release.backbone_only})
    state = model.state_dict()
    if dst.suffix == ".safetensors":
        save_safetensors(state, meta, dst, half=half)
    else:
        save_checkpoint(training_checkpoint(meta, state), dst)
    return meta


def get_args_parser() -> argparse.ArgumentParser:
    formats = "; ".join(f"{name}: {r.origin.split(': ')[-1]}" for name, r in FORMATS.items())
    p = argparse.ArgumentParser(description="Convert published DAN weights to this project's checkpoint format.",
                                epilog=f"formats and their files: {formats}")
    p.add_argument("--src", required=True, help="the downloaded file")
    p.add_argument("--format", required=True, choices=[*FORMATS, FACEAPI_FORMAT, TINYFACE_FORMAT],
                   help=f"which published file --src is; {FACEAPI_FORMAT}: face-api's face-recognition network "
                        "(the npm tarball, its model/ folder or the manifest), written as a trunk for "
                        f"train.py --trunk face_resnet --pretrained; {TINYFACE_FORMAT}: face-api's Tiny Face "
                        "Detector (same sources), written as the ONNX file of predict.py's fast detector")
    p.add_argument("--dst", required=True, help="output: .safetensors (shipped model) or .pth (checkpoint)")
    p.add_argument("--classes", nargs="+", default=None,
                   help="msceleb-resnet18 only: class names of the untrained classifier "
                        f"(default: {' '.join(RAFDB_ORDER)})")
    p.add_argument("--num-heads", type=int, default=None, help="msceleb-resnet18 only: DAN's heads (default: 4)")
    p.add_argument("--half", action="store_true", help="store fp16 weights (.safetensors only; half the size)")
    p.add_argument("--seed", type=int, default=0,
                   help="msceleb-resnet18 only: seed of the heads' initialisation (default: 0)")
    return p


def main(args: argparse.Namespace) -> Union[ModelMeta, Dict[str, Any]]:
    setup_logging()
    if args.format == FACEAPI_FORMAT:
        return convert_trunk(args)
    if args.format == TINYFACE_FORMAT:
        return convert_detector(args)
    meta = convert(args.src, args.format, args.dst, args.classes, args.num_heads, args.half, args.seed)
    untrained = ("; its heads are untrained (to train, give the original file to train.py --pretrained)"
                 if FORMATS[args.format].backbone_only else "")
    log.info("wrote %s: DAN with %d heads, classes in output order %s, %dx%d input, ImageNet normalisation%s",
             args.dst, meta.model_args["num_heads"], ", ".join(meta.classes), meta.img_size, meta.img_size, untrained)
    release = FORMATS[args.format]
    if not release.backbone_only:
        # The file holds no class names: the order is what --format says, and a wrong --format goes unnoticed.
        other = _named_format(Path(args.src).name)
        if other and other != args.format:
            log.warning("%s is named like a %s file, but --format %s was given: if it is one, its labels are now "
                        "in the wrong order; convert it again with --format %s", args.src, other, args.format, other)
        expected = f"near its reported {release.reported}" if release.reported else "well above chance"
        log.info("label order assumed from --format %s (%s), not read from the file; check it on that release's "
                 "test faces: python3 test.py --checkpoint %s --data DIR should score %s (a wrong order scores "
                 "near chance)", args.format, release.origin, args.dst, expected)
    log.info("next: python3 predict.py --checkpoint %s --params PHOTO, or python3 test.py --checkpoint %s "
             "--data DIR", args.dst, args.dst)
    return meta


def _refuse_model_options(args: argparse.Namespace, writes: str) -> None:
    """--classes, --num-heads and --half describe a DAN model: refused for a format that writes `writes`."""
    if args.classes is not None or args.num_heads is not None or args.half:
        raise UserError(f"--classes, --num-heads and --half do not apply to {args.format}: it writes {writes}")


def convert_trunk(args: argparse.Namespace) -> Dict[str, Any]:
    """--format faceapi-recognition: write the face-recognition trunk (float32, with its embedding layer)."""
    _refuse_model_options(args, "a trunk (float32, so that it reproduces face-api's embeddings)")
    meta = convert_faceapi(args.src, args.dst)
    log.info("wrote %s: dlib's face-recognition ResNet from %s, %dx%d RGB input, float32; licence: %s",
             args.dst, args.src, FACE_RESNET_SIZE, FACE_RESNET_SIZE, LICENCE)
    log.info("next: python3 train.py --model dan --trunk face_resnet --pretrained %s --img-size %d ...",
             args.dst, FACE_RESNET_SIZE)
    return meta


def convert_detector(args: argparse.Namespace) -> Dict[str, Any]:
    """--format faceapi-tinyface: write face-api's Tiny Face Detector as ONNX (Data/tiny_face_detector.onnx)."""
    _refuse_model_options(args, "a face detector")
    meta = convert_tinyface(args.src, args.dst)
    log.info("wrote %s: face-api's Tiny Face Detector from %s; licence: %s", args.dst, args.src, TINYFACE_LICENCE)
    log.info("predict.py, test.py's photo mode and serve.py read it from %s (the file shipped there is this "
             "conversion)", TINYFACE_WEIGHTS)
    return meta


def _named_format(name: str) -> Optional[str]:
    """The format whose published file name `name` resembles (by its dataset's name), or None."""
    name = name.lower().replace("-", "").replace("_", "")
    for fmt, words in (("dan-rafdb", ("rafdb",)), ("dan-affectnet7", ("affecnet7", "affectnet7")),
                       ("dan-affectnet8", ("affecnet8", "affectnet8"))):
        if any(word in name for word in words):
            return fmt
    return None


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
