"""A frozen teacher that answers repeated inputs from memory.

Distillation runs the dense teacher on every labelled batch of the pruning phase and the
final fine-tune, although the labelled set is small and repeats every epoch: on SST-2
with 1,000 labels the teacher saw each row 15 times in the default recipe. The teacher is
frozen and in eval mode, so its outputs for a row never change; :class:`CachedTeacher`
computes them once per row and assembles later batches from memory.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

# Rows beyond this many bytes of stored outputs are not cached (their batches run the
# teacher): the labelled sets spruce is meant for stay far below it (SST-2, 1,000 rows
# of MiniLM: ~140 MB; 500 e-mails of 128 tokens: ~690 MB).
DEFAULT_MAX_BYTES = 1 << 30


class CachedTeacher(nn.Module):
    """``teacher``'s logits and hidden states per input row, keyed by the row's tokens
    (the attention-masked ``input_ids`` and ``token_type_ids``), so the same rows hit
    whatever batch, order or padding they come in. A batch runs the teacher unless every
    row is known; its outputs then fill the cache up to ``max_bytes``.

    Always returns the hidden states (the layer distillation reads them). The stored
    outputs stay on the teacher's device (no copies per step), so on a GPU the budget is
    GPU memory. Only for a frozen teacher in eval mode: a teacher that changes makes the
    cache stale.
    """

    def __init__(self, teacher: nn.Module, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__()
        self.teacher = teacher
        self.max_bytes = max_bytes
        self.stored_bytes = 0
        self.hits = 0  # batches answered from memory
        self.misses = 0  # batches the teacher ran on
        self._rows: dict[bytes, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = {}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **_: object,
    ) -> SequenceClassifierOutput:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        keep = mask.bool()
        keys = [_row_key(input_ids[i], token_type_ids, i, keep[i]) for i in range(len(keep))]
        if all(key in self._rows for key in keys):
            self.hits += 1
            return self._assemble(keys, keep)
        self.misses += 1
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        outputs = self.teacher(**inputs, output_hidden_states=True)
        self._store(keys, keep, outputs)
        return outputs

    def _store(self, keys: list[bytes], keep: torch.Tensor, outputs) -> None:
        for i, key in enumerate(keys):
            if key in self._rows:
                continue
            states = tuple(layer[i, keep[i]].clone() for layer in outputs.hidden_states)
            size = sum(s.numel() * s.element_size() for s in states)
            if self.stored_bytes + size > self.max_bytes:
                return
            self._rows[key] = (outputs.logits[i].clone(), states)
            self.stored_bytes += size

    def _assemble(self, keys: list[bytes], keep: torch.Tensor) -> SequenceClassifierOutput:
        rows = [self._rows[key] for key in keys]
        logits = torch.stack([logit for logit, _ in rows])
        hidden_states = []
        for layer in range(len(rows[0][1])):
            flat = torch.cat([states[layer] for _, states in rows])
            # Padded positions stay zero: the losses weigh them out with the mask.
            full = flat.new_zeros(*keep.shape, flat.shape[-1])
            full[keep] = flat  # boolean indexing fills row by row, as cat joined them
            hidden_states.append(full)
        return SequenceClassifierOutput(logits=logits, hidden_states=tuple(hidden_states))


def _row_key(
    input_ids: torch.Tensor, token_type_ids: torch.Tensor | None, row: int, keep: torch.Tensor
) -> bytes:
    key = input_ids[keep].cpu().numpy().tobytes()
    if token_type_ids is None:
        return key
    return key + b"|" + token_type_ids[row][keep].cpu().numpy().tobytes()
