"""V+L pre-training (UNITER): MLM conditioned on the image, ITM with sampled negatives, MRM.

The masking and negative sampling are pure functions; :class:`VLPretrainObjective` adds the
prediction heads (MLM decoder tied to the word embeddings, MRFR regression, MRC classification —
objective parts, not part of the ticket) and, like UNITER, samples one task per mini-batch with
probability proportional to its weight; masking is conditional (only one modality is masked at a
time). ITM uses the model's own 2-way head. Simplification: MRC's targets are the regions' true
classes (shape × colour) instead of a detector's soft labels (UNITER's MRC-kl); with patch features
there are no region classes, so MRM is feature regression only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.data.base import Task
from ticketlab.errors import ConfigError
from ticketlab.masks import Mask
from ticketlab.objectives.base import OBJECTIVES, Objective
from ticketlab.vl.features import REGION_CLASSES
from ticketlab.vl.model import mlp

IGNORE = -100
PRETRAINING_TASKS = ("mlm", "itm", "mrm")


def at_least_one(selected: torch.Tensor, candidates: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rows (last axis) where nothing was selected get one random candidate (every row contributes to the loss)."""
    shape = selected.shape
    selected, candidates = selected.reshape(-1, shape[-1]).clone(), candidates.reshape(-1, shape[-1])
    empty = ~selected.any(1) & candidates.any(1)
    if empty.any():
        noise = torch.rand(candidates.shape, generator=generator).masked_fill(~candidates, -1.0)
        selected[empty, noise[empty].argmax(1)] = True
    return selected.view(shape)


def mask_tokens(ids: torch.Tensor, special_ids: tuple[int, ...], mask_id: int, vocab_size: int, probability: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: each non-special token is selected with ``probability``; of those 80 % -> [MASK],
    10 % -> a random word, 10 % unchanged. Labels hold the original id where selected, -100 elsewhere."""
    candidates = ~torch.isin(ids, torch.tensor(special_ids))
    selected = at_least_one((torch.rand(ids.shape, generator=generator) < probability) & candidates, candidates,
                            generator)
    action = torch.rand(ids.shape, generator=generator)
    words = torch.tensor([i for i in range(vocab_size) if i not in special_ids])
    random_words = words[torch.randint(len(words), ids.shape, generator=generator)]
    masked = torch.where(selected & (action < 0.8), torch.tensor(mask_id), ids)
    masked = torch.where(selected & (action >= 0.8) & (action < 0.9), random_words, masked)
    return masked, torch.where(selected, ids, torch.tensor(IGNORE))


def mask_regions(image_mask: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Which real regions to mask (at least one per image)."""
    chosen = (torch.rand(image_mask.shape, generator=generator) < probability) & image_mask
    return at_least_one(chosen, image_mask, generator)


def itm_pairs(text_ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """For a batch of matched (text i, image i): image indices and ITM labels (1 = match).

    Half the samples get another sample's image; the label is 0 only when that sample's text differs,
    so a 'negative' is never secretly a match."""
    n = text_ids.shape[0]
    negative = torch.rand(n, generator=generator) < 0.5
    if n < 2:
        return torch.arange(n), torch.ones(n, dtype=torch.long)
    offsets = torch.randint(1, n, (n,), generator=generator)
    other = (torch.arange(n) + offsets) % n
    image_index = torch.where(negative, other, torch.arange(n))
    differs = (text_ids.flatten(1) != text_ids[image_index].flatten(1)).any(1)
    return image_index, (~(negative & differs)).long()


def select(inputs: dict[str, torch.Tensor], **replaced: torch.Tensor) -> dict[str, torch.Tensor]:
    return {**inputs, **replaced}


class VLPretrainObjective(Objective):
    """UNITER's pre-training losses: masked language modelling, image-text matching and masked region modelling."""

    model_only = False
    name = "vl_pretrain"

    def __init__(self, mlm: float = 1.0, itm: float = 1.0, mrm: float = 1.0, mask_probability: float = 0.15,
                 mrm_kinds: list[str] | None = None) -> None:
        super().__init__()
        self.weights = torch.tensor([mlm, itm, mrm], dtype=torch.float)
        if (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ConfigError("vl_pretrain task weights (mlm, itm, mrm) must be >= 0 with a positive sum")
        if not 0 < mask_probability < 1:
            raise ConfigError(f"mask_probability must be in (0, 1), got {mask_probability}")
        self.mask_probability = mask_probability
        self.mrm_kinds = list(mrm_kinds or ["mrfr", "mrc"])
        if set(self.mrm_kinds) - {"mrfr", "mrc"} or not self.mrm_kinds:
            raise ConfigError(f"mrm_kinds must be a non-empty subset of [mrfr, mrc], got {self.mrm_kinds}")

    def setup(self, model: nn.Module, mask: Mask | None) -> None:
        backbone = model.backbone
        if not hasattr(backbone, "embed"):
            raise ConfigError("objective vl_pretrain needs a V+L model (model.name: uniter)")
        hidden, self.tokens = model.feature_dim, backbone.vocab_size
        self.mlm_transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=1e-12))
        self.mlm_bias = nn.Parameter(torch.zeros(self.tokens))
        self.mrfr_head = mlp(hidden, hidden, backbone.feature_dim)
        self.mrc_head = mlp(hidden, hidden, REGION_CLASSES)

    # the three losses ------------------------------------------------------------------------------
    def mlm(self, model: nn.Module, inputs: dict[str, torch.Tensor], generator: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        backbone = model.backbone
        masked, labels = mask_tokens(inputs["text_ids"], backbone.tokenizer.special_ids, backbone.tokenizer.mask_id,
                                     self.tokens, self.mask_probability, generator)
        states = backbone(select(inputs, text_ids=masked)).text_states
        where = labels.flatten(0, 1) != IGNORE
        hidden = self.mlm_transform(states[where])
        logits = F.linear(hidden, backbone.word_embeddings.weight, self.mlm_bias)
        target = labels.flatten(0, 1)[where]
        return F.cross_entropy(logits, target), logits, target

    def itm(self, model: nn.Module, inputs: dict[str, torch.Tensor], generator: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index, labels = itm_pairs(inputs["text_ids"], generator)
        images = {k: v[index] for k, v in inputs.items() if k != "text_ids"}
        logits = model(select(inputs, **images))
        return F.cross_entropy(logits, labels), logits, labels

    def mrm(self, model: nn.Module, inputs: dict[str, torch.Tensor], generator: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        chosen = mask_regions(inputs["image_mask"], self.mask_probability, generator)
        feats = inputs["image_feats"].masked_fill(chosen[..., None], 0.0)
        states = model.backbone(select(inputs, image_feats=feats)).image_states[chosen.flatten(0, 1)]
        loss = states.new_zeros(())
        if "mrfr" in self.mrm_kinds:
            loss = loss + F.mse_loss(self.mrfr_head(states), inputs["image_feats"][chosen])
        labels = inputs["region_labels"][chosen]
        logits = self.mrc_head(states)
        if "mrc" in self.mrm_kinds and (labels >= 0).any():
            loss = loss + F.cross_entropy(logits[labels >= 0], labels[labels >= 0])
        return loss, logits, labels

    # objective API -------------------------------------------------------------------------------
    def loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        choice = int(torch.multinomial(self.weights, 1, generator=generator))
        return getattr(self, PRETRAINING_TASKS[choice])(model, inputs, generator)[0]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, task: Task, split: str, batch_size: int = 256) -> float:
        """MLM accuracy on masked words, ITM accuracy and MRC accuracy (when regions have classes), with a
        fixed masking seed; the score is their mean. Each objective's chance level (the rate of its most frequent
        target) and target count are kept beside it, so a report can tell a learned objective from chance."""
        was_training = model.training
        model.eval()
        data = getattr(task, split)
        generator = torch.Generator().manual_seed(0)
        hits = {name: [0, 0] for name in PRETRAINING_TASKS}
        targets: dict[str, list[torch.Tensor]] = {name: [] for name in PRETRAINING_TASKS}
        for start in range(0, len(data), batch_size):
            inputs = data.inputs(slice(start, start + batch_size))
            for name in PRETRAINING_TASKS:
                _, logits, target = getattr(self, name)(model, inputs, generator)
                valid = target >= 0
                hits[name][0] += int((logits.argmax(-1)[valid] == target[valid]).sum())
                hits[name][1] += int(valid.sum())
                targets[name].append(target[valid].flatten())
        model.train(was_training)
        details = {f"{name}_acc": h / n for name, (h, n) in hits.items() if n}
        score = sum(details.values()) / len(details)
        for name, (_, n) in hits.items():
            if n:
                details |= {f"{name}_chance": int(torch.cat(targets[name]).bincount().max()) / n, f"{name}_n": n}
        self.details[split] = {"score": score, **details}
        return self.details[split]["score"]


OBJECTIVES.register("vl_pretrain")(VLPretrainObjective)
