"""Face geometry: what a detector reports, and cutting faces out the way the model saw them in training.

A detector (inference/detectors.py) takes an RGB uint8 image (H, W, 3) and returns
`Detection`s in that image's pixels.

Crops are squares around the box with a margin, turned upright by the eye line when the
detector gives landmarks, then resized with PIL's bilinear filter to the model's input size,
as data/datasets.py resizes training faces.
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Detection:
    """One face found by a detector.

    Attributes:
        box: (x, y, w, h) in pixels of the image given to the detector.
        score: the detector's own confidence (not comparable across detectors), None if it has none.
        landmarks: (5, 2) points (x, y): the eye on the image's left, the other eye, the nose tip,
            the mouth corner on the image's left, the other mouth corner; None if not given.
    """

    box: Tuple[float, float, float, float]
    score: Optional[float] = None
    landmarks: Optional[np.ndarray] = None


def shrink(image: np.ndarray, max_side: int) -> Tuple[np.ndarray, float]:
    """Resize so the longer side is at most max_side; returns (image, scale applied)."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image, 1.0
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def fit(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Resize to (width, height): halved by pixel averaging while at least twice too large, then
    bilinear. OpenCV's area filter is fast for exact halves and many times slower for other ratios
    (docs/serve.md, Speed); the halves keep the shrunk image free of aliasing."""
    while image.shape[1] >= 2 * size[0] and image.shape[0] >= 2 * size[1]:
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def crop_matrix(det: Detection, margin: float, align: bool = True) -> Tuple[np.ndarray, int]:
    """The affine map from image pixels to a square face crop, and the crop's side.

    The crop is centred on the box, its side is max(w, h) * (1 + 2 * margin), and when `align`
    and the detection has landmarks it is rotated so the eyes lie on a horizontal line.

    Returns:
        (M (2, 3) float64 for cv2.warpAffine, side in pixels).
    """
    x, y, w, h = det.box
    cx, cy = x + w / 2, y + h / 2
    side = max(1, round(max(w, h) * (1 + 2 * margin)))
    angle = 0.0
    if align and det.landmarks is not None:
        (lx, ly), (rx, ry) = det.landmarks[0], det.landmarks[1]
        angle = math.degrees(math.atan2(ry - ly, rx - lx))
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    matrix[:, 2] += (side / 2 - cx, side / 2 - cy)
    return matrix, side


def crop_face(image: np.ndarray, det: Detection, margin: float = 0.2, align: bool = True) -> np.ndarray:
    """Square (side, side, 3) uint8 crop of one face; pixels beyond the photo repeat its edge."""
    matrix, side = crop_matrix(det, margin, align)
    return cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def resize_faces(crops: Sequence[np.ndarray], size: int, grayscale: bool = False) -> np.ndarray:
    """Crops -> uint8 (B, size, size, 3), resized with PIL bilinear like the training data.

    `grayscale` turns each crop grey first (three equal channels), for models trained on grey
    faces such as FER2013's.
    """
    out = np.empty((len(crops), size, size, 3), dtype=np.uint8)
    for i, crop in enumerate(crops):
        face = Image.fromarray(crop)
        if grayscale:
            face = face.convert("L").convert("RGB")
        out[i] = np.asarray(face.resize((size, size), Image.BILINEAR))
    return out


def normalize(faces: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (B, S, S, 3) -> float32 (B, 3, S, S), scaled to [0, 1] then standardised."""
    x = faces.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, by_min: bool = False,
        plus_one: bool = True) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression; overlap is IoU, or over the smaller box.

    Boxes are (K, 4) x1, y1, x2, y2; with `plus_one` (MTCNN's convention) they are inclusive pixel
    ranges, one pixel wider than x2 - x1.
    """
    one = 1 if plus_one else 0
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + one) * (y2 - y1 + one)
    order, keep = np.argsort(-scores), []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        overlap = inter / (np.minimum(area[i], area[rest]) if by_min else area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.array(keep, dtype=np.int64)
