"""The emotion of every face in photos, from URLs, files, folders, globs, videos and webcams.

    python3 predict.py --params https://example.org/portrait.jpg photos/ clip.mp4
    python3 predict.py --params group.jpg --json --save-dir out/ --attention
    python3 predict.py --params clip.mp4 --timeline out/ --save-video out/clip.mp4

Prints a table per input (or one JSON line per input with --json, per frame for video). In a
video or webcam, faces are followed across frames (a track id each) and their probabilities
smoothed over time, and each video ends with a summary per track; see docs/predict.md. Each input that fails is one line on stderr and the others still run;
the exit code is 1 when any input failed, 2 when nothing could run at all.
"""
import argparse
import json
import logging
import sys
import time
from typing import Optional

from common.errors import ArgumentParser, UserError, number, run_cli
from inference.annotate import AnnotationWriter
from inference.detectors import DETECTORS
from inference.fallback import PADDED, WHOLE_IMAGE, add_fallback_args, fallback_from_args
from inference.fetch import add_limit_args, limits_from_args
from inference.recognizer import BACKENDS, DEFAULT_CHECKPOINT, ROOT, EmotionRecognizer
from inference.sources import Input, iter_inputs, record
from inference.tracking import FaceTracker
from inference.video import FaceStream, StreamRecord, Timeline, VideoOut


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
                   help="face detector: auto is tinyface-onet (the Tiny Face Detector's boxes, refined by MTCNN's last "
                        "stage) when MTCNN's weights are installed, else haar; none classifies each whole "
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
    p.add_argument("--smooth", type=number(float, 0), default=0.5,
                   help="videos and webcams: time constant in seconds of each face's moving average of "
                        "probabilities (0: none)")
    p.add_argument("--detect-every", type=number(int, 1), default=1,
                   help="videos and webcams: run the face detector on every N-th analysed frame; in between "
                        "faces keep their last boxes")
    p.add_argument("--max-missed", type=number(int, 0), default=60,
                   help="videos and webcams: a face's track ends after this many analysed frames without it")
    p.add_argument("--timeline", default=None, metavar="DIR",
                   help="videos and webcams: write DIR/timeline.csv (a row per frame and face) and "
                        "DIR/timeline.png (each face's expressions over time)")
    p.add_argument("--save-video", default=None, metavar="PATH",
                   help="videos and webcams: write each one with boxes, track ids and smoothed emotions drawn "
                        "(a .mp4/.avi file, or a folder for several)")
    add_limit_args(p)
    return p


# What the table says after the face count when the detector alone did not find the faces.
BOX_NOTES = {PADDED: " (found on the photo padded at its edges)",
             WHOLE_IMAGE: " (the whole image: the detector found none, the photo is face-shaped)"}


def format_faces(item: Input, faces, classes, ms: float) -> str:
    """A readable block: the input, then one row per face with every class's probability.

    Faces of a video frame are rows by track id, with the smoothed probabilities and emotion
    and the frame's own top class ("raw")."""
    title = item.name if item.frame is None else f"{item.name} frame {item.frame}"
    if item.time is not None:
        title += f" at {item.time:.2f} s"
    if not faces:
        return f"{title} ({ms:.1f} ms): no face found"
    width = max(7, *(len(c) for c in classes))
    tracked = faces[0].track is not None
    first = f"{'track':>5}" if tracked else f"{'#':>2}"
    emotion = f"{'emotion':<{width}}  {'raw':<{width}}" if tracked else f"{'emotion':<{width}}"
    head = f"  {first}  {'box x,y,w,h':<20}  {emotion}  " + " ".join(f"{c:>{width}}" for c in classes)
    rows = [f"{title} ({ms:.1f} ms): {len(faces)} face{'s' if len(faces) > 1 else ''}"
            f"{BOX_NOTES.get(faces[0].box_source, '')}{' (probabilities smoothed over time)' if tracked else ''}",
            head]
    for i, face in enumerate(faces, 1):
        box = ",".join(str(v) for v in face.box)
        if tracked:
            probs = " ".join(f"{face.smoothed[c]:>{width}.3f}" for c in classes)
            rows.append(f"  {face.track:>5}  {box:<20}  {face.smoothed_emotion:<{width}}  {face.emotion:<{width}}  "
                        f"{probs}")
        else:
            probs = " ".join(f"{face.probabilities[c]:>{width}.3f}" for c in classes)
            rows.append(f"  {i:>2}  {box:<20}  {face.emotion:<{width}}  {probs}")
    return "\n".join(rows)


log = logging.getLogger("predict")


def main(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("predict").setLevel(logging.INFO)  # ours only: the exporter's libraries are chatty
    if args.attention and not args.save_dir:
        raise UserError("--attention writes pictures: add --save-dir DIR")
    writer = video_out = None
    if args.save_dir:  # before the model loads: an unwritable folder is refused at once
        writer = AnnotationWriter(args.save_dir, attention=args.attention)
    if args.save_video:
        video_out = VideoOut(args.save_video, args.frame_stride)
    if args.timeline:  # the folder is checked now; the files are opened once the classes are known
        Timeline.check(args.timeline)
    recognizer = EmotionRecognizer(
        args.checkpoint, device=args.device, backend=args.backend,
        detector="none" if args.no_detect else args.detector, margin=args.margin, align=not args.no_align,
        grayscale=args.grayscale, threads=args.threads, cache_dir=args.cache_dir, max_pixels=args.max_pixels,
        tta=args.tta, fallback=fallback_from_args(args))
    if args.attention and not recognizer.has_attention:
        raise UserError(f"--attention needs a DAN checkpoint; {recognizer.checkpoint} is {recognizer.meta.model}")
    limits = limits_from_args(args)
    timeline = Timeline(args.timeline, recognizer.classes) if args.timeline else None
    videos = Videos(recognizer, args, timeline, video_out)
    failed = 0
    try:
        for item in iter_inputs(args.params, limits, args.max_pixels, args.frame_stride, args.max_frames):
            videos.begin(item)
            faces, ms = [], item.ms
            if item.image is not None:
                start = time.perf_counter()
                try:
                    faces = videos.predict(item)
                except UserError as err:
                    item.error = str(err)
                ms += (time.perf_counter() - start) * 1000
            predicted = item.image is not None and not item.error
            if predicted:
                try:
                    if writer is not None:
                        writer.write(item.name, item.frame, item.image, faces)
                    videos.record(item, faces)
                except UserError as err:  # this output is lost; the other inputs still run
                    item.error = str(err)
            if item.error:
                failed += 1
                print(f"error: {item.error}", file=sys.stderr, flush=True)
            if args.json:
                print(json.dumps(record(item, faces, ms)), flush=True)
            elif predicted:
                print(format_faces(item, faces, recognizer.classes, ms), flush=True)
    finally:  # also on Ctrl-C: a webcam session's summary, timeline and video are kept
        videos.end(quiet=args.json)
        if timeline is not None:
            for path in timeline.close():
                log.info("wrote %s", path)
    return 1 if failed else 0


class Videos:
    """predict.py's state for the video or webcam being read: its tracker and smoother, its
    summary, and its rows of the timeline and frames of the saved video."""

    def __init__(self, recognizer, args, timeline: Optional[Timeline], video_out: Optional[VideoOut]):
        self.recognizer, self.args, self.timeline, self.video_out = recognizer, args, timeline, video_out
        self.stream_id, self.stream, self.seen, self.saving = None, None, None, False

    def begin(self, item: Input) -> None:
        """Start a new stream's state when `item` is the first frame of another video (or no video)."""
        if item.stream != self.stream_id:
            self.end(quiet=self.args.json)
            self.stream_id = item.stream
            if item.stream is not None:
                self.stream = FaceStream(self.recognizer, self.args.smooth, self.args.detect_every,
                                         FaceTracker(max_missed=self.args.max_missed))
                self.seen = StreamRecord(item.name, self.recognizer.classes)
                self.saving = self.video_out is not None

    def predict(self, item: Input):
        if self.stream is None or item.stream is None:
            return self.recognizer.predict(item.image)
        return self.stream.step(item.image, item.time)

    def record(self, item: Input, faces) -> None:
        if self.seen is None or item.stream is None:
            return
        self.seen.add(item.time, faces)
        if self.timeline is not None:
            self.timeline.add(item.name, item.frame, item.time, faces)
        if self.saving:
            try:
                self.video_out.write(item.name, item.fps, item.image, faces)
            except UserError:
                self.saving = False  # said once, on this frame; the analysis goes on without the video
                raise

    def end(self, quiet: bool = False) -> None:
        """Close the stream being read: print its summary (unless `quiet`), finish its video."""
        if self.seen is not None:
            if not quiet and self.seen.times:
                print(self.seen.format_summary(), flush=True)
            if self.timeline is not None:
                self.timeline.streams.append(self.seen)
            if self.video_out is not None:
                path = self.video_out.end()
                if path is not None:
                    log.info("wrote %s", path)
        self.stream_id, self.stream, self.seen = None, None, None


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
