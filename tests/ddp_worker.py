"""Worker for tests/test_training.py: a few DDP training steps under ``torchrun``, parameters saved per rank.

Run as ``torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py OUT_DIR [classifier|features]``. The data
and the classifier come from :func:`make_problem`, which the test also uses for its single-process reference;
``features`` trains :class:`FirstMapClassifier` instead, a model that leaves backbone parameters unused.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.utils.data import TensorDataset

from visionkit.contrib import ClassificationHead, FeatureExtractor, MobileViT

GLOBAL_BATCH = 8
STEPS = 2
LR = 0.05


class FirstMapClassifier(nn.Module):
    """Classify from the first map of a FeatureExtractor's list (a model that leaves parameters unused)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = FeatureExtractor(MobileViT(mode="xxs", dropout=0.0), indices=(3,))
        self.head = ClassificationHead(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[0])


def make_problem() -> tuple[nn.Module, TensorDataset]:
    """The model (seeded, dropout off so ranks draw no random masks) and a fixed random dataset."""
    torch.manual_seed(0)
    model = nn.Sequential(MobileViT(mode="xxs", dropout=0.0), ClassificationHead(320, 10))
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(GLOBAL_BATCH * STEPS, 3, 32, 48, generator=generator)
    labels = torch.randint(0, 10, (GLOBAL_BATCH * STEPS,), generator=generator)
    return model, TensorDataset(images, labels)


def main(out_dir: str, model_name: str = "classifier") -> None:
    from visionkit.training import init_distributed, make_loader, shutdown_distributed, train_one_epoch, unwrap_model
    from visionkit.training import wrap_model

    torch.set_num_threads(1)
    context = init_distributed("cpu")
    assert context.world_size == 2, context
    model, data = make_problem()
    if model_name == "features":
        torch.manual_seed(0)
        model = FirstMapClassifier()
    ddp = wrap_model(model, context)
    loader = make_loader(data, GLOBAL_BATCH // context.world_size, context, shuffle=False)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=LR, momentum=0.9)
    result = train_one_epoch(ddp, loader, optimizer, context)
    torch.save(
        {"params": {k: p.detach() for k, p in unwrap_model(ddp).named_parameters()}, "samples": result.samples,
         "type": type(ddp).__name__},
        f"{out_dir}/rank{context.rank}.pt",
    )
    shutdown_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
