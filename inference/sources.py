"""What predict.py reads: URLs, image files, folders, glob patterns, videos and webcams.

`iter_inputs` turns each argument into a stream of `Input`s, one per image or video frame.
A failure becomes an `Input` with an error instead of an image, so one bad argument never
stops the others.
"""
import glob
import itertools
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np

from common.errors import UserError
from data.images import MAX_PIXELS, decode_image
from data.layout import is_image_file

from .fetch import FetchLimits, fetch_image, is_url

log = logging.getLogger(__name__)
MAX_WEBCAM = 2**31 - 1  # OpenCV takes a C int
_STREAMS = itertools.count(1)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


@dataclass
class Input:
    """One image to predict on, or why there is none.

    Attributes:
        name: the argument it came from (a path, a URL, "0" for the first webcam).
        image: RGB uint8 (H, W, 3), None on error.
        error: one sentence for people, None on success.
        frame: the frame index for videos and webcams, None for still images.
        ms: time spent fetching and decoding.
        time: for a frame, seconds since the stream began: the frame index over the video's frame
            rate, or the clock for a webcam.
        stream: for a frame, a number shared by the frames of one video or webcam and no other.
        fps: for a frame, the stream's frame rate as OpenCV reports it (0 when unknown).
    """

    name: str
    image: Optional[np.ndarray] = None
    error: Optional[str] = None
    frame: Optional[int] = None
    ms: float = 0.0
    time: Optional[float] = None
    stream: Optional[int] = None
    fps: float = 0.0


def record(item: Input, faces, ms: float) -> dict:
    """The JSON object for one input (schema in docs/predict.md): a line of `predict.py --json`,
    and serve.py's answer to POST /predict."""
    out = {"input": item.name, "frame": item.frame, "faces": [f.to_dict() for f in faces],
           "error": item.error, "ms": round(ms, 2)}
    if item.time is not None:
        out["time"] = round(item.time, 4)
    if item.image is not None:
        out["size"] = [int(item.image.shape[1]), int(item.image.shape[0])]
    return out


def is_video_file(path) -> bool:
    return str(path).lower().endswith(VIDEO_EXTENSIONS)


def iter_inputs(params: Sequence[str], limits: FetchLimits = FetchLimits(), max_pixels: int = MAX_PIXELS,
                frame_stride: int = 1, max_frames: Optional[int] = None) -> Iterator[Input]:
    """Expand every argument and yield its images in order (folders and globs sorted by path)."""
    for param in params:
        try:
            if not param.strip():  # Path("") is the working directory: every image under it
                yield Input(param, error="an empty input: give a file, folder, glob pattern, URL or webcam index")
            elif is_url(param):
                yield _timed(param, lambda: np.asarray(fetch_image(param, limits, max_pixels)))
            elif re.fullmatch(r"\d+", param) and not Path(param).exists():
                if int(param) > MAX_WEBCAM:
                    yield Input(param, error=f"{param}: no such webcam (indexes run from 0 to {MAX_WEBCAM})")
                else:
                    yield from iter_frames(param, int(param), frame_stride, max_frames)
            elif Path(param).is_dir():
                files = sorted(p for p in Path(param).rglob("*") if p.is_file() and is_image_file(p))
                if not files:
                    yield Input(param, error=f"{param}: no images in this folder")
                for path in files:
                    yield _load_file(str(path), max_pixels)
            elif Path(param).is_file():
                yield from _from_file(param, max_pixels, frame_stride, max_frames)
            elif any(c in param for c in "*?["):
                matches = sorted(p for p in expand_glob(param) if Path(p).is_file())
                if not matches:
                    yield Input(param, error=f"{param}: no file matches this pattern")
                for path in matches:
                    yield from _from_file(path, max_pixels, frame_stride, max_frames)
            elif re.match(r"^[a-z][a-z0-9+.-]*://", param, re.I):
                yield Input(param, error=f"{param}: only http and https URLs are fetched")
            else:
                yield Input(param, error=f"{param}: no such file or folder")
        except UserError as err:
            yield Input(param, error=str(err))


def expand_glob(pattern: str):
    """The paths a glob pattern matches; `**` never enters a linked directory (glob.glob follows
    links, so a link to a parent folder made it run without end, or list each image many times)."""
    if "**" not in pattern:
        return glob.glob(pattern)
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = Path(*parts[:first]) if first else Path(".")
    # pathlib's ** does not follow links to directories (Python 3.13 names it follow_symlinks=None)
    return [str(p) for p in root.glob(str(Path(*parts[first:])))]


def _from_file(path: str, max_pixels: int, frame_stride: int, max_frames: Optional[int]) -> Iterator[Input]:
    """A video's frames, or the one image a file holds."""
    if is_video_file(path):
        yield from iter_frames(path, path, frame_stride, max_frames)
    else:
        yield _load_file(path, max_pixels)


def _timed(name: str, load) -> Input:
    start = time.perf_counter()
    try:
        image = load()
    except UserError as err:
        return Input(name, error=str(err), ms=(time.perf_counter() - start) * 1000)
    return Input(name, image=image, ms=(time.perf_counter() - start) * 1000)


def _load_file(path: str, max_pixels: int) -> Input:
    return _timed(path, lambda: np.asarray(decode_image(path, max_pixels)))


def iter_frames(name: str, source, frame_stride: int = 1, max_frames: Optional[int] = None) -> Iterator[Input]:
    """Every `frame_stride`-th frame of a video file or webcam (an int index), as RGB.

    Stops at the end of the video, after `max_frames` yielded frames, or on Ctrl-C.
    """

    capture = cv2.VideoCapture(source)
    expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if isinstance(source, str) else 0
    if not capture.isOpened():
        what = "webcam" if isinstance(source, int) else "video"
        yield Input(name, error=f"{name}: cannot open this {what} with OpenCV")
        return
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if math.isfinite(fps) and 0 < fps < 1000 else 0.0
    live = isinstance(source, int)  # a webcam's frames are timed by the clock, a file's by its rate
    stream, stride, index, given, began = next(_STREAMS), max(1, frame_stride), 0, 0, time.monotonic()
    try:
        while max_frames is None or given < max_frames:
            start = time.perf_counter()
            if not capture.grab():
                break
            if index % stride == 0:
                ok, frame = capture.retrieve()
                if ok:
                    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                    if live or not fps:
                        at = time.monotonic() - began if live else capture.get(cv2.CAP_PROP_POS_MSEC) / 1000
                    else:
                        at = index / fps
                    yield Input(name, image=rgb, frame=index, ms=(time.perf_counter() - start) * 1000,
                                time=at, stream=stream, fps=fps)
                    given += 1
            index += 1
    finally:
        capture.release()
    if index == 0:
        yield Input(name, error=f"{name}: no frame could be read")
    elif 0 < index < expected and (max_frames is None or given < max_frames):
        log.warning("%s: read %d of its %d frames; the rest could not be decoded (a truncated or damaged "
                    "file?)", name, index, expected)
