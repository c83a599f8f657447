"""A teacher with another tokenizer than the data's: the ULD setting (Boizard et al., 2024, "Towards Cross-Tokenizer
Distillation: the Universal Logit Distillation Loss for LLMs").

:class:`RetokenizedLM` wraps the teacher (an ``hf:`` causal LM whose folder holds its own tokenizer). Each batch row
of the data's token ids is decoded to text with the data's tokenizer (``teachers[i].params.input_tokenizer``) and
encoded again with the teacher's own; the teacher reads those ids, cut or padded to the row's T positions, and returns
(B·T, V_teacher) logits. Position t of the teacher is compared with position t of the student (responses aligned by
position, as in the paper); a position the teacher's tokenization does not reach (it cut the text into fewer tokens)
is a row of NaN, which ``lm_uld`` leaves out. Only a sorted-probability loss (``lm_uld``) can compare the two
distributions, whose vocabularies differ.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kdkit.text.tokenizers import load_tokenizer


class RetokenizedLM(nn.Module):
    """``forward((B, T) data ids) -> (B·T, V_teacher)`` logits of ``lm`` on the same text in its own tokens.

    Args:
        lm: the teacher (a :class:`kdkit.lm.models.CausalLM` over its own vocabulary).
        input_tokenizer: the data's tokenizer (folder or ``hf:PATH``): decodes the ids the batch holds.
        own_tokenizer: the teacher's tokenizer (usually its ``hf:`` folder): encodes the text for the teacher.
    """

    kd_task = "causal_lm"

    def __init__(self, lm: nn.Module, input_tokenizer: str, own_tokenizer: str) -> None:
        super().__init__()
        self.lm = lm
        self.input_tokenizer = input_tokenizer
        self.own_tokenizer = own_tokenizer
        self._src: Any = load_tokenizer(input_tokenizer)
        self._dst: Any = load_tokenizer(own_tokenizer)

    @property
    def source(self) -> str:
        return str(getattr(self.lm, "source", "teacher"))

    def retokenize(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) data ids -> (B, T) teacher ids of the same text (padded with the teacher's padding id) and (B, T)
        True where the teacher has a token."""
        b, t = input_ids.shape
        texts = self._src.batch_decode(input_ids.detach().cpu().tolist(), skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)
        encoded = self._dst(texts, add_special_tokens=False)["input_ids"]
        pad = int(self._dst.pad_token_id)
        ids = torch.full((b, t), pad, dtype=torch.int64)
        valid = torch.zeros(b, t, dtype=torch.bool)
        for i, row in enumerate(encoded):
            row = row[:t]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
            valid[i, : len(row)] = True
        return ids.to(input_ids.device), valid.to(input_ids.device)

    def forward(self, input_ids: Tensor) -> Tensor:
        ids, valid = self.retokenize(input_ids)
        logits = self.lm(ids)
        return logits.masked_fill(~valid.reshape(-1, 1), float("nan"))


__all__ = ["RetokenizedLM"]
