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


SUPERVISED_AUGMENTATIONS = {"none": None, "cifar": cifar_crop_flip, "imagenet": imagenet_crop_flip}
