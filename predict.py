"""The emotion of every face in photos, from URLs, files, folders, globs, videos and webcams.

    python3 predict.py --params https://example.org/portrait.jpg photos/ clip.mp4
    python3 predict.py --params group.jpg --json --save-dir out/ --attention

Prints a table per input (or one JSON line per input with --json, per frame for video);
see docs/predict.md. Each input that fails is one line on stderr and the others still run;
the exit code is 1 when any input failed, 2 when nothing could run at all.
"""
import argparse
import json
import logging
import sys
import time

from utils.errors import ArgumentParser, UserError, number, run_cli
from utils.inference.annotate import AnnotationWriter
from utils.inference.detectors import DETECTORS
from utils.inference.fallback import PADDED, WHOLE_IMAGE, add_fallback_args, fallback_from_args
from utils.inference.fetch import add_limit_args, limits_from_args
from utils.inference.recognizer import BACKENDS, DEFAULT_CHECKPOINT, ROOT, EmotionRecognizer
from utils.inference.sources import Input, iter_inputs, record


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Find every face in images and tell its expression.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--params", nargs="+", required=True, metavar="INPUT",
                   help="http(s) URLs, image files, folders (searched recursively), glob patterns, "
                        "video files, or a webcam index such as 0")
    p.add_argument("--checkpoint", default=None,
                   help=f"model file: .safetensors, .pth or an exported .onnx "
                        f"(default {DEFAULT_CHECKPOINT.relative_to(ROOT)})")
    p.add_argument("--detector", default="auto", choices=sorted(DETECTORS),
                   help="face detector: auto is mtcnn when installed, else haar; none classifies each whole "
                        "image as one face")
    p.add_argument("--no-detect", action="store_true", help="same as --detector none")
    add_fallback_args(p)
    p.add_argument("--margin", type=number(float, 0), default=0.2,
                   help="space added around each face box, per side, as a fraction of the box")
    p.add_argument("--no-align", action="store_true", help="do not rotate faces upright by the eyes")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="average each face's prediction with its mirror image's (twice the model's work; "
                        "--no-tta for one pass)")
    p.add_argument("--grayscale", action=argparse.BooleanOptionalAction, default=None,
                   help="grey face crops (default: as the checkpoint's metadata says, else grey)")
    p.add_argument("--json", action="store_true", help="one JSON object per input (per frame) on stdout")
    p.add_argument("--save-dir", default=None, help="write each image annotated with boxes and probabilities")
    p.add_argument("--attention", action="store_true",
                   help="with --save-dir and a DAN model: also write each head's attention map per face")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda runs the PyTorch model)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto: ONNX Runtime on the CPU (exported once, then cached), PyTorch on a GPU")
    p.add_argument("--threads", type=number(int, 1), default=2, help="CPU threads for the model")
    p.add_argument("--cache-dir", default=None, help="ONNX export cache (default $FER_CACHE_DIR or ~/.cache/fer)")
    p.add_argument("--frame-stride", type=number(int, 1), default=1,
                   help="videos and webcams: classify every N-th frame")
    p.add_argument("--max-frames", type=number(int, 1), default=None, help="videos and webcams: stop after this many")
    add_limit_args(p)
    return p


# What the table says after the face count when the detector alone did not find the faces.
BOX_NOTES = {PADDED: " (found on the photo padded at its edges)",
             WHOLE_IMAGE: " (the whole image: the detector found none, the photo is face-shaped)"}


def format_faces(item: Input, faces, classes, ms: float) -> str:
    """A readable block: the input, then one row per face with every class's probability."""
    title = item.name if item.frame is None else f"{item.name} frame {item.frame}"
    if not faces:
        return f"{title} ({ms:.1f} ms): no face found"
    width = max(7, *(len(c) for c in classes))
    head = f"  {'#':>2}  {'box x,y,w,h':<20}  {'emotion':<{width}}  " + " ".join(f"{c:>{width}}" for c in classes)
    rows = [f"{title} ({ms:.1f} ms): {len(faces)} face{'s' if len(faces) > 1 else ''}"
            f"{BOX_NOTES.get(faces[0].box_source, '')}", head]
    for i, face in enumerate(faces, 1):
        box = ",".join(str(v) for v in face.box)
        probs = " ".join(f"{face.probabilities[c]:>{width}.3f}" for c in classes)
        rows.append(f"  {i:>2}  {box:<20}  {face.emotion:<{width}}  {probs}")
    return "\n".join(rows)


def main(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("predict").setLevel(logging.INFO)  # ours only: the exporter's libraries are chatty
    if args.attention and not args.save_dir:
        raise UserError("--attention writes pictures: add --save-dir DIR")
    writer = None
    if args.save_dir:  # before the model loads: an unwritable folder is refused at once
        writer = AnnotationWriter(args.save_dir, attention=args.attention)
    recognizer = EmotionRecognizer(
        args.checkpoint, device=args.device, backend=args.backend,
        detector="none" if args.no_detect else args.detector, margin=args.margin, align=not args.no_align,
        grayscale=args.grayscale, threads=args.threads, cache_dir=args.cache_dir, max_pixels=args.max_pixels,
        tta=args.tta, fallback=fallback_from_args(args))
    if args.attention and not recognizer.has_attention:
        raise UserError(f"--attention needs a DAN checkpoint; {recognizer.checkpoint} is {recognizer.meta['model']}")
    limits = limits_from_args(args)
    failed = 0
    for item in iter_inputs(args.params, limits, args.max_pixels, args.frame_stride, args.max_frames):
        faces, ms = [], item.ms
        if item.image is not None:
            start = time.perf_counter()
            try:
                faces = recognizer.predict(item.image)
            except UserError as err:
                item.error = str(err)
            ms += (time.perf_counter() - start) * 1000
        predicted = item.image is not None and not item.error
        if writer is not None and predicted:
            try:
                writer.write(item.name, item.frame, item.image, faces)
            except UserError as err:  # this picture is lost; the other inputs still run
                item.error = str(err)
        if item.error:
            failed += 1
            print(f"error: {item.error}", file=sys.stderr, flush=True)
        if args.json:
            print(json.dumps(record(item, faces, ms)), flush=True)
        elif predicted:
            print(format_faces(item, faces, recognizer.classes, ms), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
