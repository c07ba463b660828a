"""The benchmarks' real photo, made from the sample this repository ships (no download, no
extra package)."""
from pathlib import Path

import numpy as np
from PIL import Image

ASTRONAUT = Path(__file__).resolve().parents[1] / "Data" / "samples" / "astronaut.jpg"


def astronaut_640x480() -> np.ndarray:
    """uint8 (480, 640, 3): the astronaut photo (Data/samples/README.md) enlarged to 640x640 and
    cropped to 640x480, one face about 110 px wide centred near (281, 62)."""
    return np.asarray(Image.open(ASTRONAUT).convert("RGB").resize((640, 640)).crop((0, 80, 640, 560)))
