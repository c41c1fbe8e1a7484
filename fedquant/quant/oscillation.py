"""Weight oscillations in QAT, after Nagel, Fournarakis, Bondarenko, Blankevoort, "Overcoming
Oscillations in Quantization-Aware Training" (ICML 2022, arXiv 2203.11086): the client side.

With the straight-through estimator a latent weight ``w`` near a decision threshold
``(k + 1/2) s`` flips between the integers ``k`` and ``k + 1`` step after step. The paper counts
and damps those flips:

- integer weight at step ``t``: ``w_int^t = clamp(round(w^t / s), n, p)`` (the grid ``[n, p]``);
- an **oscillation** at ``t``: the integer moves, ``d^t = w_int^t - w_int^(t-1) != 0``, and in the
  direction opposite to its previous move, ``sign(d^t) != sign(d^tau)`` (``tau`` the last step
  with ``d != 0``): ``o^t = 1`` then, else 0;
- **dampening** (its eq. 5): ``L = L_task + lambda * sum_w (sg(q(w)) - clip(w, s n, s p))^2``,
  which pulls each latent weight towards the centre of its bin (``sg``: no gradient through the
  bin centre; the clip leaves weights outside the grid to the range);
- **freezing**: a weight whose oscillation frequency (an EMA of ``o^t``) passes a threshold is
  fixed at its most frequent integer value. In fedquant the frequencies are pooled and the
  weights frozen by the server (:mod:`fedquant.federation.freezing`); clients count here and keep
  frozen weights fixed with :class:`FrozenWeights`.

Only unpinned layers take part (pinned first/last layers run at 8 bits, where the paper tracks
nothing either). With per-step bit-widths the grid changes from step to step, so the counter uses
one **reference grid**, the lowest weight bit-width the federation trains, for every step: the
integer value on it is a function of the latent weight and the range alone, defined whatever the
step's bit-width. Dampening pulls towards the bins of the grid the step actually trains at.
"""

from __future__ import annotations

import torch
from torch import nn

from .grids import weight_grid
from .modules import QuantLayerMixin, quant_layers


def tracked_layers(model: nn.Module) -> dict[str, QuantLayerMixin]:
    """The unpinned quantized layers by the name of their weight in ``state_dict``."""
    names = {id(m): name for name, m in model.named_modules()}
    return {".".join(filter(None, (names[id(m)], "weight"))): m for m in quant_layers(model) if not m.pinned}


@torch.no_grad()
def integer_weights(layer: QuantLayerMixin, bits: int) -> torch.Tensor:
    """``clamp(round(w / s), n, p)`` on the ``bits`` grid of the layer's weight quantizer."""
    wq = layer.weight_quantizer
    qmin, qmax = weight_grid(bits, wq.narrow_range)
    return torch.round(layer.weight / wq.scale_at(layer.weight, bits)).clamp_(qmin, qmax)


def dampening_loss(layers: dict[str, QuantLayerMixin]) -> torch.Tensor | None:
    """``sum_w (sg(q(w)) - clip(w, s n, s p))^2`` over ``layers`` at their current weight
    bit-width (layers set to float add nothing; None when all are)."""
    terms = []
    for layer in layers.values():
        bits = layer.weight_quantizer.bits
        if bits is None:
            continue
        w = layer.weight
        s = layer.weight_quantizer.scale_at(w, bits).detach()
        qmin, qmax = weight_grid(bits, layer.weight_quantizer.narrow_range)
        centre = (torch.round(w.detach() / s).clamp_(qmin, qmax) * s)
        terms.append((centre - torch.clamp(w, qmin * s, qmax * s)).pow(2).sum())
    return torch.stack(terms).sum() if terms else None


class OscillationCounter:
    """Counts each weight's oscillations (``o^t`` above) on the reference grid of ``bits``.

    Call :meth:`update` after every counted optimizer step and :meth:`skip` after any other (a
    float step): the next update then measures the move from where the skipped step left the
    weights, so a float step's move is never counted. ``counts[name]`` holds ``sum_t o^t`` and
    ``integer_sums[name]`` ``sum_t w_int^t`` over the ``steps`` updates, per weight entry: the
    server pools both over clients (oscillation frequency and most frequent integer value).
    """

    def __init__(self, layers: dict[str, QuantLayerMixin], bits: int) -> None:
        self.layers, self.bits, self.steps = layers, bits, 0
        self.previous = {k: integer_weights(m, bits) for k, m in layers.items()}
        self.direction = {k: torch.zeros_like(v) for k, v in self.previous.items()}  # sign of the last move
        self.counts = {k: torch.zeros_like(v) for k, v in self.previous.items()}
        self.integer_sums = {k: torch.zeros_like(v) for k, v in self.previous.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, layer in self.layers.items():
            current = integer_weights(layer, self.bits)
            move = (current - self.previous[name]).sign_()  # -1, 0, +1
            last = self.direction[name]
            self.counts[name] += (move * last) < 0  # a move against the previous one (both nonzero)
            self.direction[name] = torch.where(move != 0, move, last)
            self.previous[name] = current
            self.integer_sums[name] += current
        self.steps += 1

    @torch.no_grad()
    def skip(self) -> None:
        for name, layer in self.layers.items():
            self.previous[name] = integer_weights(layer, self.bits)


class FrozenWeights:
    """Keeps the entries ``masks[name]`` (bool, the weight's shape) of the model's weights at the
    values they have now: call :meth:`restore` after every optimizer step."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        self.frozen = [(params[name], mask.to(params[name].device, torch.bool), params[name].detach().clone())
                       for name, mask in masks.items() if bool(mask.any())]

    @torch.no_grad()
    def restore(self) -> None:
        for param, mask, value in self.frozen:
            torch.where(mask, value, param, out=param)
