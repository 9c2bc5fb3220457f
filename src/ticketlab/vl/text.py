"""Text for the V+L benchmark: a BERT-family tokenizer with a compact vocabulary.

The benchmark's language is closed (the words of :data:`~ticketlab.vl.benchmark.VOCABULARY`), so the
model keeps only the embedding rows of the word pieces those words use, plus the special tokens:
the pre-trained rows are copied unchanged, the 30 k-row table shrinks to ~80 rows, and the MLM head
predicts over the same compact vocabulary. The task and the model derive the same compact ids from
the same tokenizer, so they always agree.
"""

from __future__ import annotations

from functools import cache

import torch

from ticketlab.errors import TicketlabError
from ticketlab.vl.benchmark import VOCABULARY

SPECIAL_TOKENS = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")


class VLTokenizer:
    """Encodes texts into compact ids; ``compact_ids[i]`` is the checkpoint's id of compact id ``i``."""

    def __init__(self, path: str, vocabulary: str = "benchmark") -> None:
        from transformers import AutoTokenizer

        if vocabulary not in ("benchmark", "full"):
            raise TicketlabError(f"vocabulary must be benchmark (the generated tasks' words) or full (real text), "
                                 f"got {vocabulary!r}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as exc:
            raise TicketlabError(f"no tokenizer in {path!r} ({str(exc).splitlines()[0][:160]}); give the folder "
                                 "of a BERT-family checkpoint (vocab.txt / tokenizer.json)") from exc
        special = [getattr(self.tokenizer, f"{name}_id") for name in SPECIAL_TOKENS]
        if any(i is None for i in special):
            raise TicketlabError(f"the tokenizer in {path!r} lacks one of {SPECIAL_TOKENS}; use a BERT-family one")
        if vocabulary == "full":  # every word piece of the checkpoint: real datasets' text
            words = set(range(len(self.tokenizer)))
        else:
            words = {i for w in VOCABULARY for i in self.tokenizer(w, add_special_tokens=False).input_ids}
        self.compact_ids: list[int] = sorted(set(special) | words)
        self.lookup = torch.full((max(len(self.tokenizer), max(self.compact_ids) + 1),), -1, dtype=torch.long)
        self.lookup[self.compact_ids] = torch.arange(len(self.compact_ids))
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (int(self.lookup[i]) for i in special)
        self.special_ids = (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)

    @property
    def vocab_size(self) -> int:
        return len(self.compact_ids)

    def encode(self, texts: list[str], max_length: int, pairs: list[str] | None = None) -> torch.Tensor:
        """Compact ids ``[N, max_length]`` ([CLS] text [SEP] (pair [SEP]), padded); unknown pieces -> [UNK]."""
        batch = self.tokenizer(texts, pairs, padding="max_length", truncation=True, max_length=max_length,
                               return_tensors="pt")
        ids = self.lookup[batch["input_ids"]]
        return torch.where(ids < 0, torch.tensor(self.unk_id), ids)


@cache
def tokenizer_for(path: str | None, vocabulary: str = "benchmark") -> VLTokenizer:
    """One tokenizer per checkpoint folder (default: the shipped MiniLM-L6) and vocabulary."""
    from ticketlab.models.hf import minilm_path

    return VLTokenizer(path or minilm_path(), vocabulary)
