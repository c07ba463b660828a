"""Videos as people analyse them: faces followed across frames, expressions smoothed over time,
a per-track summary, a timeline (CSV and plot) and the clip re-encoded with the answers drawn.

    stream = FaceStream(recognizer, smooth=0.5, detect_every=1)
    for frame in frames:                      # RGB uint8 (H, W, 3), with its time in seconds
        faces = stream.step(frame.image, frame.time)   # each face has .track and .smoothed

predict.py uses it for video files and webcams (`--smooth`, `--detect-every`, `--timeline`,
`--save-video`), serve.py for the web page's webcam (one stream per browser session).
"""
import csv
import logging
import os
import statistics
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from common.errors import UserError

from .annotate import draw_faces, emotion_colours, output_stem
from .faces import Detection
from .recognizer import Face
from .tracking import EmaSmoother, FaceTracker, appearance

log = logging.getLogger("predict")
MAX_PANELS = 12  # timeline.png plots this many tracks at most, the longest in view


class FaceStream:
    """Tracking and smoothing for the frames of one video, in order.

    Args:
        recognizer: an EmotionRecognizer.
        smooth: the smoothing time constant in seconds (0: none).
        detect_every: run the face detector on every k-th frame only; in between, the faces of
            the last frame keep their boxes (box_source "tracked") and only the model runs.
        tracker: the FaceTracker to use (default settings when None).
    """

    def __init__(self, recognizer, smooth: float = 0.5, detect_every: int = 1, tracker: Optional[FaceTracker] = None):
        if detect_every < 1:
            raise ValueError(f"detect_every must be 1 or more, got {detect_every}")
        self.recognizer, self.detect_every = recognizer, detect_every
        self.tracker = FaceTracker() if tracker is None else tracker
        self.smoother = EmaSmoother(smooth)
        self.frames = 0

    def step(self, image: np.ndarray, t: float) -> List[Face]:
        """The faces of the next frame (at `t` seconds), each with its track id and smoothed probabilities."""
        carried = [track for track in self.tracker.tracks if track.missed == 0]
        if self.frames % self.detect_every and carried:
            faces = self.recognizer.predict(image, [track.payload for track in carried])
        else:
            faces = self.recognizer.predict(image)
        self.frames += 1
        tracks = self.tracker.update([f.box for f in faces], [appearance(image, f.box) for f in faces])
        classes = self.recognizer.classes
        for face, track in zip(faces, tracks):
            track.payload = Detection(tuple(map(float, face.box)), face.score,
                                      None if face.landmarks is None else np.asarray(face.landmarks))
            face.track = track.id
            probs = np.array([face.probabilities[c] for c in classes])
            face.smoothed = dict(zip(classes, map(float, self.smoother.update(track.id, t, probs))))
        self.smoother.forget([track.id for track in self.tracker.tracks])
        return faces


@dataclass
class TrackRecord:
    """What a stream's summary and timeline keep of one track: its times and probabilities."""

    times: List[float] = field(default_factory=list)
    raw: List[np.ndarray] = field(default_factory=list)
    smoothed: List[np.ndarray] = field(default_factory=list)


class StreamRecord:
    """Every tracked face of one stream, for its summary and its timeline plot."""

    def __init__(self, name: str, classes: Sequence[str]):
        self.name, self.classes = name, list(classes)
        self.times: List[float] = []
        self.tracks: Dict[int, TrackRecord] = defaultdict(TrackRecord)

    def add(self, t: float, faces: Sequence[Face]) -> None:
        self.times.append(t)
        for face in faces:
            record = self.tracks[face.track]
            record.times.append(t)
            record.raw.append(np.array([face.probabilities[c] for c in self.classes]))
            record.smoothed.append(np.array([face.smoothed[c] for c in self.classes]))

    @property
    def step(self) -> float:
        """Seconds between analysed frames (their median gap); 0 with fewer than two frames."""
        gaps = np.diff(self.times)
        return float(statistics.median(gaps)) if len(gaps) else 0.0

    def summary(self) -> List[Tuple[int, float, Dict[str, float]]]:
        """Per track: (id, seconds in view, share of its frames in each smoothed top emotion), by id."""
        out = []
        for track, record in sorted(self.tracks.items()):
            tops = Counter(self.classes[int(np.argmax(s))] for s in record.smoothed)
            shares = {c: n / len(record.smoothed) for c, n in tops.most_common()}
            out.append((track, len(record.times) * self.step, shares))
        return out

    def format_summary(self) -> str:
        """The text predict.py prints when a video ends."""
        span = self.times[-1] - self.times[0] + self.step if self.times else 0.0
        n = len(self.tracks)
        lines = [f"{self.name}: {len(self.times)} frames over {span:.1f} s, {n} track{'' if n == 1 else 's'}"]
        for track, seconds, shares in self.summary():
            record = self.tracks[track]
            parts = ", ".join(f"{c} {100 * p:.0f} %" for c, p in shares.items())
            lines.append(f"  track {track}: {seconds:.1f} s in view ({record.times[0]:.1f}-{record.times[-1]:.1f} s); "
                         f"{parts}")
        return "\n".join(lines)


def timeline_columns(classes: Sequence[str]) -> List[str]:
    """timeline.csv's header (docs/predict.md)."""
    return (["input", "time_s", "frame", "track", "x", "y", "w", "h", "box_source"]
            + [f"raw_{c}" for c in classes] + [f"smoothed_{c}" for c in classes] + ["emotion", "raw_emotion"])


def _writable_folder(folder: Path, what: str) -> Path:
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file, not a folder: choose another place for the {what}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise UserError(f"{folder}: cannot write the {what} there ({err.strerror or err})") from None
    return folder


class Timeline:
    """`timeline.csv` (a row per frame and track, written as frames come, so an interrupted run
    keeps what it analysed) and `timeline.png` (each track's smoothed probabilities over time,
    drawn by `close`) for every video and webcam of a run."""

    def __init__(self, folder, classes: Sequence[str]):
        self.folder = _writable_folder(Path(folder), "timeline")
        self.classes = list(classes)
        self.csv_path, self.png_path = self.folder / "timeline.csv", self.folder / "timeline.png"
        self.file = open(self.csv_path, "w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(timeline_columns(self.classes))
        self.streams: List[StreamRecord] = []

    @staticmethod
    def check(folder) -> None:
        """Refuse a folder the timeline cannot be written to, before any work is done."""
        _writable_folder(Path(folder), "timeline")

    def add(self, name: str, frame: int, t: float, faces: Sequence[Face]) -> None:
        for face in faces:
            raw = [face.probabilities[c] for c in self.classes]
            smoothed = [face.smoothed[c] for c in self.classes]
            self.writer.writerow([name, f"{t:.4f}", frame, face.track, *face.box, face.box_source,
                                  *(f"{p:.6f}" for p in raw + smoothed), face.smoothed_emotion, face.emotion])
        self.file.flush()

    def close(self) -> List[Path]:
        """Finish the CSV and draw the plot; returns the files written."""
        self.file.close()
        if not any(s.tracks for s in self.streams):
            log.info("timeline: no face was tracked, so timeline.png is not drawn")
            return [self.csv_path]
        plot_timeline(self.streams, self.png_path)
        return [self.csv_path, self.png_path]


def plot_timeline(streams: Sequence[StreamRecord], path: Path, max_panels: int = MAX_PANELS) -> None:
    """One panel per track (the `max_panels` longest in view): each class's smoothed probability
    over time, in the web page's class colours, the raw top class as a strip of ticks above."""
    import matplotlib  # only for --timeline: predict.py starts faster without it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(s, k, r) for s in streams for k, r in s.tracks.items()]
    panels.sort(key=lambda p: -len(p[2].times))
    if len(panels) > max_panels:
        log.info("timeline.png: the %d longest tracks of %d (all are in timeline.csv)", max_panels, len(panels))
    panels = sorted(panels[:max_panels], key=lambda p: (streams.index(p[0]), p[1]))
    classes = streams[0].classes
    colours = emotion_colours(classes)
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.2 + 2.0 * len(panels)), squeeze=False)
    for ax, (stream, track, record) in zip(axes[:, 0], panels):
        times = np.asarray(record.times)
        smoothed = np.stack(record.smoothed)
        gap = 2.5 * stream.step if stream.step else np.inf
        breaks = np.flatnonzero(np.diff(times) > gap) + 1  # out of view: no line across the gap
        for k, c in enumerate(classes):
            for t, p in zip(np.split(times, breaks), np.split(smoothed[:, k], breaks)):
                ax.plot(t, p, color=colours[c], lw=1.6, label=c if t[0] == times[0] else None)
        tops = np.argmax(np.stack(record.raw), axis=1)
        ax.scatter(times, np.full(len(times), 1.06), c=[colours[classes[i]] for i in tops], marker="|", s=30,
                   clip_on=False)
        ax.set_ylim(0, 1.1)
        ax.set_xlim(stream.times[0], stream.times[-1] + stream.step)
        ax.set_ylabel("probability")
        ax.set_title(f"{Path(stream.name).name}, track {track}: {len(times) * stream.step:.1f} s in view "
                     f"(ticks: the frame's own top class; lines: smoothed)", fontsize=9, loc="left")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time (s)")
    handles = [plt.Line2D([], [], color=colours[c], lw=2) for c in classes]
    fig.legend(handles, classes, loc="upper center", ncol=len(classes), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"{path}: cannot write it ({err.strerror or err})") from None
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


class VideoOut:
    """`--save-video`: each analysed video re-encoded with its boxes, track ids and smoothed
    emotions drawn (annotate.draw_faces), at its frame rate over the frame stride, so it lasts as
    long as the source. A path with an extension (.mp4, .m4v, .mov, .mkv, .avi) is one file, for
    one video; a path without one, or an existing folder, gets `<video name>.mp4` per video."""

    def __init__(self, target, stride: int = 1):
        self.target, self.stride = Path(target), max(1, stride)
        self.single = bool(self.target.suffix) and not self.target.is_dir()
        if self.single and self.target.suffix.lower() not in CODECS:
            raise UserError(f"--save-video {self.target}: write .mp4, .m4v, .mov, .mkv or .avi, or give a folder")
        _writable_folder(self.target.parent if self.single else self.target, "video")
        self.writer, self.path, self.written = None, None, []

    def write(self, name: str, fps: float, image: np.ndarray, faces: Sequence[Face]) -> None:
        if self.writer is None:
            self._open(name, fps, image.shape[1], image.shape[0])
        self.writer.write(cv2.cvtColor(np.asarray(draw_faces(image, list(faces))), cv2.COLOR_RGB2BGR))

    def _open(self, name: str, fps: float, width: int, height: int) -> None:
        if self.single:
            if self.written:
                raise UserError(f"--save-video {self.target} holds one video and {self.written[0]} is in it: "
                                "give a folder for several")
            path = self.target
        else:
            stem, k = output_stem(name), 1
            path = self.target / f"{stem}.mp4"
            while path in self.written:
                k += 1
                path = self.target / f"{stem}_{k}.mp4"
        rate = (fps or 30.0) / self.stride
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*CODECS.get(path.suffix.lower(), "mp4v")),
                                 rate, (width, height))
        if not writer.isOpened():
            raise UserError(f"{path}: OpenCV cannot write this video")
        self.writer, self.path = writer, path
        self.written.append(path)

    def end(self) -> Optional[Path]:
        """Close the current video; returns its path (None if no frame was written)."""
        path = None
        if self.writer is not None:
            self.writer.release()
            path = self.path
        self.writer, self.path = None, None
        return path
