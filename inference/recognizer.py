"""The emotion of every face in a photo, as a class that scripts, notebooks and services share.

    from inference.recognizer import EmotionRecognizer
    recognizer = EmotionRecognizer("Data/dan_fer2013.safetensors")
    for face in recognizer.predict("photo.jpg"):
        print(face.box, face.emotion, face.probabilities)

On the CPU the model runs in ONNX Runtime from an export cached by the checkpoint's content hash
(inference/export.py), so after the first run neither torch nor the model code is imported. A
GPU (`device="cuda"`) or `backend="torch"` runs the PyTorch model itself.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnxruntime as ort
from PIL import Image

from common.errors import UserError, first_line
from common.meta import ModelMeta
from common.paths import DEFAULT_MODEL as DEFAULT_CHECKPOINT
from common.paths import ROOT
from data.images import MAX_PIXELS, decode_image

from .detectors import build_detector
from .export import cached_onnx
from .runtime import read_onnx_meta, session_options, softmax
from .faces import Detection, crop_face, normalize, resize_faces
from .fallback import WHOLE_IMAGE, Fallback

BACKENDS = ("auto", "onnx", "torch")
TRACKED = "tracked"  # a Face's box_source when its box was carried from an earlier frame

ImageLike = Union[str, Path, bytes, Image.Image, np.ndarray]


@dataclass
class Face:
    """One face and its expression.

    Attributes:
        box: (x, y, w, h) in pixels of the input image.
        probabilities: class name -> probability; they sum to 1.
        score: the detector's confidence (None for detectors without one, or --detector none).
        landmarks: five (x, y) points (eyes, nose, mouth corners) when the detector gives them.
        attention: (N, h, w) DAN's per-head spatial attention on the trunk grid, None otherwise.
        crop: (S, S, 3) uint8 face as the model saw it (before normalisation).
        box_source: where the box came from: "detector" (the photo as given), "padded" (the
            detector, on the photo padded at its edges: a tight face crop), "whole image"
            (no detection: the whole photo, small and face-shaped, taken as the face) or
            "tracked" (a video frame the detector skipped: the face's box in the last frame
            it ran on, inference/video.py).
        track: in a video, the id of the face's track (stable while it stays in view); None
            for photos.
        smoothed: in a video, the probabilities averaged over time along the track
            (inference/tracking.py); None for photos.
    """

    box: Tuple[int, int, int, int]
    probabilities: Dict[str, float]
    score: Optional[float] = None
    landmarks: Optional[List[Tuple[float, float]]] = None
    attention: Optional[np.ndarray] = field(default=None, repr=False)
    crop: Optional[np.ndarray] = field(default=None, repr=False)
    box_source: str = "detector"
    track: Optional[int] = None
    smoothed: Optional[Dict[str, float]] = None

    @property
    def emotion(self) -> str:
        """The most probable class."""
        return max(self.probabilities, key=self.probabilities.get)

    @property
    def smoothed_emotion(self) -> str:
        """The most probable class after smoothing over time (the raw one for photos)."""
        probs = self.probabilities if self.smoothed is None else self.smoothed
        return max(probs, key=probs.get)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form documented in docs/predict.md."""
        return {
            "box": list(self.box),
            "emotion": self.emotion,
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "score": None if self.score is None else round(self.score, 4),
            "landmarks": None if self.landmarks is None else [[round(x, 1), round(y, 1)] for x, y in self.landmarks],
            "box_source": self.box_source,
            **({} if self.track is None else {
                "track": self.track,
                "smoothed": None if self.smoothed is None else {k: round(v, 6) for k, v in self.smoothed.items()},
                "smoothed_emotion": self.smoothed_emotion}),
        }


class OnnxRunner:
    """An exported model in ONNX Runtime: float32 (B, 3, S, S) -> {"logits", ["attention"]}."""

    def __init__(self, path, threads: int = 2):
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads, spinning=False),
                                                providers=["CPUExecutionProvider"])
        except Exception as err:
            raise UserError(f"{path}: onnxruntime cannot load it ({first_line(err)})") from None
        self.meta = read_onnx_meta(self.session)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.has_attention = "attention" in self.outputs

    def __call__(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, {"input": x})))


class TorchRunner:
    """The PyTorch model itself, on any device: float32 (B, 3, S, S) -> {"logits", ["attention"]}."""

    def __init__(self, checkpoint, device: str = "cpu", threads: int = 2):
        import torch  # the torch backend only: the ONNX path runs without torch

        from networks import spec_of  # torch: as above
        from utils.checkpoint import load_model  # torch: as above
        from utils.misc import resolve_device  # torch: as above

        self.torch, self.device = torch, resolve_device(device)
        if self.device.type == "cpu" and threads > 0:
            torch.set_num_threads(threads)
        self.model, self.meta = load_model(checkpoint, self.device)
        self.has_attention = spec_of(self.model).attention

    def __call__(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            out = self.model(torch.from_numpy(x).to(self.device))
        result = {"logits": out.logits.float().cpu().numpy()}
        if out.attention is not None:
            result["attention"] = out.attention.float().cpu().numpy()
        return result


def resolve_checkpoint(checkpoint) -> Path:
    """The checkpoint to use: the one given, else the project's default model if it exists."""
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise UserError(f"checkpoint {path} not found")
        return path
    if DEFAULT_CHECKPOINT.is_file():
        return DEFAULT_CHECKPOINT
    rel = DEFAULT_CHECKPOINT.relative_to(ROOT)
    raise UserError(f"the default model {rel} is missing (it ships with the repository: `git checkout -- {rel}` "
                    f"restores it; benchmarks/train_wild.sh is how it was made), or pass --checkpoint PATH")


class EmotionRecognizer:
    """Detect every face in an image and classify all of them in one batch.

    Args:
        checkpoint: .safetensors model, .pth training checkpoint, or .onnx exported by
            tools.export_onnx; None for the project's default model.
        device: "cpu" or "cuda"; cuda implies the torch backend.
        backend: "onnx" (ONNX Runtime, CPU), "torch", or "auto" (onnx on the CPU).
        detector: a name in inference.detectors.DETECTORS ("none" treats the whole image as one face).
        margin: extra space around the detector's box on each side, as a fraction of its side.
        align: turn faces upright by the eye line when the detector gives landmarks.
        grayscale: turn face crops grey before the model sees them; None reads the checkpoint's
            "grayscale" metadata; when that is absent, True except for converted published
            weights (metadata "converted_from"), which were trained on colour photos.
        threads: CPU threads for the model.
        cache_dir: where ONNX exports are cached (default $FER_CACHE_DIR or ~/.cache/fer).
        max_pixels: decoding refuses larger images.
        detector_options: passed to the detector's constructor.
        tta: average each face's logits with those of its mirror image (one batch of 2B faces;
            the attention maps stay the unmirrored face's); on by default, as the recipe trials
            in docs/training.md chose it.
        fallback: what to try when the detector finds no face (inference/fallback.py): the
            photo padded at its edges, then the whole photo when it is small and face-shaped.
            None: both on, edge padding.
    """

    def __init__(self, checkpoint=None, device: str = "cpu", backend: str = "auto", detector: str = "auto",
                 margin: float = 0.2, align: bool = True, grayscale: Optional[bool] = None, threads: int = 2,
                 cache_dir=None, max_pixels: int = MAX_PIXELS, detector_options: Optional[Dict] = None,
                 tta: bool = True, fallback: Optional[Fallback] = None):
        if backend not in BACKENDS:
            raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if device != "cpu" and not device.startswith("cuda"):
            raise UserError(f"unknown device {device!r}; use cpu or cuda")
        if not margin >= 0:  # also refuses NaN
            raise UserError(f"the margin must be 0 or more (a fraction of the face box), got {margin}")
        path = resolve_checkpoint(checkpoint)
        is_onnx = path.suffix == ".onnx"
        if backend == "auto":
            backend = "onnx" if device == "cpu" or is_onnx else "torch"
        if backend == "onnx" and device != "cpu":
            raise UserError("the onnx backend runs on the CPU; use --backend torch for --device cuda")
        if backend == "torch" and is_onnx:
            raise UserError(f"{path} is an ONNX export; the torch backend needs the .safetensors or .pth model")
        self.checkpoint, self.backend, self.device = path, backend, device
        if backend == "onnx":
            self.runner = OnnxRunner(path if is_onnx else cached_onnx(path, cache_dir), threads)
        else:
            self.runner = TorchRunner(path, device, threads)
        self.meta: ModelMeta = self.runner.meta
        self.classes: List[str] = list(self.meta.classes)
        self.img_size = self.meta.img_size
        self.mean, self.std = self.meta.mean, self.meta.std
        self.grayscale = self.meta.grey_input if grayscale is None else grayscale
        # Fitted on val by `test.py --calibrate`: probabilities that mean what they say (docs/training.md).
        self.temperature = self.meta.softmax_temperature
        self.detector = build_detector(detector, **(detector_options or {}))
        self.margin, self.align, self.max_pixels, self.tta = margin, align, max_pixels, tta
        self.fallback = Fallback() if fallback is None else fallback

    @property
    def has_attention(self) -> bool:
        """Whether the model gives spatial-attention maps (DAN)."""
        return self.runner.has_attention

    def load(self, image: ImageLike) -> np.ndarray:
        """Any accepted image form -> RGB uint8 (H, W, 3)."""
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise UserError(f"expected an RGB uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
            return image
        if isinstance(image, Image.Image):
            return np.asarray(image.convert("RGB"))
        return np.asarray(decode_image(image, self.max_pixels))

    def classify(self, faces: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """uint8 (B, S, S, 3) faces at the model's size -> (probabilities (B, C), attention (B, N, h, w) or None)."""
        if len(faces) == 0:
            return np.zeros((0, len(self.classes))), None
        batch = np.concatenate([faces, faces[:, :, ::-1]]) if self.tta else faces
        out = self.runner(normalize(batch, self.mean, self.std))
        logits, attention = out["logits"], out.get("attention")
        if self.tta:
            n = len(faces)
            logits = (logits[:n] + logits[n:]) / 2
            attention = None if attention is None else attention[:n]
        return softmax(logits / self.temperature), attention

    def predict(self, image: ImageLike, detections: Optional[Sequence[Detection]] = None) -> List[Face]:
        """Every face in `image` with its box and class probabilities; [] when none is found.

        `detections` skips the detector: those boxes are classified instead ("tracked" faces).
        """
        image = self.load(image)
        if detections is None:
            detections, source, crops = locate_faces(image, self.detector, self.fallback, self.margin, self.align)
        else:
            source, crops = TRACKED, [crop_face(image, d, self.margin, self.align) for d in detections]
        faces = resize_faces(crops, self.img_size, self.grayscale)
        probs, attention = self.classify(faces)
        return [Face(box=tuple(int(round(v)) for v in d.box),
                     probabilities=dict(zip(self.classes, map(float, p))),
                     score=d.score,
                     landmarks=None if d.landmarks is None else [(float(x), float(y)) for x, y in d.landmarks],
                     attention=None if attention is None else attention[i],
                     crop=faces[i], box_source=source)
                for i, (d, p) in enumerate(zip(detections, probs))]


def locate_faces(image: np.ndarray, detector, fallback: Fallback, margin: float = 0.2,
                 align: bool = True) -> Tuple[List[Detection], str, List[np.ndarray]]:
    """Prediction's framing of every face: (detections, how they were found, square uint8 crops).

    The detector runs with its fallbacks (inference/fallback.py); each crop is the box with
    `margin` on each side, turned upright by the eyes when `align`. A whole photo taken as the
    face is already framed with its surroundings: it gets no margin. tools/reframe.py
    writes training faces with this same function.
    """
    detections, source = fallback.detect(detector, image)
    margin = 0.0 if source == WHOLE_IMAGE else margin
    return detections, source, [crop_face(image, d, margin, align) for d in detections]


def top_classes(face: Face, k: int = 3) -> Sequence[Tuple[str, float]]:
    """The k most probable (class, probability) pairs, most probable first."""
    return sorted(face.probabilities.items(), key=lambda kv: -kv[1])[:k]
