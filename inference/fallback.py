"""What to do when the detector finds no face: tight crops, avatars and dataset images.

A detector looks for a face with some head and background around it. When the face fills the
photo (a cropped face, an avatar, an image from a face dataset) it often finds nothing. Two
answers, tried in turn:

1. **Padded retry**: the photo is padded on every side by `pad` of its longer side, with its
   edge pixels repeated ("edge") or mirrored ("mirror"), and the detector runs again. Boxes are
   shifted back into the photo's own pixels; a detection whose centre falls in the padding is
   dropped (a mirrored border can hold half a mirrored face).
2. **Whole image**: when that finds nothing either and the photo is small and face-shaped
   (longer side at most `whole_max_side`, height/width within `whole_aspect`), the whole photo
   is taken as the face. Its box is the photo, and it is marked as such (`box_source`).

A large photo, or a wide one (a landscape), with no face found stays without a face.

On a tight crop the detector sometimes finds only a part of the face (the nose and mouth, as a
small face). So a small face-shaped photo whose largest detection is under `small_face` of its
shorter side also gets the padded retry, and the retry's faces replace the first ones when
their largest is at least `larger` times as large (a jitter of the same box does not count).
"""
import argparse
from dataclasses import dataclass
from typing import Callable, List, Tuple

import cv2
import numpy as np

from common.errors import UserError

from .faces import Detection

DETECTOR, PADDED, WHOLE_IMAGE = "detector", "padded", "whole image"
PAD_MODES = {"edge": cv2.BORDER_REPLICATE, "mirror": cv2.BORDER_REFLECT_101}


@dataclass(frozen=True)
class Fallback:
    """The fallbacks' settings.

    Attributes:
        pad: padding per side as a fraction of the photo's longer side (0 turns the retry off).
        pad_mode: "edge" repeats the border pixels, "mirror" reflects the photo at its border.
        whole_image: take a small face-shaped photo as one face when nothing else is found.
        whole_max_side: the longest side, in pixels, of a photo that may be taken whole.
        whole_aspect: (low, high) bounds of height / width for a photo taken whole.
        small_face: on a small face-shaped photo, a largest face under this fraction of the
            shorter side is checked against the padded retry.
        larger: how many times larger (in side) the retry's largest face must be to replace it.
    """

    pad: float = 0.35
    pad_mode: str = "edge"
    whole_image: bool = True
    whole_max_side: int = 512
    whole_aspect: Tuple[float, float] = (0.8, 1.6)
    small_face: float = 0.5
    larger: float = 1.5

    def __post_init__(self):
        if not 0 <= self.pad <= 2:  # also refuses NaN
            raise UserError(f"the retry padding must be between 0 and 2 (a fraction of the photo's side), got {self.pad}")
        if self.pad_mode not in PAD_MODES:
            raise UserError(f"unknown padding mode {self.pad_mode!r}; choose one of {', '.join(PAD_MODES)}")

    def is_face_shaped(self, height: int, width: int) -> bool:
        """Whether a photo this size may be a face crop: small, and not wider than a face's frame."""
        low, high = self.whole_aspect
        return max(height, width) <= self.whole_max_side and low <= height / width <= high

    def detect(self, detector: Callable[[np.ndarray], List[Detection]],
               image: np.ndarray) -> Tuple[List[Detection], str]:
        """(detections in `image`'s pixels, where they came from: DETECTOR, PADDED or WHOLE_IMAGE).

        Args:
            detector: RGB uint8 (H, W, 3) -> detections.
            image: RGB uint8 (H, W, 3).
        """
        found = detector(image)
        h, w = image.shape[:2]
        suspect = bool(found) and self.is_face_shaped(h, w) and largest_side(found) < self.small_face * min(h, w)
        if found and not suspect:
            return found, DETECTOR
        if self.pad > 0:
            padded = padded_detect(detector, image, self.pad, self.pad_mode)
            if padded and (not found or largest_side(padded) >= self.larger * largest_side(found)):
                return padded, PADDED
        if found:
            return found, DETECTOR
        if self.whole_image and self.is_face_shaped(h, w):
            return [Detection(box=(0.0, 0.0, float(w), float(h)))], WHOLE_IMAGE
        return [], DETECTOR


def largest_side(detections: List[Detection]) -> float:
    return max(max(d.box[2], d.box[3]) for d in detections)


def padded_detect(detector: Callable[[np.ndarray], List[Detection]], image: np.ndarray, pad: float,
                  mode: str = "edge") -> List[Detection]:
    """The detector's faces on `image` padded by `pad` of its longer side per side, in `image`'s
    pixels; those centred in the padding are dropped."""
    h, w = image.shape[:2]
    p = max(1, round(pad * max(h, w)))
    padded = cv2.copyMakeBorder(image, p, p, p, p, PAD_MODES[mode])
    kept = []
    for d in detector(padded):
        x, y, bw, bh = d.box
        x, y = x - p, y - p
        if not (0 <= x + bw / 2 < w and 0 <= y + bh / 2 < h):
            continue
        landmarks = None if d.landmarks is None else np.asarray(d.landmarks, dtype=np.float64) - p
        kept.append(Detection(box=(x, y, bw, bh), score=d.score, landmarks=landmarks))
    return kept


def add_fallback_args(p: argparse.ArgumentParser) -> None:
    """The fallbacks' options, the same in predict.py, serve.py and tools.reframe."""
    p.add_argument("--pad-retry", type=float, default=Fallback.pad, metavar="FRACTION",
                   help="when no face is found, detect again on the photo padded by this fraction of its longer "
                        "side (tight face crops); 0 turns it off")
    p.add_argument("--pad-mode", default=Fallback.pad_mode, choices=sorted(PAD_MODES),
                   help="the retry's padding: edge repeats the border pixels, mirror reflects the photo")
    p.add_argument("--whole-image", action=argparse.BooleanOptionalAction, default=True,
                   help="when still no face is found and the photo is small and face-shaped (a face crop), "
                        "classify the whole photo as one face, marked as such")


def fallback_from_args(args: argparse.Namespace) -> Fallback:
    return Fallback(pad=args.pad_retry, pad_mode=args.pad_mode, whole_image=args.whole_image)
