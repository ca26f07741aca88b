"""Worker for tests/train/test_multiprocess.py: contrastive and DINO objectives under DDP.

``python _ddp_objectives.py OUT`` (one process) or ``torchrun --nproc_per_node=2
_ddp_objectives.py OUT`` (gloo). For each objective it writes, from rank 0,
``OUT/<name>/metrics.jsonl`` (the engine's loss curve over a few steps of a fixed global batch
stream) and ``OUT/<name>_grads.pt`` (the DDP-averaged gradient of one step at a fixed global
batch) and ``OUT/<name>_views.pt`` (the views of that batch, every rank's share in rank
order); in a distributed run also ``OUT/collectives.json`` (checks of :mod:`medfm.ssl.gather`).

The views are the objectives' real default random ones (SimCLR's two views, DINO's multi-crop),
drawn from each sample's ``sample_seed`` (:mod:`medfm.ssl.views`), so 1 and 2 processes make the
same views of a sample. The SimCLR-style projectors use LayerNorm instead of their default
BatchNorm, whose statistics would be per process (torch's SyncBatchNorm does not run on CPU);
DINO's head has no BatchNorm and stays as it is. Everything else is the objectives' own code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from medfm.config import load_config
from medfm.ssl import gather as G
from medfm.ssl.anatcl import AnatCL
from medfm.ssl.dino import DINO
from medfm.ssl.dinov2 import DINOv2
from medfm.ssl.heads import ProjectionHead
from medfm.ssl.hybrid import Hybrid
from medfm.ssl.losses import info_nce
from medfm.ssl.metadata import MetadataContrastive
from medfm.ssl.simclr import SimCLR
from medfm.ssl.sit import SiT
from medfm.ssl.views import call_views
from medfm.train import distributed as D
from medfm.train.engine import train

GLOBAL_BATCH, STEPS = 8, 3


def encoder() -> VisionTransformer:
    return VisionTransformer(
        img_size=16, patch_size=4, in_chans=1, num_classes=0, embed_dim=32, depth=1, num_heads=2
    )


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("dinov2"):
        # DINO's multi-crop + iBOT masks on every global crop + KoLeo over the global batch;
        # "dinov2_sk": Sinkhorn-Knopp teacher (sums all-reduced) and a separate iBOT head
        sk = name == "dinov2_sk"
        return DINOv2(
            encoder(),
            out_dim=64,
            n_local=2,
            hidden_dim=32,
            bottleneck_dim=16,
            mask_prob=1.0,
            mask_ratio=(0.3, 0.5),
            separate_head=sk,
            centering="sinkhorn_knopp" if sk else "centering",
        )
    if name == "dino":
        # default MultiCrop views: 2 global 16 x 16 crops and 2 local 8 x 8 ones
        return DINO(encoder(), out_dim=64, n_local=2, hidden_dim=32, bottleneck_dim=16)
    kwargs = {"proj_dim": 16, "hidden_dim": 32}  # default TwoViews(16)
    if name == "simclr":
        objective = SimCLR(encoder(), **kwargs)
    elif name == "metadata":
        objective = MetadataContrastive(encoder(), sigma=0.5, **kwargs)
    elif name == "anatcl":  # descriptors standardised over the (gathered) global batch
        objective = AnatCL(
            encoder(), ["meta", "meta2"], "local", 0.7, "batch", age_key="age", **kwargs
        )
    elif name == "sit":  # donors of "other image" groups come from the gathered global batch
        objective = SiT(encoder(), corrupt_probs=(0.3, 0.5, 0.2), **kwargs)
    else:
        objective = Hybrid(encoder(), {"decoder_dim": 16, "decoder_depth": 1}, kwargs)
    objective.projector = ProjectionHead(32, 32, 16, norm="ln")
    return objective


def global_batch(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return {
        "image": torch.rand(GLOBAL_BATCH, 1, 16, 16, generator=g),
        "meta": torch.rand(GLOBAL_BATCH, generator=g) * 2,
        "meta2": torch.rand(GLOBAL_BATCH, generator=g) * 50,
        "sample_seed": torch.randint(0, 2**62, (GLOBAL_BATCH,), generator=g),
        "age": torch.rand(GLOBAL_BATCH, generator=g) * 60 + 20,
    }


def share(batch: dict[str, torch.Tensor], info: D.DistInfo) -> dict[str, torch.Tensor]:
    per = GLOBAL_BATCH // info.world_size
    return {k: v[info.rank * per : (info.rank + 1) * per] for k, v in batch.items()}


def check_collectives(info: D.DistInfo, out: Path) -> None:
    """gather_with_grad's forward and backward, the no-grad collectives, and SyncBatchNorm."""
    w = info.world_size
    x = ((info.rank + 1) * torch.arange(6.0).reshape(3, 2)).requires_grad_()
    y = G.gather_with_grad(x)
    expected = torch.cat([(r + 1) * torch.arange(6.0).reshape(3, 2) for r in range(w)])
    weights = torch.arange(float(y.numel())).reshape(y.shape)  # the same on every rank
    (y * weights).sum().backward()
    # every rank's loss uses every slice: d(sum of the W losses)/dx = W * this rank's weights
    grad_ok = torch.equal(x.grad, w * weights[3 * info.rank : 3 * (info.rank + 1)])
    sbn = nn.SyncBatchNorm(4)
    try:
        sbn(torch.randn(6, 4))
        syncbn_cpu = "works"
    except ValueError as err:
        syncbn_cpu = f"ValueError: {err}"
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4))
    result = {
        "forward": torch.equal(y, expected),
        "backward": grad_ok,
        "gather_no_grad": torch.equal(G.gather_no_grad(x.detach()), expected),
        "all_reduce_mean": float(G.all_reduce_mean(torch.tensor([float(info.rank)]))),
        "mean_across": D.mean_across(float(info.rank), info),
        "syncbn_cpu": syncbn_cpu,
        "maybe_sync_batchnorm_cpu_unchanged": D.maybe_sync_batchnorm(model, True, info) is model,
    }
    results = D.gather_objects(result, info)
    if info.is_main:
        (out / "collectives.json").write_text(json.dumps(results))


def dump_grads(name: str, info: D.DistInfo, out: Path) -> None:
    """One forward/backward at a fixed global batch through DDP; rank 0 saves the gradients and
    the views of the whole global batch (every rank's, in rank order)."""
    objective = build(name)
    model = nn.parallel.DistributedDataParallel(objective) if info.enabled else objective
    batch = share(global_batch(99), info)
    model(batch)["loss"].backward()
    views = [v.clone() for v in call_views(objective.views, batch["image"], batch["sample_seed"])]
    views = [torch.cat(vs) for vs in zip(*D.gather_objects(views, info), strict=True)]
    if info.is_main:
        grads = {k: p.grad.clone() for k, p in objective.named_parameters() if p.grad is not None}
        torch.save(grads, out / f"{name}_grads.pt")
        torch.save(views, out / f"{name}_views.pt")
    if name == "simclr":  # without the gather: local negatives only, a different loss
        with torch.no_grad():
            z1, z2 = objective.embed_views(batch["image"], batch["sample_seed"])
            local = D.mean_across(float(info_nce(z1, z2, objective.temperature)), info)
        if info.is_main:
            (out / "simclr_local_loss.json").write_text(json.dumps(local))


def main(out: Path) -> None:
    info = D.init_distributed()
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    if info.enabled:
        check_collectives(info, out)
    cfg = load_config(
        None,
        [
            f"train.max_steps={STEPS}",
            f"train.batch_size={GLOBAL_BATCH}",
            "train.warmup_steps=1",
            "train.log_every=1",
            "train.checkpoint_every=100",
            "train.progress=false",
            "train.grad_clip=null",
            "tracking.enabled=false",
        ],
    )
    for name in sys.argv[2:] or [
        "simclr",
        "hybrid",
        "metadata",
        "dino",
        "anatcl",
        "sit",
        "dinov2",
        "dinov2_sk",
    ]:
        dump_grads(name, info, out)

        def batches(start: int):
            return (share(global_batch(step), info) for step in range(start, STEPS))

        train(build(name), batches, cfg, out / name, info=info)
    if info.enabled:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
