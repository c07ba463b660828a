"""Synthetic videos with known truth: faces pasted on a background and moved along paths.

Used by benchmarks/bench_video.py (tracking and speed), tests/test_video.py and the timeline
picture in docs/predict.md. A face is a `Sprite` (an RGB picture of a head); a `Path` says where
its centre is at each frame, or None while it is out of view. `render` returns the frames and,
per frame, each visible sprite's rectangle, which the benchmark matches detections against.

    python3 -m benchmarks.clips out.mp4 --scene crossing     # write one to look at
"""
import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "Data" / "samples" / "astronaut.jpg"
ASTRONAUT_HEAD = (180, 0, 200, 200)  # x, y, w, h: the head with some room around it, in the 512x512 photo

Centre = Optional[Tuple[float, float]]


@dataclass
class Sprite:
    """A head to paste: RGB uint8 (h, w, 3), and a name for the truth tables."""

    name: str
    image: np.ndarray


@dataclass
class Actor:
    """A sprite on a path: `where(frame)` gives its centre in pixels, or None when out of view;
    `image(frame)` may change the picture over time (an expression that changes)."""

    sprite: Sprite
    where: Callable[[int], Centre]
    image: Optional[Callable[[int], np.ndarray]] = None

    def picture(self, frame: int) -> np.ndarray:
        return self.sprite.image if self.image is None else self.image(frame)


def astronaut_head(side: int = 150) -> Sprite:
    """The sample photo's head (public domain, NASA) as a `side`-pixel square."""
    x, y, w, h = ASTRONAUT_HEAD
    head = Image.open(ASTRONAUT).convert("RGB").crop((x, y, x + w, y + h)).resize((side, side), Image.BILINEAR)
    return Sprite("astronaut", np.asarray(head))


def recoloured(sprite: Sprite, hue: int = 90, name: str = "recoloured") -> Sprite:
    """The same head with its hues turned by `hue` (of OpenCV's 180): a second person as far as
    colour goes, for clips that need two faces and have only the sample photo."""
    hsv = cv2.cvtColor(sprite.image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + hue) % 180
    return Sprite(name, cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))


def background(size: Tuple[int, int], seed: int = 0) -> np.ndarray:
    """A still, textured backdrop (w, h): soft colour blobs, no faces."""
    w, h = size
    rng = np.random.default_rng(seed)
    small = rng.integers(60, 200, (6, 8, 3)).astype(np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), (0, 0), 9)


def linear(start: Tuple[float, float], end: Tuple[float, float], frames: int,
           visible: Optional[Callable[[int], bool]] = None) -> Callable[[int], Centre]:
    """A straight path from `start` (frame 0) to `end` (frame `frames` - 1), hidden where `visible` is False."""
    def where(frame: int) -> Centre:
        if visible is not None and not visible(frame):
            return None
        a = frame / max(1, frames - 1)
        return start[0] + a * (end[0] - start[0]), start[1] + a * (end[1] - start[1])
    return where


def render(actors: Sequence[Actor], frames: int, size: Tuple[int, int] = (640, 480),
           seed: int = 0) -> Tuple[List[np.ndarray], List[Dict[int, Tuple[int, int, int, int]]]]:
    """The clip's frames (RGB) and, per frame, {actor index: its sprite's (x, y, w, h) as drawn}.

    Actors are pasted in order, so a later one covers an earlier one where they overlap. An actor
    counts as visible when at least half of the middle of its picture (the middle half of its
    width and height, where the face is) is in the frame and not covered by a later actor.
    """
    base = background(size, seed)
    out, truth = [], []
    for f in range(frames):
        canvas, seen = base.copy(), {}
        owner = np.full((size[1], size[0]), -1, np.int32)
        for k, actor in enumerate(actors):
            centre = actor.where(f)
            if centre is None:
                continue
            picture = actor.picture(f)
            h, w = picture.shape[:2]
            x, y = int(round(centre[0] - w / 2)), int(round(centre[1] - h / 2))
            x1, y1, x2, y2 = max(0, x), max(0, y), min(size[0], x + w), min(size[1], y + h)
            if x2 <= x1 or y2 <= y1:
                continue
            canvas[y1:y2, x1:x2] = picture[y1 - y:y2 - y, x1 - x:x2 - x]
            owner[y1:y2, x1:x2] = k
            seen[k] = (x, y, w, h)
        for k, (x, y, w, h) in list(seen.items()):
            mx1, my1 = max(0, x + w // 4), max(0, y + h // 4)
            mx2, my2 = min(size[0], x + 3 * w // 4), min(size[1], y + 3 * h // 4)
            shown = (owner[my1:my2, mx1:mx2] == k).sum() if mx2 > mx1 and my2 > my1 else 0
            if shown < 0.5 * (w // 2) * (h // 2):
                del seen[k]
        out.append(canvas)
        truth.append(seen)
    return out, truth


def write_video(path, frames: Sequence[np.ndarray], fps: float = 30.0) -> Path:
    """RGB frames -> a video file through OpenCV (mp4v for .mp4, MJPG for .avi)."""
    path = Path(path)
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix.lower() == ".avi" else "mp4v"))
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), fourcc, fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def crossing(a: Sprite, b: Sprite, frames: int = 90, size=(640, 480), y: float = 240) -> List[Actor]:
    """Two heads cross: `a` walks left to right, `b` right to left in front of it."""
    w = size[0]
    return [Actor(a, linear((0.2 * w, y), (0.8 * w, y), frames)),
            Actor(b, linear((0.8 * w, y), (0.2 * w, y), frames))]


def leave_and_return(a: Sprite, b: Sprite, frames: int = 120, away: Tuple[int, int] = (40, 80),
                     size=(640, 480)) -> List[Actor]:
    """`a` stays still on the left; `b` stays on the right but is out of view for the frames in `away`."""
    w, h = size
    return [Actor(a, linear((0.25 * w, h / 2), (0.25 * w, h / 2), frames)),
            Actor(b, linear((0.75 * w, h / 2), (0.75 * w, h / 2), frames,
                            visible=lambda f: not away[0] <= f < away[1]))]


def drifting(a: Sprite, frames: int = 300, size=(640, 480)) -> List[Actor]:
    """One head drifting slowly across a 640x480 frame: the speed clip."""
    w, h = size
    return [Actor(a, linear((0.35 * w, 0.45 * h), (0.65 * w, 0.55 * h), frames))]


def covered(a: Sprite, frames: int = 120, hidden: Tuple[int, int] = (40, 80), size=(640, 480)) -> List[Actor]:
    """One still head whose mouth is covered (a flat skin-coloured patch, as a hand) for the
    frames in `hidden`: the expression the model reads changes, then comes back."""
    h, w = a.image.shape[:2]
    patch = a.image.copy()
    # where the sample head's mouth and cheeks are (astronaut_head's crop, any size)
    y1, y2, x1, x2 = int(0.62 * h), int(0.86 * h), int(0.05 * w), int(0.42 * w)
    cheek = a.image[int(0.47 * h):int(0.58 * h), int(0.10 * w):int(0.25 * w)].reshape(-1, 3)
    patch[y1:y2, x1:x2] = np.median(cheek, axis=0).astype(np.uint8)
    return [Actor(a, lambda f: (size[0] / 2, size[1] / 2),
                  image=lambda f: patch if hidden[0] <= f < hidden[1] else a.image)]


SCENES = {"crossing": lambda s: crossing(*s), "leave-return": lambda s: leave_and_return(*s),
          "drifting": lambda s: drifting(s[0]), "covered": lambda s: covered(s[0])}


def main() -> None:
    p = argparse.ArgumentParser(description="Write one synthetic clip of the sample photo's head.")
    p.add_argument("output", help="a .mp4 or .avi path")
    p.add_argument("--scene", choices=sorted(SCENES), default="crossing")
    p.add_argument("--fps", type=float, default=30.0)
    args = p.parse_args()
    head = astronaut_head(300 if args.scene == "covered" else 150)
    actors = SCENES[args.scene]((head, recoloured(head)))
    frames, _ = render(actors, {"crossing": 90, "leave-return": 120, "drifting": 300, "covered": 120}[args.scene])
    print(write_video(args.output, frames, args.fps))


if __name__ == "__main__":
    main()
