"""Tensor augmentations (torchvision does not import here), batched and deterministic under a generator.

Inputs are float batches ``[B, 3, H, W]`` in [-1, 1]. Each op draws its per-sample randomness from the
given ``torch.Generator``, so a seeded run sees the same views every time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def random_resized_crop_flip(x: torch.Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.3, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5) -> torch.Tensor:
    """Crop a random area fraction/aspect and resize back to the input size; flip horizontally with ``flip_p``."""
    b = x.shape[0]
    area = _uniform(b, *scale, gen)
    log_ratio = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), gen)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=gen) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(b, generator=gen) < flip_p, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def colour_jitter(x: torch.Tensor, gen: torch.Generator, strength: float = 0.4, p: float = 0.8) -> torch.Tensor:
    """Random brightness, contrast and saturation (SimCLR's jitter without hue), applied with probability p."""
    b = x.shape[0]
    img = (x + 1) / 2
    bright = _uniform(b, 1 - strength, 1 + strength, gen).view(b, 1, 1, 1)
    contrast = _uniform(b, 1 - strength, 1 + strength, gen).view(b, 1, 1, 1)
    saturation = _uniform(b, 1 - strength, 1 + strength, gen).view(b, 1, 1, 1)
    out = img * bright
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast + mean
    gray = out.mean(dim=1, keepdim=True)
    out = (out - gray) * saturation + gray
    apply = (torch.rand(b, generator=gen) < p).view(b, 1, 1, 1)
    return torch.where(apply, out.clamp(0, 1) * 2 - 1, x)


def random_grayscale(x: torch.Tensor, gen: torch.Generator, p: float = 0.2) -> torch.Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    gray = (x * weights).sum(dim=1, keepdim=True).expand_as(x)
    apply = (torch.rand(x.shape[0], generator=gen) < p).view(-1, 1, 1, 1)
    return torch.where(apply, gray, x)


def gaussian_blur(x: torch.Tensor, gen: torch.Generator, p: float = 0.5, sigma: tuple[float, float] = (0.1, 1.5),
                  kernel_size: int = 5) -> torch.Tensor:
    """Per-sample Gaussian blur with a random sigma, as one grouped convolution."""
    b, c, h, w = x.shape
    sig = _uniform(b, *sigma, gen)
    offsets = torch.arange(kernel_size, dtype=x.dtype) - kernel_size // 2
    kernel1d = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sig.view(-1, 1) ** 2))
    kernel1d = kernel1d / kernel1d.sum(dim=1, keepdim=True)
    kernel2d = kernel1d[:, :, None] * kernel1d[:, None, :]
    weight = kernel2d.repeat_interleave(c, dim=0).unsqueeze(1)
    padded = F.pad(x.reshape(1, b * c, h, w), [kernel_size // 2] * 4, mode="reflect")
    blurred = F.conv2d(padded, weight, groups=b * c).view(b, c, h, w)
    apply = (torch.rand(b, generator=gen) < p).view(-1, 1, 1, 1)
    return torch.where(apply, blurred, x)


@dataclass(frozen=True)
class ContrastiveAugment:
    """The SimCLR / MoCo v2 view pipeline: crop+flip, colour jitter, grayscale, blur."""

    crop_scale: float = 0.3
    jitter: float = 0.4
    grayscale_p: float = 0.2
    blur_p: float = 0.5

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = random_resized_crop_flip(x, gen, scale=(self.crop_scale, 1.0))
        x = colour_jitter(x, gen, self.jitter)
        x = random_grayscale(x, gen, self.grayscale_p)
        return gaussian_blur(x, gen, self.blur_p)


def cifar_crop_flip(x: torch.Tensor, gen: torch.Generator, padding: int = 4) -> torch.Tensor:
    """CIFAR-style: a random crop of the zero-padded image (4 px) and a horizontal flip with p = 0.5, batched."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])  # [b, h]
    cols = dx[:, None] + torch.arange(w, device=x.device)[None]  # [b, w]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    index = rows[:, None, :, None] * padded.shape[-1] + cols[:, None, None, :]  # [b, 1, h, w]
    flat = padded.flatten(2)
    return torch.gather(flat, 2, index.flatten(2).expand(-1, x.shape[1], -1)).view_as(x)


def imagenet_crop_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """ImageNet-style: random-resized-crop (area 8-100 %, aspect 3/4-4/3) back to the input size, then a flip."""
    return random_resized_crop_flip(x, gen, scale=(0.08, 1.0))


# deit: DeiT's crop (timm's RandomResizedCrop 8-100 % + flip); its RandAugment, erasing and mixing: ``deit_recipe``
SUPERVISED_AUGMENTATIONS = {"none": None, "cifar": cifar_crop_flip, "imagenet": imagenet_crop_flip,
                            "deit": imagenet_crop_flip}


# -- DeiT's per-image ops (``ticketlab.deit_recipe``): timm's RandAugment and random erasing, batched -------------------
def _draw_seed(gen: torch.Generator) -> int:
    """A seed drawn from ``gen``: for streams ``gen`` cannot feed itself (device noise, numpy's Beta)."""
    return int(torch.randint(0, 2**62, (1,), generator=gen))


def _affine(img: torch.Tensor, m: list[torch.Tensor], fill: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.transform(AFFINE, (a, b, c, d, e, f))``: output pixel (X, Y) reads input (aX+bY+c, dX+eY+f),
    continuous pixel coordinates, bicubic, outside = ``fill`` (per-sample coefficients ``m`` = [a, b, c, d, e, f])."""
    n, _, h, w = img.shape
    a, b, c, d, e, f = m
    theta = torch.stack([torch.stack([a, b * h / w, a + b * h / w + 2 * c / w - 1], 1),
                         torch.stack([d * w / h, e, d * w / h + e + 2 * f / h - 1], 1)], 1).to(img.dtype)
    grid = F.affine_grid(theta, [n, 3, h, w], align_corners=False)
    return (F.grid_sample(img - fill, grid, mode="bicubic", padding_mode="zeros", align_corners=False) + fill).clamp(0, 1)


def _blend(img: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance``: ``degenerate + factor * (img - degenerate)``, clipped."""
    return (degenerate + factor.view(-1, 1, 1, 1) * (img - degenerate)).clamp(0, 1)


def _gray(img: torch.Tensor) -> torch.Tensor:
    return (img * torch.tensor([0.299, 0.587, 0.114], device=img.device, dtype=img.dtype).view(1, 3, 1, 1)).sum(
        1, keepdim=True)  # PIL's convert("L") weights


def _equalize(img: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.equalize`` per channel: the 256-bin cumulative histogram as a lookup table."""
    n, c, h, w = img.shape
    q = (img * 255).round().long().flatten(2)
    hist = torch.zeros(n, c, 256, dtype=torch.long, device=img.device).scatter_add_(2, q, torch.ones_like(q))
    last = hist.gather(2, 255 - (hist.flip(2) > 0).int().argmax(2, keepdim=True))  # count of the last used bin
    step = (h * w - last) // 255
    lut = ((hist.cumsum(2) - hist + step // 2) // step.clamp(min=1)).clamp(0, 255)
    return torch.where(step > 0, lut.gather(2, q), q).view(n, c, h, w).to(img.dtype) / 255


def _smooth(img: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3×3, centre 5, /13) inside, the border kept: ``ImageEnhance.Sharpness``'s degenerate."""
    kernel = torch.ones(3, 3, dtype=img.dtype, device=img.device)
    kernel[1, 1] = 5
    out = img.clone()
    out[..., 1:-1, 1:-1] = F.conv2d(img, (kernel / 13).expand(3, 1, 3, 3), groups=3)
    return out


def _autocontrast(img: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.autocontrast``: each channel stretched to the full range (a flat channel is kept)."""
    low, high = img.amin((2, 3), keepdim=True), img.amax((2, 3), keepdim=True)
    return torch.where(high > low, (img - low) / (high - low).clamp(min=1e-12), img)


def _quantised(img: torch.Tensor) -> torch.Tensor:
    return (img * 255).round().long()


def _enhance(level: torch.Tensor, sign: torch.Tensor, increasing: bool) -> torch.Tensor:
    """timm's enhance factors: increasing = 1 ± 0.9·level (>= 0.1), else 0.1 + 1.8·level."""
    return (1 + sign * level * 0.9).clamp(min=0.1) if increasing else level * 1.8 + 0.1


def _rotate(img: torch.Tensor, lv: torch.Tensor, s: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    h, w = img.shape[-2:]
    a = -torch.deg2rad(s * lv * 30)
    cos, sin = torch.cos(a), torch.sin(a)
    return _affine(img, [cos, sin, w / 2 - cos * w / 2 - sin * h / 2, -sin, cos, h / 2 + sin * w / 2 - cos * h / 2],
                   fill)


def _shift(img: torch.Tensor, bx: torch.Tensor, by: torch.Tensor, fill: torch.Tensor, shear: bool) -> torch.Tensor:
    one, zero = torch.ones_like(bx), torch.zeros_like(bx)
    if shear:
        return _affine(img, [one, bx, zero, by, one, zero], fill)
    return _affine(img, [one, zero, bx * img.shape[-1], zero, one, by * img.shape[-2]], fill)


def _posterize(img: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    shift = (8 - bits).long().view(-1, 1, 1, 1)
    return ((_quantised(img) >> shift) << shift).to(img.dtype) / 255


def _solarize(img: torch.Tensor, thresh: torch.Tensor) -> torch.Tensor:
    return torch.where(_quantised(img) < thresh.view(-1, 1, 1, 1), img, 1 - img)


# name -> op(img in [0, 1], level = magnitude / 10, sign ±1, increasing, fill): timm's RandAugment ops and arguments
_RAND_OPS = {
    "AutoContrast": lambda x, lv, s, inc, fill: _autocontrast(x),
    "Equalize": lambda x, lv, s, inc, fill: _equalize(x),
    "Invert": lambda x, lv, s, inc, fill: 1 - x,
    "Rotate": lambda x, lv, s, inc, fill: _rotate(x, lv, s, fill),
    "Posterize": lambda x, lv, s, inc, fill: _posterize(x, 4 - (lv * 4).floor() if inc else (lv * 4).floor()),
    "Solarize": lambda x, lv, s, inc, fill: _solarize(x, 256 - (lv * 256).floor() if inc else (lv * 256).floor()),
    "SolarizeAdd": lambda x, lv, s, inc, fill: torch.where(
        _quantised(x) < 128, (x + (lv * 110).floor().view(-1, 1, 1, 1) / 255).clamp(max=1), x),
    "Color": lambda x, lv, s, inc, fill: _blend(x, _gray(x).expand_as(x), _enhance(lv, s, inc)),
    "Contrast": lambda x, lv, s, inc, fill: _blend(
        x, (_gray(x).mean((1, 2, 3), keepdim=True) * 255).round() / 255, _enhance(lv, s, inc)),
    "Brightness": lambda x, lv, s, inc, fill: _blend(x, torch.zeros_like(x), _enhance(lv, s, inc)),
    "Sharpness": lambda x, lv, s, inc, fill: _blend(x, _smooth(x), _enhance(lv, s, inc)),
    "ShearX": lambda x, lv, s, inc, fill: _shift(x, s * lv * 0.3, torch.zeros_like(lv), fill, shear=True),
    "ShearY": lambda x, lv, s, inc, fill: _shift(x, torch.zeros_like(lv), s * lv * 0.3, fill, shear=True),
    "TranslateXRel": lambda x, lv, s, inc, fill: _shift(x, s * lv * 0.45, torch.zeros_like(lv), fill, shear=False),
    "TranslateYRel": lambda x, lv, s, inc, fill: _shift(x, torch.zeros_like(lv), s * lv * 0.45, fill, shear=False),
}


@dataclass(frozen=True)
class RandAugment:
    """timm's RandAugment (``rand-m9-mstd0.5-inc1`` in DeiT): per image ``num_ops`` ops drawn uniformly with
    replacement from timm's 15, each applied with p = 0.5 at a magnitude ~ N(magnitude, magnitude_std) clipped to
    [0, magnitude_max] (out of 10); ``increasing`` = timm's ``inc1`` op set (severity grows with magnitude).

    Plain tensor ops on the batch, each op run once on the images that drew it (kornia's RandAugment follows
    another policy and draws from the global RNG). Simplified from PIL: float images, not uint8 (posterize,
    solarize and equalize quantise to 256 levels as PIL does); geometric ops fill with ``fill`` (the network's
    input mean, as timm fills with ``img_mean``) and sample bicubically like DeiT."""

    num_ops: int = 2
    magnitude: float = 9.0
    magnitude_std: float = 0.5
    magnitude_max: float = 10.0
    increasing: bool = True
    prob: float = 0.5

    def __call__(self, x: torch.Tensor, gen: torch.Generator, fill: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` in [-1, 1] -> the augmented batch in [-1, 1]; ``fill`` a [1, 3, 1, 1] colour in [-1, 1]."""
        b, k = x.shape[0], self.num_ops
        names = list(_RAND_OPS)
        choice = torch.randint(0, len(names), (b, k), generator=gen)
        applied = torch.rand(b, k, generator=gen) < self.prob
        if math.isinf(self.magnitude_std):
            magnitude = torch.rand(b, k, generator=gen) * self.magnitude
        else:
            magnitude = self.magnitude + self.magnitude_std * torch.randn(b, k, generator=gen)
        level = magnitude.clamp(0, self.magnitude_max) / 10
        sign = torch.where(torch.rand(b, k, generator=gen) < 0.5, -1.0, 1.0)
        img = ((x + 1) / 2).clamp(0, 1)
        fill01 = torch.full((1, 3, 1, 1), 0.5) if fill is None else (fill.detach().cpu().view(1, 3, 1, 1) + 1) / 2
        fill01 = fill01.to(x.device, x.dtype)
        for layer in range(k):
            for index, name in enumerate(names):
                rows = torch.nonzero(applied[:, layer] & (choice[:, layer] == index)).flatten()
                if len(rows):
                    args = (level[rows, layer].to(x.device, x.dtype), sign[rows, layer].to(x.device, x.dtype))
                    on = rows.to(x.device)
                    img[on] = _RAND_OPS[name](img[on], *args, self.increasing, fill01)
        return img * 2 - 1


def random_erasing(x: torch.Tensor, gen: torch.Generator, p: float = 0.25, area: tuple[float, float] = (0.02, 1 / 3),
                   aspect: tuple[float, float] = (0.3, 1 / 0.3), mean: torch.Tensor | float = 0.0,
                   std: torch.Tensor | float = 1.0) -> torch.Tensor:
    """timm's RandomErasing (Zhong et al. 2020), mode "pixel", one box: with probability ``p`` a box of area fraction
    U(area) and log-uniform aspect (first of 10 draws that fits, else none) at a uniform position gets per-pixel
    noise ``mean + std * N(0, 1)`` — timm's N(0, 1) of the normalised input when mean/std undo the network's
    normalisation. The noise comes from a device generator seeded from ``gen`` (reproducible per device kind)."""
    b, c, h, w = x.shape
    target = (area[0] + (area[1] - area[0]) * torch.rand(b, 10, generator=gen)) * h * w
    low, high = math.log(aspect[0]), math.log(aspect[1])
    ratio = torch.exp(low + (high - low) * torch.rand(b, 10, generator=gen))
    eh, ew = torch.sqrt(target * ratio).round().long(), torch.sqrt(target / ratio).round().long()
    fits = (ew < w) & (eh < h)
    first = fits.int().argmax(1, keepdim=True)
    eh, ew = eh.gather(1, first).flatten(), ew.gather(1, first).flatten()
    erase = (torch.rand(b, generator=gen) < p) & fits.any(1)
    top = (torch.rand(b, generator=gen) * (h - eh + 1)).floor().long()
    left = (torch.rand(b, generator=gen) * (w - ew + 1)).floor().long()
    top, eh, left, ew, erase = (t.to(x.device) for t in (top, eh, left, ew, erase))  # the box is built there
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    box = (in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None]).unsqueeze(1)
    noise_gen = torch.Generator(device=x.device).manual_seed(_draw_seed(gen))
    noise = torch.randn(x.shape, generator=noise_gen, device=x.device, dtype=x.dtype) * std + mean
    return torch.where(box, noise, x)
