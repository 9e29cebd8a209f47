"""Layer-wise relevance propagation (LRP) importance of attention heads and FFN neurons.

Unlike the weight-based criteria, relevance is a property of *activations*: the relevance
of a unit is ``|sum over examples and tokens of a * df/da|`` of the unit's output, where f
is the logit of the true class (Yeom et al. 2021, "Pruning by explaining"). For networks
of linear maps and piecewise-linear activations this gradient x input product is exactly
the LRP-0 relevance (Ancona et al. 2018); for GELU, softmax attention and LayerNorm it is
the usual first-order stand-in. The unit outputs are read where the structure
description says they enter their output projection:

* head h of layer l: the d-dimensional context vector of h at the input of
  ``attention_output`` (columns ``h*d:(h+1)*d``), summed over its d entries;
* FFN neuron j: the intermediate activation at the input of ``ffn_output`` (column j).

A unit whose output-projection columns are zero therefore gets relevance 0, and a unit
masked by :func:`spruce.compact.masking.apply_masks` (applied before this pass) too.

The criterion needs its own data pass (``needs_relevance``): call
:meth:`LRPImportance.accumulate` over the batches that gradient criteria would use, then
``criterion(model)`` as for any other :class:`~spruce.criteria.base.Importance`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from transformers import PreTrainedModel

from spruce.criteria.base import Importance, _stack
from spruce.models.structure import encoder_shape, layer_modules


class LRPImportance(Importance):
    """Relevance per unit: ``{"head": [L, H], "ffn_neuron": [L, F]}``, non-negative."""

    name = "lrp"
    needs_gradients = False
    needs_relevance = True

    def __init__(self) -> None:
        self._heads: list[torch.Tensor] | None = None
        self._neurons: list[torch.Tensor] | None = None
        self._channels = None  # a CNN's (spruce.criteria.channels.ChannelRelevance)

    def prepare(self, model, batches, *, device="cpu", max_batches=None, loss_fn=None) -> None:
        """Relevances over ``batches``: of an encoder's units (:meth:`accumulate`), or of a
        CNN's channels, whose batches hold ``images`` and ``labels``."""
        if hasattr(model, "config"):
            self.accumulate(model, batches, device, max_batches)
            return
        from spruce.criteria.channels import ChannelRelevance

        self._channels = ChannelRelevance()
        self._channels.accumulate(model, batches, device, max_batches)

    def group_scores(self, group) -> torch.Tensor:
        if self._channels is None:
            raise ValueError("criterion 'lrp' needs relevances: call prepare(model, batches)")
        return self._channels.group_scores(group)

    def element_scores(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError("LRP scores activations, not weights; see accumulate()")

    @contextlib.contextmanager
    def capture(self, model: PreTrainedModel) -> Iterator[None]:
        """Add ``a * dY/da`` of every unit, for each backward run inside the block.

        Y is whatever is back-propagated; :meth:`accumulate` uses the true-class logit.
        """
        shape = encoder_shape(model.config)
        layers = layer_modules(model)
        heads = [torch.zeros(layer.attention_output.in_features) for layer in layers]
        neurons = [torch.zeros(layer.ffn_output.in_features) for layer in layers]

        def recorder(store: list[torch.Tensor], index: int):
            def pre_hook(module: torch.nn.Module, args: tuple) -> None:
                x = args[0]
                if not x.requires_grad:
                    return
                activation = x.detach().clone()

                def on_grad(grad: torch.Tensor) -> None:
                    product = (activation * grad).reshape(-1, grad.shape[-1]).sum(dim=0)
                    store[index] += product.float().cpu()

                x.register_hook(on_grad)

            return pre_hook

        # Registered after any masking pre-hooks, so the masked activation is what is read.
        hooks = []
        for i, layer in enumerate(layers):
            hooks.append(layer.attention_output.register_forward_pre_hook(recorder(heads, i)))
            hooks.append(layer.ffn_output.register_forward_pre_hook(recorder(neurons, i)))
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
        d = shape.head_size
        self._heads = [h.reshape(-1, d).sum(dim=1).abs() for h in heads]
        self._neurons = [n.abs() for n in neurons]

    def accumulate(
        self,
        model: PreTrainedModel,
        batches: Iterable[dict[str, torch.Tensor]],
        device: torch.device | str = "cpu",
        max_batches: int | None = None,
    ) -> int:
        """Relevance of the true-class logit summed over ``batches``; returns the count.

        Eval mode (no dropout), like :func:`~spruce.criteria.gradient.accumulate_gradients`.
        Without ``labels`` in a batch the predicted class is explained; a regression head
        (one output) explains its output. Leaves no ``.grad`` behind.
        """
        was_training = model.training
        model.eval()
        model.zero_grad(set_to_none=True)
        count = 0
        try:
            with self.capture(model):
                for batch in batches:
                    if max_batches is not None and count >= max_batches:
                        break
                    batch = {k: v.to(device) for k, v in batch.items()}
                    labels = batch.pop("labels", None)
                    logits = model(**batch).logits
                    _target_logit(logits, labels).sum().backward()
                    count += 1
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
        return count

    @torch.no_grad()
    def __call__(self, model: PreTrainedModel) -> dict[str, torch.Tensor]:
        if self._heads is None or self._neurons is None:
            raise ValueError("criterion 'lrp' needs relevances: call accumulate(model, batches)")
        if len(self._heads) != len(layer_modules(model)):
            raise ValueError("the relevances were accumulated on a model of another depth")
        return {"head": _stack(self._heads), "ffn_neuron": _stack(self._neurons)}


def _target_logit(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    if logits.shape[-1] == 1:
        return logits[..., 0]
    if labels is None or labels.dtype.is_floating_point:
        labels = logits.argmax(dim=-1)
    return logits.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
