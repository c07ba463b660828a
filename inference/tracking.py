"""Faces followed across the frames of a video, and their expressions smoothed over time.

`FaceTracker` gives each detection a track id that stays the same while the face stays in view:
boxes are matched to the tracks' last boxes by IoU with an optimal (Hungarian) assignment, no
motion model, and a cheap appearance check (a hue-saturation histogram of the box) vetoes a
match between two different-looking faces when boxes overlap, as when two people cross. A track
missed for a few frames (a face hidden behind another, a missed detection) can be picked up again
near its last box when the face looks the same; a track missed for more than `max_missed`
processed frames ends, and a face seen after that gets a new id.

`EmaSmoother` keeps, per track, an exponential moving average of the class probabilities with a
time constant in seconds, so that a variable frame stride (or a webcam's irregular frames)
weighs each frame by the time it covers: after a gap of dt seconds the new frame's weight is
1 - exp(-dt / tau).
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

Box = Tuple[float, float, float, float]  # x, y, w, h


def iou_matrix(a: Sequence[Box], b: Sequence[Box]) -> np.ndarray:
    """(len(a), len(b)) intersection over union of (x, y, w, h) boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ax1, ay1, aw, ah = (a[:, k:k + 1] for k in range(4))
    bx1, by1, bw, bh = (b[:, k] for k in range(4))
    w = np.clip(np.minimum(ax1 + aw, bx1 + bw) - np.maximum(ax1, bx1), 0, None)
    h = np.clip(np.minimum(ay1 + ah, by1 + bh) - np.maximum(ay1, by1), 0, None)
    inter = w * h
    union = aw * ah + bw * bh - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def appearance(image: np.ndarray, box: Box, bins: Tuple[int, int] = (16, 8)) -> np.ndarray:
    """A face's look, cheaply: the L2-normalised hue-saturation histogram of the middle of its box
    (float32, bins[0] * bins[1]); about 0.1 ms. Grey pixels (low saturation) fall in the first
    saturation bins, so grey faces are still told apart by brightness only weakly."""
    x, y, w, h = box
    H, W = image.shape[:2]
    # the inner 60 % of the box: skin and features, less of the background around the head
    x1, y1 = int(max(0, x + 0.2 * w)), int(max(0, y + 0.2 * h))
    x2, y2 = int(min(W, x + 0.8 * w)), int(min(H, y + 0.8 * h))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return np.zeros(bins[0] * bins[1], dtype=np.float32)
    patch = image[y1:y2, x1:x2]
    step = max(1, min(patch.shape[:2]) // 32)  # 32 rows are plenty for a histogram
    hsv = cv2.cvtColor(np.ascontiguousarray(patch[::step, ::step]), cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, list(bins), [0, 180, 0, 256]).ravel()
    hist = np.sqrt(hist)  # Hellinger: the dot product of two is the Bhattacharyya coefficient
    norm = np.linalg.norm(hist)
    return (hist / norm if norm > 0 else hist).astype(np.float32)


@dataclass
class Track:
    """One face followed over time.

    Attributes:
        id: 1, 2, ... in the order tracks start, never reused within a stream.
        box: its last matched box (x, y, w, h).
        look: the appearance histogram, a running average over its matches; None without one.
        missed: processed frames since it was last matched.
        hits: frames it was matched in.
        side: the face's size, a running average of its boxes' longer sides (a box cut short
            by something in front of the face weighs little).
        payload: what the caller keeps with the track (the last detection, for instance).
    """

    id: int
    box: Box
    look: Optional[np.ndarray] = None
    missed: int = 0
    hits: int = 1
    side: float = 0.0
    payload: object = field(default=None, repr=False)

    def __post_init__(self):
        self.side = self.side or float(max(self.box[2], self.box[3]))


class FaceTracker:
    """Track ids for the faces of consecutive frames.

    Args:
        iou_min: a detection continues a track when their boxes overlap at least this much.
        max_missed: a track not matched for more than this many processed frames ends.
        look_min: an overlapping match is refused when the appearance similarity (Bhattacharyya
            coefficient of the histograms, 1 for identical) is below this.
        regain_min: a missed track is picked up again by a box that does not overlap its last
            one when the faces are this similar, the box of the track's size (ratio under 1.5)
            and their centres near: within (1 + `regain_speed` * frames missed) of the track's
            side, at most 4 sides (no motion model: the face may have moved anywhere near while
            hidden).
        regain_speed: how far a hidden face is looked for, in box sides per missed frame.
    """

    def __init__(self, iou_min: float = 0.5, max_missed: int = 60, look_min: float = 0.4,
                 regain_min: float = 0.7, regain_speed: float = 0.1):
        if not 0 < iou_min <= 1:
            raise ValueError(f"iou_min must be in (0, 1], got {iou_min}")
        if max_missed < 0:
            raise ValueError(f"max_missed must be 0 or more, got {max_missed}")
        self.iou_min, self.max_missed, self.look_min = iou_min, max_missed, look_min
        self.regain_min, self.regain_speed = regain_min, regain_speed
        self.tracks: List[Track] = []
        self.next_id = 1

    def update(self, boxes: Sequence[Box], looks: Optional[Sequence[np.ndarray]] = None) -> List[Track]:
        """Match this frame's boxes to the tracks; returns each box's track (in the boxes' order).

        Unmatched boxes start tracks; unmatched tracks count a miss and end after `max_missed`.
        """
        looks = [None] * len(boxes) if looks is None else list(looks)
        score = self._scores(boxes, looks)
        pairs = {}
        if score.size:
            rows, cols = linear_sum_assignment(-score)
            pairs = {c: r for r, c in zip(rows, cols) if score[r, c] > 0}
        out, matched = [], set()
        for d, box in enumerate(boxes):
            if d in pairs:
                track = self.tracks[pairs[d]]
                track.box, track.missed, track.hits = tuple(box), 0, track.hits + 1
                track.side += 0.2 * (max(box[2], box[3]) - track.side)
                if looks[d] is not None:
                    track.look = looks[d] if track.look is None else _blend(track.look, looks[d])
                matched.add(pairs[d])
            else:
                track = Track(self.next_id, tuple(box), looks[d])
                self.next_id += 1
            out.append(track)
        kept = []
        for t, track in enumerate(self.tracks):
            if t not in matched:
                track.missed += 1
            if track.missed <= self.max_missed:
                kept.append(track)
        self.tracks = kept + [track for d, track in enumerate(out) if d not in pairs]
        return out

    def _scores(self, boxes, looks) -> np.ndarray:
        """(tracks, boxes) match scores: 0 where a match is not allowed, else overlap plus likeness."""
        overlap = iou_matrix([t.box for t in self.tracks], boxes)
        score = np.zeros_like(overlap)
        for t, track in enumerate(self.tracks):
            for d, box in enumerate(boxes):
                like = _likeness(track.look, looks[d])
                if overlap[t, d] >= self.iou_min:
                    if like is None or like >= self.look_min:
                        score[t, d] = 1 + overlap[t, d] + (like or 0)
                elif (track.missed and like is not None and like >= self.regain_min
                      and self._near(track, box)):
                    score[t, d] = like  # below any overlapping match: a regained face comes second
        return score

    def _near(self, track: Track, new: Box) -> bool:
        old, side = track.box, track.side
        if not 1 / 1.5 <= max(new[2], new[3]) / max(side, 1e-6) <= 1.5:
            return False
        dx = (new[0] + new[2] / 2) - (old[0] + old[2] / 2)
        dy = (new[1] + new[3] / 2) - (old[1] + old[3] / 2)
        return math.hypot(dx, dy) <= min(4.0, 1 + self.regain_speed * track.missed) * side


def _likeness(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> Optional[float]:
    if a is None or b is None:
        return None
    return float(np.dot(a, b))


def _blend(old: np.ndarray, new: np.ndarray, rate: float = 0.2) -> np.ndarray:
    mixed = (1 - rate) * old + rate * new
    norm = np.linalg.norm(mixed)
    return (mixed / norm if norm > 0 else mixed).astype(np.float32)


class EmaSmoother:
    """Per-track exponential moving average of probability vectors over time.

    s = p on a track's first frame; then s += (1 - exp(-dt / tau)) * (p - s), dt the seconds since
    the track's previous frame. tau = 0 turns smoothing off (s = p).
    """

    def __init__(self, tau: float):
        if not tau >= 0 or math.isinf(tau):
            raise ValueError(f"the smoothing time constant must be 0 or more seconds, got {tau}")
        self.tau = tau
        self.state: Dict[int, Tuple[float, np.ndarray]] = {}

    def update(self, track: int, t: float, probs: np.ndarray) -> np.ndarray:
        """The smoothed probabilities of `track` at time `t` (seconds) given this frame's `probs`."""
        probs = np.asarray(probs, dtype=np.float64)
        previous = self.state.get(track)
        if previous is None or self.tau == 0:
            smoothed = probs
        else:
            t0, s = previous
            alpha = 1.0 - math.exp(-max(0.0, t - t0) / self.tau)
            smoothed = s + alpha * (probs - s)
        self.state[track] = (t, smoothed)
        return smoothed

    def forget(self, keep: Sequence[int]) -> None:
        """Drop the state of every track not in `keep` (ended tracks)."""
        keep = set(keep)
        self.state = {k: v for k, v in self.state.items() if k in keep}
