"""Pictures of predictions: boxes and probabilities on the photo, DAN's attention on each face.

The colours are the web page's (serve.py sends them in GET /model): `PALETTE` for faces (by their
number in a photo, by track in a video) and `emotion_colours` for classes (the timeline's curves).
"""
import re
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set
from urllib.parse import urlsplit

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from common.errors import UserError

from .recognizer import Face, top_classes

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"]
# The eight class names data/ normalises every dataset to; other names take OTHER_COLOURS in turn.
EMOTION_COLOURS = {"neutral": "#9ca3af", "happy": "#f59e0b", "surprise": "#06b6d4", "sad": "#3b82f6",
                   "angry": "#dc2626", "disgust": "#16a34a", "fear": "#7c3aed", "contempt": "#a16207"}
OTHER_COLOURS = ["#db2777", "#0f766e", "#4b5563", "#65a30d", "#9333ea", "#ea580c"]


def rgb(colour: str):
    """"#rrggbb" -> (r, g, b)."""
    return tuple(int(colour[k:k + 2], 16) for k in (1, 3, 5))


def emotion_colours(classes: Sequence[str]) -> Dict[str, str]:
    """Each class's colour: its own for the usual eight names, else the next of OTHER_COLOURS."""
    others = iter(OTHER_COLOURS * (len(classes) // len(OTHER_COLOURS) + 1))
    return {c: EMOTION_COLOURS.get(c.lower()) or next(others) for c in classes}


def face_colour(index: int, face: Optional[Face] = None):
    """(r, g, b) of a face: by its track in a video, else by its number (from 0) in the photo."""
    key = index if face is None or face.track is None else face.track - 1
    return rgb(PALETTE[key % len(PALETTE)])


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def draw_faces(image: np.ndarray, faces: List[Face], top_k: int = 3) -> Image.Image:
    """The photo with each face's box, number, and its `top_k` classes with probabilities.

    A tracked face (a video frame) is labelled with its track id and its smoothed emotion instead,
    and coloured by its track, so a person keeps one colour through the video.
    """
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    size = max(12, round(max(canvas.size) / 60))
    font, line = _font(size), size + 4
    width = max(2, round(max(canvas.size) / 300))
    for i, face in enumerate(faces):
        colour = face_colour(i, face)
        x, y, w, h = face.box
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=width)
        if face.landmarks:
            r = width + 1
            for px, py in face.landmarks:
                draw.ellipse([px - r, py - r, px + r, py + r], fill=colour)
        if face.track is None:
            lines = [f"{name} {p:.0%}" for name, p in top_classes(face, top_k)]
            lines[0] = f"{i + 1}. {lines[0]}"
        else:
            probs = face.smoothed or face.probabilities
            lines = [f"#{face.track} {face.smoothed_emotion} {probs[face.smoothed_emotion]:.0%}"]
        text_w = max(draw.textlength(t, font=font) for t in lines) + 8
        top = y + h + 2 if y + h + 2 + line * len(lines) <= canvas.height else max(0, y - 2 - line * len(lines))
        left = min(max(0, x), max(0, canvas.width - text_w))
        draw.rectangle([left, top, left + text_w, top + line * len(lines)], fill=colour)
        for j, text in enumerate(lines):
            draw.text((left + 4, top + 2 + j * line), text, fill=(255, 255, 255), font=font)
    return canvas


def attention_strip(face: Face, size: Optional[int] = None) -> Image.Image:
    """[face | head 1 | head 2 | ...]: each head's spatial attention, scaled to its own maximum,
    upsampled bilinearly and blended over the face the model saw."""
    crop = face.crop
    size = size or max(crop.shape[0], 160)
    base = np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))
    tiles = [base]
    for head in face.attention:  # (h, w) each
        a = head - head.min()
        a = a / a.max() if a.max() > 0 else a
        heat = cv2.resize(a.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
        colour = cv2.cvtColor(cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        tiles.append((0.5 * base + 0.5 * colour).astype(np.uint8))
    strip = Image.fromarray(np.concatenate(tiles, axis=1))
    draw = ImageDraw.Draw(strip)
    font = _font(max(12, size // 12))
    for k in range(len(tiles)):
        draw.text((k * size + 4, 2), "face" if k == 0 else f"head {k}", fill=(255, 255, 255), font=font,
                  stroke_width=1, stroke_fill=(0, 0, 0))
    return strip


def output_stem(name: str, frame: Optional[int] = None) -> str:
    """A file-name stem for an input: the file or URL's base name, with the frame index for video."""
    path = urlsplit(name).path if re.match(r"^https?://", name, re.I) else name
    stem = Path(path).stem or "image"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or "image"
    return stem if frame is None else f"{stem}_frame{frame:06d}"


class AnnotationWriter:
    """Writes annotated images (and attention strips) into one folder, never overwriting within a run."""

    def __init__(self, folder, attention: bool = False):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"{self.folder} is a file, not a folder: choose another place for the pictures")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.folder).close()  # writable, as the folder's permissions say?
        except OSError as err:
            raise UserError(f"{self.folder}: cannot write pictures there ({err.strerror or err})") from None
        self.attention = attention
        self.used: Set[str] = set()

    def _unique(self, stem: str) -> str:
        name, k = stem, 1
        while name in self.used:
            k += 1
            name = f"{stem}_{k}"
        self.used.add(name)
        return name

    def write(self, name: str, frame: Optional[int], image: np.ndarray, faces: List[Face]) -> List[Path]:
        """Save `<stem>.jpg` and, with attention, `<stem>_face<k>_attention.png`; returns the paths."""
        stem = self._unique(output_stem(name, frame))
        paths = [self.folder / f"{stem}.jpg"]
        try:
            draw_faces(image, faces).save(paths[0], quality=92)
            if self.attention:
                for k, face in enumerate(faces, 1):
                    if face.attention is not None and face.crop is not None:
                        paths.append(self.folder / f"{stem}_face{k}_attention.png")
                        attention_strip(face).save(paths[-1])
        except OSError as err:
            raise UserError(f"{paths[-1]}: cannot write it ({err.strerror or err})") from None
        return paths
