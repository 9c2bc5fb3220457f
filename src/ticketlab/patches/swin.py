"""Swin students of data-level tickets (Shen et al., IJCAI 2023): dropped patches are masked, not removed.

A DeiT student simply never sees its dropped patches (``patches.vit`` leaves their tokens out). Swin cannot
remove tokens: its windows and its 2x2 patch merging need the full grid. So here a dropped patch is *masked*:

1. its embedding (after the patch norm and any absolute position embedding) is zeroed;
2. it is excluded as an attention key inside every window, shifted or not (``DEAD_KEY``, a large negative but
   finite and fp16-safe, is added to its key column on top of Swin's own shift mask and relative position bias);
3. its output is zeroed after every block, so it never feeds the next block;
4. patch merging marks a merged token alive when any of its 2x2 children is alive (dead children enter the
   merge as zeros); a merged token with no alive child is zeroed like any dead token;
5. the final pooling averages only alive tokens.

Together these make the student's output independent of the dropped pixels (the patch embedding is a
non-overlapping convolution, so a dropped patch's pixels only reach its own, zeroed, embedding): a Swin student
sees exactly the ticket's information, as a DeiT student does. Ticket indices live on the selector's grid
(``ticket_grid``, e.g. 14x14 patches of 16 px); each maps to its block of student patches (a 4x4 block of
Swin-T's 4 px patches at 224 px).

Differences from the paper: (a) compute does not drop for Swin — the full grid is computed and only the
information is dropped, so a Swin student trains at dense cost, unlike a DeiT student; (b) Shen et al.'s code
zeroes the *pixels* of dropped patches and runs an unmodified Swin (or packs the ticket patches into a smaller
dense image, not implemented here); a black patch still embeds to a bias + norm token that attends and is
attended to, so masking is the stricter reading of "trained on only the ticket patches"; (c) dead children
still enter the LayerNorm of patch merging as zeros (constant, no image information); Hugging Face's own
zero padding (grids not divisible by the window) stays unmasked, as in Hugging Face's Swin.

A selection that leaves a window of some stage without any alive token is refused with a one-line
``ConfigError`` naming the keep rate and window size (``model.options.empty_windows: error``, the default), or
allowed (``zero``): then the window's tokens are dead like any other — no NaN, since the mask is finite and
every alive query sees at least itself — and the window outputs zeros.

Written against ``transformers`` 5 Swin modules (``embeddings.{patch_embeddings, norm, position_embeddings}``,
``encoder.layers[i].{blocks, downsample}``, blocks with ``layernorm_before``, ``attention``, ``mlp`` ...).
"""

from __future__ import annotations

import torch
from torch import nn

from ticketlab.errors import ConfigError, DataError, TicketlabError
from ticketlab.models.swin import SwinBackbone

DEAD_KEY = -1.0e4  # exp(-1e4) is exactly 0 in every precision, yet the mask stays finite in fp16 (no -inf, no NaN)


def _size(value: int | list[int] | tuple[int, ...]) -> int:
    return int(value if isinstance(value, int) else value[0])


def ticket_alive(patches: torch.Tensor, ticket_grid: int, grid: int) -> torch.Tensor:
    """[B, K] indices on a ``ticket_grid``² grid -> [B, grid, grid] alive map (each ticket patch -> its block)."""
    alive = torch.zeros(len(patches), ticket_grid * ticket_grid, dtype=torch.bool, device=patches.device)
    alive.scatter_(1, patches.long(), True)
    scale = grid // ticket_grid
    return alive.view(-1, ticket_grid, ticket_grid).repeat_interleave(scale, 1).repeat_interleave(scale, 2)


def merge_alive(alive: torch.Tensor) -> torch.Tensor:
    """Patch merging's rule: a merged token is alive when any of its 2x2 children is (odd sides padded dead)."""
    b, h, w = alive.shape
    alive = nn.functional.pad(alive, (0, w % 2, 0, h % 2), value=False)
    return alive.view(b, (h + 1) // 2, 2, (w + 1) // 2, 2).any(dim=4).any(dim=2)


def partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, ...] -> [B·nW, window, window, ...] in Hugging Face's window order (row-major per image)."""
    b, h, w = x.shape[:3]
    x = x.view(b, h // window, window, w // window, window, *x.shape[3:]).transpose(2, 3)
    return x.reshape(-1, window, window, *x.shape[5:])


def unpartition(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    x = windows.view(-1, h // window, w // window, window, window, *windows.shape[3:]).transpose(2, 3)
    return x.reshape(-1, h, w, *windows.shape[3:])


def window_alive(alive: torch.Tensor, window: int, shift: int, fill: bool) -> torch.Tensor:
    """[B, H, W] -> [B·nW, window²]: who is alive in each (shifted) window; padding (Swin pads before it shifts)
    counts as ``fill``."""
    h, w = alive.shape[1:]
    alive = nn.functional.pad(alive, (0, (-w) % window, 0, (-h) % window), value=fill)
    if shift > 0:
        alive = torch.roll(alive, shifts=(-shift, -shift), dims=(1, 2))
    return partition(alive, window).flatten(1)


def key_bias(alive_keys: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B·nW, L] -> [B·nW, 1, L]: 0 for alive keys, ``DEAD_KEY`` for dead ones (never -inf: no NaN)."""
    bias = torch.zeros(alive_keys.shape, dtype=dtype, device=alive_keys.device)
    return bias.masked_fill(~alive_keys, DEAD_KEY).unsqueeze(1)


def masked_block(layer: nn.Module, hidden: torch.Tensor, dims: tuple[int, int], alive: torch.Tensor) -> torch.Tensor:
    """One Swin block (Hugging Face's ``SwinLayer.forward``, re-composed) with dead keys masked, dead outputs zeroed."""
    layer.set_shift_and_window_size(dims)  # as Hugging Face does: clamps the window to small grids
    (h, w), window, shift = dims, layer.window_size, layer.shift_size
    b, _, c = hidden.shape
    x, _ = layer.maybe_pad(layer.layernorm_before(hidden).view(b, h, w, c), h, w)
    hp, wp = x.shape[1:3]
    windows = partition(layer.cyclic_shift(x), window).view(-1, window * window, c)
    keys = key_bias(window_alive(alive, window, shift, fill=True), x.dtype)  # [B·nW, 1, L]
    shift_mask = layer.get_attn_mask(hp, wp, dtype=x.dtype, device=x.device)  # [nW, L, L] or None
    mask = keys.expand(-1, window * window, -1) if shift_mask is None else shift_mask.repeat(b, 1, 1) + keys
    out, _ = layer.attention(windows, mask)  # a mask per (image, window): Swin reads B·nW windows of one image
    out = layer.dropout(out).view(-1, window, window, c)
    out = layer.cyclic_shift(unpartition(out, window, hp, wp), reverse=True)[:, :h, :w].reshape(b, h * w, c)
    hidden = hidden + layer.drop_path(out)
    hidden = layer.dropout(layer.mlp(layer.layernorm_after(hidden))) + hidden
    return torch.where(alive.view(b, h * w, 1), hidden, 0.0)


def _check(model: nn.Module) -> None:
    if not hasattr(model, "encoder") or not all(hasattr(s, "blocks") for s in model.encoder.layers):
        raise TicketlabError(f"{type(model).__name__} is not a transformers>=5 SwinModel; Swin students need one")


def masked_swin_forward(model: nn.Module, pixel_values: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Features (mean of the alive last-stage tokens after the final LayerNorm) with dead patches masked."""
    _check(model)
    emb = model.embeddings
    hidden, dims = emb.patch_embeddings(pixel_values)
    hidden = emb.norm(hidden)
    if emb.position_embeddings is not None:
        hidden = hidden + emb.position_embeddings
    hidden = torch.where(alive.flatten(1).unsqueeze(-1), emb.dropout(hidden), 0.0)
    for stage in model.encoder.layers:
        for layer in stage.blocks:
            hidden = masked_block(layer, hidden, dims, alive)
        if stage.downsample is not None:
            alive = merge_alive(alive)
            hidden = torch.where(alive.flatten(1).unsqueeze(-1), stage.downsample(hidden, dims), 0.0)
            dims = ((dims[0] + 1) // 2, (dims[1] + 1) // 2)
    keep = alive.flatten(1).unsqueeze(-1)
    hidden = torch.where(keep, model.layernorm(hidden), 0.0)
    return hidden.sum(1) / keep.sum(1).clamp_min(1).to(hidden.dtype)


def find_empty_windows(model: nn.Module, alive: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """Which images have a (shifted) window without an alive token in some stage, and the first such
    (stage, window size), 1-based stage."""
    bad = torch.zeros(len(alive), dtype=torch.bool, device=alive.device)
    first, dims = None, tuple(alive.shape[1:])
    for i, stage in enumerate(model.encoder.layers):
        for layer in stage.blocks:
            layer.set_shift_and_window_size(dims)
            counts = window_alive(alive, layer.window_size, layer.shift_size, fill=False).any(1)
            empty = (~counts).view(len(alive), -1).any(1)
            if first is None and bool(empty.any()):
                first = (i + 1, int(layer.window_size))
            bad |= empty
        if stage.downsample is not None:
            alive, dims = merge_alive(alive), ((dims[0] + 1) // 2, (dims[1] + 1) // 2)
    return bad, first


def refuse_empty_windows(model: nn.Module, bad: int, total: int, where: tuple[int, int] | None, what: str) -> None:
    if bad:
        stage, window = where or (1, model.config.window_size)
        raise ConfigError(f"{what} leaves a {window}x{window} attention window (Swin stage {stage}) without a kept "
                          f"patch in {bad} of {total} images; raise the keep rate, use a smaller window_size, or set "
                          "the student's model.options.empty_windows: zero (empty windows then output zeros)")


class PatchSwin(SwinBackbone):
    """A Swin backbone that takes images or ``(images, patch_indices)``; dropped patches are masked (see module).

    ``ticket_grid``: the grid the indices live on (the selector's); None = the student's own patch grid.
    """

    ticket_grid: int | None = None

    def own_grid(self, image_size: int | None = None) -> int:
        config = self.model.config
        size, patch = image_size or _size(config.image_size), _size(config.patch_size)
        if size % patch:
            raise DataError(f"{size} px images do not split into the Swin student's {patch} px patches; use an "
                            "image size divisible by its patch_size")
        return size // patch

    def use_ticket_grid(self, grid: int) -> int:
        """Read patch indices on a ``grid``² grid (a ticket file's); the number of patches that grid has."""
        own = self.own_grid()
        if own % grid:
            raise DataError(f"tickets on a {grid}x{grid} grid do not map onto the Swin student's {own}x{own} patch "
                            f"grid; use an image_size / patch_size whose grid is a multiple of {grid}")
        self.ticket_grid = grid
        return grid * grid

    def alive_map(self, image_size: int, patches: torch.Tensor) -> torch.Tensor:
        own = self.own_grid(image_size)
        grid = self.ticket_grid or own
        if own % grid:
            raise DataError(f"tickets on a {grid}x{grid} grid do not map onto a {own}x{own} Swin patch grid")
        return ticket_alive(patches, grid, own)

    def check_tickets(self, tickets: dict[str, torch.Tensor], keep_rate: float, chunk: int = 4096) -> None:
        """Refuse (empty_windows: error) tickets that leave an attention window empty, before any training."""
        if self.empty_windows != "error":
            return
        size = _size(self.model.config.image_size)
        bad, total, where = 0, 0, None
        for indices in tickets.values():
            for start in range(0, len(indices), chunk):
                empty, first = find_empty_windows(self.model, self.alive_map(size, indices[start : start + chunk]))
                bad, total, where = bad + int(empty.sum()), total + len(empty), where or first
        refuse_empty_windows(self.model, bad, total, where, f"keep rate {keep_rate}")

    def forward(self, inputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        pixel_values, patches = inputs if isinstance(inputs, tuple) else (inputs, None)
        if patches is None:
            return super().forward(pixel_values)
        if pixel_values.shape[-1] != pixel_values.shape[-2]:
            raise DataError(f"Swin students take square images, got {tuple(pixel_values.shape[-2:])}")
        alive = self.alive_map(pixel_values.shape[-1], patches.to(pixel_values.device))
        if self.empty_windows == "error":
            empty, first = find_empty_windows(self.model, alive)
            grid = self.ticket_grid or alive.shape[1]
            refuse_empty_windows(self.model, int(empty.sum()), len(empty), first,
                                 f"a selection of {patches.shape[1]} of {grid * grid} patches")
        return masked_swin_forward(self.model, pixel_values, alive)


def patch_swin(backbone: nn.Module) -> PatchSwin:
    """Give a ``swin`` backbone patch-subset inputs (masking), in place (weights untouched)."""
    if isinstance(backbone, PatchSwin):
        return backbone
    if not isinstance(backbone, SwinBackbone):
        raise ConfigError(f"a Swin patch student needs a 'swin' model, got a {type(backbone).__name__} backbone")
    backbone.__class__ = PatchSwin
    return backbone
