"""DR-Tune: fine-tuning regularised by the pre-trained feature distribution, with semantic
calibration (Zhou, Chen and Huang, "DR-Tune: Improving Fine-tuning of Pretrained Visual Models
by Distribution Regularization with Semantic Calibration", ICCV 2023; official code
github.com/weeknan/DR-Tune).

Plain fine-tuning trains the classifier on the features of the encoder being fine-tuned only,
so head and encoder can over-fit a small labelled set together. DR-Tune keeps a *frozen* copy of
the pre-trained encoder and also trains the classifier on the pre-trained features of the
training images (**distribution regularisation**, DR): the head must separate the classes in the
pre-trained feature distribution too, which keeps its decision boundary smooth while the
fine-tuned encoder is free to move. Because fine-tuning moves the features ("semantic drift"),
the pre-trained features are first aligned to the fine-tuned ones (**semantic calibration**,
SC): a global alignment (difference of means and a rotation, orthogonal Procrustes) and a
per-class translation that moves each class centre of the pre-trained features onto the
fine-tuned class centre. Both distributions are kept in queues of the last ``K`` training
images (pre-trained feature, fine-tuned feature, label), as the paper does.

With ``B`` images in a batch, ``N <= K`` filled queue slots and ``D`` feature dimensions::

    loss = CE(head(f_ft), y)  +  weight * CE(head(SC(queue_pre)), queue_y)
           (B, D) -> (B, C)               (N, D) -> (N, D) -> (N, C)

The gradient of the second term reaches the classifier only: the queues hold detached
features and the frozen encoder runs under ``no_grad``. Test-time prediction uses the fine-tuned
encoder alone, so a DR-Tune model predicts exactly like a fine-tuned one.

What differs from the paper and its official code:

* the loss is ``CE(batch) + weight * CE(queue)`` (two means); the official code averages one
  cross-entropy over the batch and the queue concatenated, i.e. weights them ``B : K``;
* the current batch is enqueued *before* the calibration, so the queue needs no warm-up pass
  (the official code fills it with pre-trained features before training); a fresh run starts
  with a queue of one batch;
* the per-class centres of *both* distributions use the same confidence weights (softmax over
  the class's queued images of ``cos(fine-tuned feature, classifier row)``); the paper weights the
  fine-tuned centre only and takes the plain mean of the pre-trained one. Weighting both keeps
  the pairs matched, so two identical encoders give exactly zero shift;
* the rotation is solved every step (the official code does it every tenth step and skips it
  otherwise), and the global mean difference is added back after rotating;
* under DDP the queue is the one of rank 0, broadcast by DDP with the other buffers, plus each
  process's current batch (the official code runs one process).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from medfm.models.backbones import encode


def procrustes_rotation(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The rotation ``R`` (orthogonal, ``det R = +1``) minimising ``sum_i |R s_i - t_i|^2``
    (orthogonal Procrustes / Kabsch, by SVD; the paper's global "shape" alignment).

    Args:
        source, target: ``(N, D)`` paired rows, already centred by the caller.
    Returns:
        ``(D, D)`` rotation; apply it to rows as ``source @ R.T``.
    """
    u, _, vh = torch.linalg.svd(target.T @ source)  # sum_i t_i s_i^T = U S V^T -> R = U V^T
    sign = torch.ones(u.shape[0], dtype=u.dtype, device=u.device)
    if torch.det(u @ vh) < 0:  # a reflection: flip the least significant direction
        sign[-1] = -1.0
    return (u * sign) @ vh


@dataclasses.dataclass
class Calibration:
    """The calibrated pre-trained features and the alignment that produced them.

    Attributes:
        features: ``(N, D)`` calibrated pre-trained features.
        global_shift: ``(D,)`` mean of the fine-tuned minus mean of the pre-trained unit rows.
        rotation: ``(D, D)`` rotation applied to the centred pre-trained rows (identity when
            ``rotate`` is off, or when the two centred sets are identical).
        class_shift: ``(C, D)`` translation of each class (zero for a class not in the queue).
    """

    features: torch.Tensor
    global_shift: torch.Tensor
    rotation: torch.Tensor
    class_shift: torch.Tensor


def semantic_calibration(
    pre: torch.Tensor,
    fine: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    classifier: torch.Tensor | None = None,
    rotate: bool = True,
    scale: float | torch.Tensor | None = None,
) -> Calibration:
    """DR-Tune's semantic calibration of pre-trained features toward fine-tuned ones.

    1. Both sets are L2-normalised row-wise.
    2. Global alignment: the pre-trained rows are centred, rotated onto the centred fine-tuned
       rows (:func:`procrustes_rotation`) and moved to the fine-tuned mean; without ``rotate``
       only the difference of means is added. Identical centred sets take the identity
       exactly (the Procrustes solution, without the SVD's rounding).
    3. Class translation: each class's centre of the globally aligned pre-trained rows is moved
       onto the same class's centre of the fine-tuned rows. Centres are weighted means with the
       weights ``softmax_i(cos(fine_i, classifier_c))`` over the class's rows (uniform without
       ``classifier``, or while its row is zero), the same weights for both sets.
    4. With ``scale``, rows are rescaled to unit length times ``scale`` (the paper's mean norm of
       the fine-tuned batch features, so the linear head sees both at one scale).

    Args:
        pre: ``(N, D)`` features of the frozen pre-trained encoder.
        fine: ``(N, D)`` features of the same images from the fine-tuned encoder.
        labels: ``(N,)`` class indices in ``[0, n_classes)``.
        classifier: ``(n_classes, D)`` weights of the linear head (confidence weights).
    Returns:
        :class:`Calibration`; ``features`` is ``(N, D)``.
    """
    p, f = F.normalize(pre, dim=1), F.normalize(fine, dim=1)
    mean_p, mean_f = p.mean(0), f.mean(0)
    shift = mean_f - mean_p
    centred_p, centred_f = p - mean_p, f - mean_f
    eye = torch.eye(p.shape[1], dtype=p.dtype, device=p.device)
    if rotate and not torch.equal(centred_p, centred_f):
        rotation = procrustes_rotation(centred_p, centred_f)
        aligned = centred_p @ rotation.T + mean_f
    else:
        rotation, aligned = eye, p + shift
    members = F.one_hot(labels, n_classes).T.to(p.dtype)  # (C, N)
    if classifier is None:
        confidence = torch.zeros(len(f), dtype=p.dtype, device=p.device)
    else:
        confidence = (f * F.normalize(classifier.to(p.dtype), dim=1)[labels]).sum(1)  # (N,)
    weights = members * torch.exp(confidence - confidence.max())[None, :]
    weights = weights / weights.sum(1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    class_shift = weights @ f - weights @ aligned  # (C, D)
    out = aligned + class_shift[labels]
    if scale is not None:
        out = F.normalize(out, dim=1) * scale
    return Calibration(out, shift, rotation, class_shift)


class DRTune(nn.Module):
    """The DR-Tune state of a fine-tuning classifier: a frozen copy of the pre-trained encoder
    and the queues of the last ``queue_size`` training images.

    The frozen copy is held outside the module tree: it is not a parameter (the optimiser never
    sees it), not in ``state_dict()`` (checkpoints and soups hold the fine-tuned model only) and
    not moved by ``.to()``; :meth:`pretrained_features` moves it to the images' device. The
    queues are buffers, so every checkpoint saves them and a resumed run continues with the same
    calibration statistics.

    Args:
        encoder: the pre-trained encoder, copied before any fine-tuning step.
        n_classes: number of classes ``C``.
        pooling: ``"mean"`` or ``"cls"``, as the fine-tuned features.
        queue_size: ``K``, images kept in the queues.
        rotate: solve the Procrustes rotation (off: the global alignment is the mean shift).

    Buffers: ``pre_queue``, ``fine_queue`` ``(K, D)`` float32, ``label_queue`` ``(K,)``,
    ``queue_ptr`` and ``queue_len`` (0-dim).
    """

    def __init__(
        self,
        encoder: nn.Module,
        n_classes: int,
        pooling: str = "mean",
        queue_size: int = 1024,
        rotate: bool = True,
    ) -> None:
        super().__init__()
        if int(queue_size) < 1:
            raise ValueError(f"finetune.dr_tune_queue={queue_size}: the queue needs a slot")
        frozen = copy.deepcopy(encoder).eval().requires_grad_(False)
        self._frozen = (frozen,)  # a tuple, so nn.Module does not register it
        self.n_classes, self.pooling, self.rotate = int(n_classes), pooling, bool(rotate)
        dim, k = int(encoder.num_features), int(queue_size)
        self.register_buffer("pre_queue", torch.zeros(k, dim))
        self.register_buffer("fine_queue", torch.zeros(k, dim))
        self.register_buffer("label_queue", torch.zeros(k, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))

    @property
    def frozen(self) -> nn.Module:
        """The frozen pre-trained encoder (eval mode, no gradients)."""
        return self._frozen[0]

    @torch.no_grad()
    def pretrained_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, ...)`` images -> ``(B, D)`` pooled features of the frozen encoder."""
        frozen = self.frozen
        first = next(frozen.parameters(), None)
        if first is not None and first.device != images.device:
            frozen.to(images.device)
        return encode(frozen.eval(), images, self.pooling)

    @torch.no_grad()
    def enqueue(self, pre: torch.Tensor, fine: torch.Tensor, labels: torch.Tensor) -> None:
        """Write ``(B, D)`` features and ``(B,)`` labels into the ring buffer (the last ``K``
        of them when ``B > K``)."""
        k = len(self.label_queue)
        pre, fine, labels = pre[-k:], fine[-k:], labels[-k:]
        slots = (self.queue_ptr + torch.arange(len(labels), device=labels.device)) % k
        self.pre_queue[slots] = pre.detach().float()
        self.fine_queue[slots] = fine.detach().float()
        self.label_queue[slots] = labels
        self.queue_ptr.copy_((self.queue_ptr + len(labels)) % k)
        self.queue_len.copy_(torch.clamp(self.queue_len + len(labels), max=k))

    def regularizer(
        self, head: nn.Linear, fine: torch.Tensor, pre: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """Enqueue the batch, calibrate the queued pre-trained features and return the mean
        cross-entropy of ``head`` on them (the DR term; its gradient reaches ``head`` only).

        Args:
            fine: ``(B, D)`` fine-tuned features of the batch (detached here).
            pre: ``(B, D)`` frozen pre-trained features of the same images.
            target: ``(B,)`` class indices.
        """
        self.enqueue(pre, fine, target)
        n = int(self.queue_len)
        with torch.no_grad(), torch.autocast(fine.device.type, enabled=False):
            calibrated = semantic_calibration(
                self.pre_queue[:n],
                self.fine_queue[:n],
                self.label_queue[:n],
                self.n_classes,
                head.weight.detach().float(),
                self.rotate,
                scale=fine.detach().float().norm(dim=1).mean(),
            ).features
        return F.cross_entropy(head(calibrated), self.label_queue[:n])
