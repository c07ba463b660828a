"""Batched image transforms that run on the training device.

Images arrive as uint8 (B, 3, S, S) tensors already resized to the input size. Augmentation
is one affine resampling per batch (flip, rotation, scale and translation folded into one
matrix per image, `grid_sample` with zero fill) followed by random erasing after
normalisation, so the data pipeline costs almost nothing next to the model step, on the CPU
as on a GPU. Random numbers are drawn from torch's global CPU generator, so a seeded run
augments identically on any device.
"""
import math
from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torchvision.io import decode_jpeg, encode_jpeg

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, PIL's convert("L")


@dataclass(frozen=True)
class AugmentConfig:
    """One augmentation recipe.

    Attributes:
        flip: probability of a horizontal flip.
        p_affine: probability that an image gets the random affine below.
        degrees: rotation drawn from U(-degrees, degrees).
        translate: shift per axis drawn from U(-t, t) as a fraction of the image size.
        scale: zoom drawn from U(scale).
        p_erase: probability of random erasing (value 0 after normalisation).
        erase_scale: erased area as a fraction of the image.
        erase_ratio: aspect ratio range of the erased rectangle.
        p_color: probability of brightness, contrast and gamma jitter.
        brightness: brightness factor drawn from U(1 - b, 1 + b).
        contrast: contrast factor (around the image's mean) drawn from U(1 - c, 1 + c).
        gamma: gamma drawn log-uniformly from this range.
        p_blur: probability of a Gaussian blur with sigma drawn from U(blur_sigma), in pixels.
        p_jpeg: probability of re-encoding as JPEG with quality drawn from U(jpeg_quality).
        p_colour_shift: probability of a hue, saturation and white-balance shift (colour input).
        hue: hue rotation drawn from U(-hue, hue), in turns (0.5 is half the colour wheel).
        saturation: saturation factor drawn from U(1 - s, 1 + s).
        white_balance: each channel's gain drawn from U(1 - w, 1 + w), the mean gain kept at 1.
        p_grey: probability that an image is turned grey (ITU-R 601 luma, as PIL's "L").
    """

    flip: float = 0.5
    p_affine: float = 0.2
    degrees: float = 20.0
    translate: float = 32 / 224
    scale: Tuple[float, float] = (1.0, 1.0)
    p_erase: float = 0.5
    erase_scale: Tuple[float, float] = (0.02, 0.25)
    erase_ratio: Tuple[float, float] = (0.3, 3.3)
    p_color: float = 0.0
    brightness: float = 0.3
    contrast: float = 0.3
    gamma: Tuple[float, float] = (0.7, 1.4)
    p_blur: float = 0.0
    blur_sigma: Tuple[float, float] = (0.3, 1.5)
    p_jpeg: float = 0.0
    jpeg_quality: Tuple[int, int] = (20, 80)
    p_colour_shift: float = 0.0
    hue: float = 0.05
    saturation: float = 0.4
    white_balance: float = 0.1
    p_grey: float = 0.0


PRESETS = {
    # DAN's RAF-DB recipe: flip; with p=0.2 rotation <= 20 deg and a random crop with padding 32
    # (at 224 px: a shift of up to 32/224 of the side); random erasing (0.02-0.25).
    "rafdb": AugmentConfig(),
    # DAN's AffectNet recipe: flip; with p=0.7 an affine of 20 deg, scale 0.8-1, translate 0.2.
    "affectnet": AugmentConfig(p_affine=0.7, degrees=20.0, translate=0.2, scale=(0.8, 1.0)),
    # Small grey web faces (FER2013): an affine on every image, zooming both ways.
    "fer": AugmentConfig(p_affine=1.0, degrees=15.0, translate=0.1, scale=(0.85, 1.15)),
    "none": AugmentConfig(flip=0.0, p_affine=0.0, p_erase=0.0),
}


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small CPU tensor to `device` without making the CPU wait for the GPU's queue
    (a plain copy from pageable memory would synchronise every batch)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class Normalize:
    """uint8 (B, 3, S, S) -> float (B, 3, S, S), scaled to [0, 1] then standardised."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self._on = {}  # device -> (mean, std) there, copied once

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """float (B, 3, S, S) in [0, 1] -> (x - mean) / std."""
        if x.device not in self._on:
            self._on[x.device] = (self.mean.to(x.device), self.std.to(x.device))
        mean, std = self._on[x.device]
        return (x - mean) / std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.standardize(images.float() / 255.0)


def compose_affine(angle: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) affine_grid matrices (output -> input coordinates, normalised to [-1, 1]) for
    p_out = zoom * R(angle) * Flip * p_in + shift, with a positive angle turning the picture
    counter-clockwise as torchvision's rotate does.

    Args:
        angle: (B,) radians; zoom: (B,); shift: (B, 2) in normalised units (x, y); flip: (B,) of +-1.
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Image y points down, so a counter-clockwise turn on screen is R(-angle) in (x, y); its inverse is R(angle).
    inv = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], 1) / zoom[:, None, None]
    inv[:, 0, :] *= flip[:, None]  # Flip^-1 = Flip, applied last
    offset = -(inv @ shift[:, :, None])
    return torch.cat([inv, offset], dim=2)


def colour_matrices(angle: torch.Tensor, saturation: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) RGB -> RGB matrices: white-balance gains, then a hue rotation by `angle` (radians)
    about the grey axis and a saturation scale around the luma, both in YIQ space, where luma is Y
    and the chroma plane is (I, Q): greys stay grey under hue and saturation.

    Args:
        angle: (B,) radians; saturation: (B,) factors (0: grey); gains: (B, 3) per-channel factors.
    """
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    rgb = torch.linalg.inv(yiq)
    cos, sin = torch.cos(angle) * saturation, torch.sin(angle) * saturation
    b = angle.shape[0]
    chroma = torch.zeros(b, 3, 3)
    chroma[:, 0, 0] = 1
    chroma[:, 1, 1], chroma[:, 1, 2], chroma[:, 2, 1], chroma[:, 2, 2] = cos, -sin, sin, cos
    return rgb @ chroma @ yiq @ torch.diag_embed(gains)


class TrainAugment:
    """Random flip/affine on uint8 images, normalisation, then random erasing."""

    def __init__(self, config: AugmentConfig, normalize: Normalize):
        self.config = config
        self.normalize = normalize

    def affine_matrices(self, batch: int) -> torch.Tensor:
        """(B, 2, 3) matrices mapping output to input coordinates (affine_grid's convention)."""
        c = self.config
        apply = (torch.rand(batch) < c.p_affine).float()
        angle = (torch.rand(batch) * 2 - 1) * math.radians(c.degrees) * apply
        zoom = 1 + (torch.empty(batch).uniform_(*c.scale) - 1) * apply
        shift = (torch.rand(batch, 2) * 2 - 1) * (2 * c.translate) * apply[:, None]  # normalised units
        flip = torch.where(torch.rand(batch) < c.flip, -1.0, 1.0)
        return compose_affine(angle, zoom, shift, flip)

    def erase(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        b, _, h, w = x.shape
        area = torch.empty(b).uniform_(*c.erase_scale) * h * w
        ratio = torch.exp(torch.empty(b).uniform_(math.log(c.erase_ratio[0]), math.log(c.erase_ratio[1])))
        eh = torch.sqrt(area * ratio).round().clamp(1, h - 1)
        ew = torch.sqrt(area / ratio).round().clamp(1, w - 1)
        top = (torch.rand(b) * (h - eh + 1)).floor()
        left = (torch.rand(b) * (w - ew + 1)).floor()
        apply = torch.rand(b) < c.p_erase
        # Rectangles are drawn on the CPU (a few numbers), the mask is built where the images are.
        box = to_device(torch.stack([top, top + eh, left, left + ew, apply.float()], 1), x.device).view(b, 5, 1, 1)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        mask = ((rows >= box[:, 0]) & (rows < box[:, 1]) & (cols >= box[:, 2]) & (cols < box[:, 3])
                & (box[:, 4] > 0))
        return x.masked_fill(mask.unsqueeze(1), 0.0)

    def jpeg(self, images: torch.Tensor) -> torch.Tensor:
        """Re-encode a share p_jpeg of the uint8 images as JPEG (on the CPU, where the codec runs)."""

        c = self.config
        apply = (torch.rand(images.shape[0]) < c.p_jpeg).nonzero().flatten().tolist()
        quality = torch.randint(c.jpeg_quality[0], c.jpeg_quality[1] + 1, (images.shape[0],)).tolist()
        if not apply:
            return images
        out = images.cpu().clone()
        for i in apply:
            out[i] = decode_jpeg(encode_jpeg(out[i].contiguous(), quality=quality[i]))
        return out.to(images.device)

    def color(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast and gamma jitter on float images in [0, 1], per image."""
        c = self.config
        b = x.shape[0]
        apply = (torch.rand(b) < c.p_color).float()
        bright = 1 + (torch.rand(b) * 2 - 1) * c.brightness * apply
        contrast = 1 + (torch.rand(b) * 2 - 1) * c.contrast * apply
        log_g = torch.empty(b).uniform_(math.log(c.gamma[0]), math.log(c.gamma[1])) * apply
        params = to_device(torch.stack([bright, contrast, log_g.exp()], 1), x.device).view(b, 3, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * params[:, 1] + mean) * params[:, 0]
        return x.clamp(0, 1).pow(params[:, 2])

    def colour_shift(self, x: torch.Tensor) -> torch.Tensor:
        """Hue, saturation and white balance on float RGB images in [0, 1], then grey with p_grey:
        one 3x3 colour matrix per image (B, 3, 3), applied to every pixel."""
        c = self.config
        b = x.shape[0]
        apply = (torch.rand(b) < c.p_colour_shift).float()
        angle = (torch.rand(b) * 2 - 1) * c.hue * 2 * math.pi * apply
        sat = 1 + (torch.rand(b) * 2 - 1) * c.saturation * apply
        gains = 1 + (torch.rand(b, 3) * 2 - 1) * c.white_balance * apply[:, None]
        gains = gains / gains.mean(1, keepdim=True)
        grey = torch.rand(b) < c.p_grey
        matrix = colour_matrices(angle, sat, gains)
        matrix[grey] = torch.tensor(LUMA).expand(3, 3)  # every output channel the luma
        m = to_device(matrix, x.device)
        return torch.einsum("bij,bjhw->bihw", m, x).clamp(0, 1)

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        """Gaussian blur (separable, 7 taps) with a sigma per image; sigma 0 where not applied."""
        c = self.config
        b, ch, h, w = x.shape
        apply = torch.rand(b) < c.p_blur
        sigma = torch.empty(b).uniform_(*c.blur_sigma)
        taps = torch.arange(-3, 4, dtype=torch.float32)
        kernel = torch.exp(-taps[None] ** 2 / (2 * sigma[:, None] ** 2))
        kernel = torch.where(apply[:, None], kernel, (taps == 0).float()[None])
        kernel = to_device(kernel / kernel.sum(1, keepdim=True), x.device)  # (B, 7)
        k = kernel.repeat_interleave(ch, 0)  # one kernel per (image, channel) plane
        planes = x.reshape(1, b * ch, h, w)
        planes = F.conv2d(F.pad(planes, (3, 3, 0, 0), mode="replicate"), k.view(b * ch, 1, 1, 7), groups=b * ch)
        planes = F.conv2d(F.pad(planes, (0, 0, 3, 3), mode="replicate"), k.view(b * ch, 1, 7, 1), groups=b * ch)
        return planes.view(b, ch, h, w)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.p_jpeg > 0:
            images = self.jpeg(images)
        x = images.float() / 255.0
        theta = to_device(self.affine_matrices(x.shape[0]), x.device)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if c.p_color > 0:
            x = self.color(x)
        if c.p_colour_shift > 0 or c.p_grey > 0:
            x = self.colour_shift(x)
        if c.p_blur > 0:
            x = self.blur(x)
        x = self.normalize.standardize(x)
        return self.erase(x) if c.p_erase > 0 else x


def mix_batch(x: torch.Tensor, targets: torch.Tensor, alpha: float, cutmix: bool):
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a batch with its own permutation.

    Args:
        x: (B, 3, S, S) normalised images.
        targets: (B, C) label distributions.
        alpha: the Beta(alpha, alpha) parameter of the mixing weight.
        cutmix: paste a box of the partner image instead of blending.

    Returns:
        (mixed images, mixed targets, lam, perm): image i mixes lam of itself with 1 - lam of perm[i].
    """
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = to_device(torch.randperm(x.shape[0]), x.device)
    if cutmix:
        h, w = x.shape[-2:]
        cut = math.sqrt(1 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (h * w)  # the area actually kept
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * targets + (1 - lam) * targets[perm], lam, perm
