"""Model soups: average the weights of several models fine-tuned from the same initialisation.

Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves accuracy
without increasing inference time", ICML 2022:

* the **uniform soup** averages every member;
* the **greedy soup** sorts the members by validation score, starts from the best one and adds
  each next member only if the soup of the kept members plus it scores at least as well on
  validation.

Both are compared with the best single member chosen on validation. Written here (a few lines of
``torch``) because no dependency of medfm provides weight averaging of plain state dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

StateDict = dict[str, torch.Tensor]


def average_state_dicts(states: Sequence[StateDict]) -> StateDict:
    """The element-wise mean of state dicts with the same keys and shapes.

    Floating-point tensors are averaged in float64 and cast back; integer buffers (counters)
    are taken from the first member.
    """
    if not states:
        raise ValueError("a soup needs at least one model")
    keys = set(states[0])
    for i, state in enumerate(states[1:], 1):
        if set(state) != keys:
            raise ValueError(
                f"model {i} has different parameters than model 0; soups need one "
                "architecture fine-tuned from one initialisation"
            )
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            total = sum(s[key].detach().double() for s in states)
            out[key] = (total / len(states)).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def uniform_soup(states: Sequence[StateDict]) -> StateDict:
    """Every member averaged."""
    return average_state_dicts(states)


def greedy_soup(
    states: Sequence[StateDict], val_score: Callable[[StateDict], float]
) -> tuple[StateDict, list[int]]:
    """The greedy soup and the indices of the members it kept (best member first).

    ``val_score(state_dict)`` is the validation score (higher is better) of a model holding
    those weights.
    """
    scores = [val_score(s) for s in states]
    order = sorted(range(len(states)), key=lambda i: -scores[i])
    kept, best = [order[0]], scores[order[0]]
    for i in order[1:]:
        candidate = average_state_dicts([states[j] for j in kept + [i]])
        score = val_score(candidate)
        if score >= best:
            kept.append(i)
            best = score
    return average_state_dicts([states[j] for j in kept]), kept
