"""Where the project keeps what every entry point looks for (no imports: safe on any path)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The model predict.py, test.py, serve.py and EmotionRecognizer use without --checkpoint
# (its card: Data/MODEL_CARD_wild.md; the FER+ and FER2013 models stay for their benchmarks' rows).
DEFAULT_MODEL = ROOT / "Data" / "dan_wild.safetensors"
# The face detector the default detector ("auto") starts from: face-api's Tiny Face Detector,
# converted by `python3 -m tools.convert --format faceapi-tinyface` (docs/convert.md).
TINYFACE_WEIGHTS = ROOT / "Data" / "tiny_face_detector.onnx"
