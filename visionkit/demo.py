"""``visionkit demo``: train a MobileViT classifier from scratch on scikit-learn's handwritten digits, end to end.

The data are the 1,797 8x8 grey-level digit images that ship inside scikit-learn (no download), split once into
1,437 training and 360 test images (stratified, fixed seed). Batches are upsampled bilinearly to ``image_size`` and
repeated to three channels. The model is ``nn.Sequential(backbone, ClassificationHead(backbone.out_channels, 10))``
— with the default variant exactly ``nn.Sequential(MobileViT(mode="xxs"), ClassificationHead(320, 10))`` — trained
from scratch with AdamW and a one-cycle learning rate. The command writes to the output folder:

* ``checkpoint.pt`` — state dict, variant, image size, per-epoch history and test accuracy;
* ``training_curves.png`` — loss and accuracy per epoch, train and test;
* ``predictions.png`` — a grid of test images with their predicted (and true) labels;

then rebuilds the model from the checkpoint and checks that it predicts exactly what the trained model predicts.

It runs in one process (``visionkit demo``) or on several with DDP (``torchrun --nproc_per_node=2 -m visionkit
demo``), through :mod:`visionkit.training`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from .contrib._checks import check_positive_finite, check_positive_int, check_type
from .contrib._files import replaced_on_success
from .contrib.heads import ClassificationHead
from .contrib.variants import VARIANTS, build_variant
from .training import (
    _check_seed,
    evaluate,
    init_distributed,
    make_loader,
    shutdown_distributed,
    train_one_epoch,
    unwrap_model,
    wrap_model,
)

__all__ = [
    "DigitsBatch",
    "build_classifier",
    "load_checkpoint",
    "load_digits_split",
    "predict",
    "register",
    "run_demo",
]

NUM_CLASSES = 10
#: Seed of the train/test split; fixed so that every run is scored on the same 360 test images.
SPLIT_SEED = 0
TEST_FRACTION = 0.2
CHECKPOINT_NAME = "checkpoint.pt"
CURVES_NAME = "training_curves.png"
PREDICTIONS_NAME = "predictions.png"


def load_digits_split(limit: Optional[int] = None) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's digits as ``(train, test)`` datasets of 8x8 images in ``[0, 1]`` and integer labels.

    The split is stratified by class with a fixed seed: 1,437 training and 360 test images. With ``limit`` the first
    ``limit`` images are split with the same seed, stratified when each half can hold every class (from 46 of the
    digits), otherwise not; unless ``limit`` keeps every image, the test images are not those of the full split.

    Args:
        limit: keep only the first ``limit`` images before splitting (for quick checks); all when ``None``.

    Returns:
        Two :class:`~torch.utils.data.TensorDataset` of images :math:`(N, 1, 8, 8)` (float32) and labels
        :math:`(N,)` (int64).

    Raises:
        TypeError: ``limit`` is not an int.
        ValueError: ``limit`` is below 20 (too few images to split into two classes-covering halves).

    Example:
        >>> train, test = load_digits_split()
        >>> len(train), len(test), tuple(train[0][0].shape)
        (1437, 360, (1, 8, 8))
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    if limit is not None:
        check_positive_int("limit", limit)
        if limit < 20:
            raise ValueError(f"limit must be at least 20 images, got {limit}")
        images, labels = images[:limit], labels[:limit]
    classes = torch.bincount(labels)
    test_size = math.ceil(TEST_FRACTION * len(labels))  # as train_test_split rounds it
    present = int((classes > 0).sum())
    stratified = int(classes[classes > 0].min()) >= 2 and min(test_size, len(labels) - test_size) >= present
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=TEST_FRACTION,
        random_state=SPLIT_SEED,
        stratify=labels.numpy() if stratified else None,
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return TensorDataset(images[train_idx], labels[train_idx]), TensorDataset(images[test_idx], labels[test_idx])


@dataclass(frozen=True)
class DigitsBatch:
    """Collate function: stacks ``(image, label)`` samples and upsamples the 8x8 images to the model's input.

    Images are resized bilinearly to ``image_size`` x ``image_size`` and repeated to ``channels`` channels.

    Example:
        >>> images, labels = DigitsBatch(32)([(torch.rand(1, 8, 8), torch.tensor(3))] * 2)
        >>> tuple(images.shape), labels.tolist()
        ((2, 3, 32, 32), [3, 3])
    """

    image_size: int
    channels: int = 3

    def __post_init__(self) -> None:
        _check_image_size(self.image_size)
        check_positive_int("channels", self.channels)

    def __call__(self, samples: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack([image for image, _ in samples])
        labels = torch.stack([label for _, label in samples])
        return to_model_input(images, self.image_size, self.channels), labels


def _check_image_size(image_size: Any) -> int:
    size = check_positive_int("image_size", image_size)
    if size < 8:
        raise ValueError(f"image_size must be at least 8 (the digits are 8x8), got {image_size}")
    return size


def to_model_input(images: torch.Tensor, image_size: int, channels: int = 3) -> torch.Tensor:
    """Upsample :math:`(B, 1, 8, 8)` digits to :math:`(B, C, S, S)`."""
    image_size = _check_image_size(image_size)
    resized = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return resized.expand(-1, channels, -1, -1).contiguous()


def build_classifier(variant: str = "mobilevit_xxs", num_classes: int = NUM_CLASSES) -> nn.Sequential:
    """``nn.Sequential(backbone, ClassificationHead(backbone.out_channels, num_classes))`` for a variant name.

    Example:
        >>> model = build_classifier("mobilevit_xxs")
        >>> type(model[0]).__name__, model[1].fc.in_features, model[1].fc.out_features
        ('MobileViT', 320, 10)
    """
    backbone = build_variant(variant)
    return nn.Sequential(backbone, ClassificationHead(backbone.out_channels, num_classes))


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, image_size: int, batch_size: int = 256) -> torch.Tensor:
    """Logits :math:`(N, K)` of ``model`` (in eval mode) for 8x8 digits :math:`(N, 1, 8, 8)`.

    Raises:
        TypeError, ValueError: ``image_size`` is not an int of at least 8, or ``batch_size`` not a positive int.
    """
    image_size = _check_image_size(image_size)
    batch_size = check_positive_int("batch_size", batch_size)
    model.eval()
    device = next(model.parameters()).device
    outputs = [
        model(to_model_input(chunk, image_size).to(device)).cpu() for chunk in images.split(batch_size)
    ]
    return torch.cat(outputs)


def load_checkpoint(path: str | Path) -> tuple[nn.Sequential, dict[str, Any]]:
    """Rebuild the classifier saved by the demo and load its weights (strictly).

    Returns:
        The model (eval mode, CPU) and the checkpoint dictionary.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a demo checkpoint, or its weights do not fit its variant.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # not a torch file, truncated, or pickled objects beyond tensors (refused)
        raise ValueError(f"{path} is not a visionkit demo checkpoint: torch.load failed ({error})") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != "visionkit-demo-1":
        raise ValueError(f"{path} is not a visionkit demo checkpoint (no 'format': 'visionkit-demo-1' entry)")
    missing = [key for key in ("variant", "num_classes", "state_dict") if key not in checkpoint]
    if missing:
        raise ValueError(f"{path} is an incomplete visionkit demo checkpoint: no {', '.join(map(repr, missing))}")
    model = build_classifier(checkpoint["variant"], checkpoint["num_classes"])
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: the weights do not fit {checkpoint['variant']}: {error}") from error
    return model.eval(), checkpoint


def _plot_curves(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    loss_axis.plot(epochs, [h["test_loss"] for h in history], "s-", label="test")
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    accuracy_axis.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    accuracy_axis.plot(epochs, [h["test_accuracy"] for h in history], "s-", label="test")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _plot_predictions(images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(16, len(labels))
    columns = min(8, count)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.4 * columns, 1.8 * rows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= count:
            continue
        axis.imshow(images[index, 0].numpy(), cmap="gray_r", interpolation="nearest", vmin=0, vmax=1)
        right = int(predicted[index]) == int(labels[index])
        axis.set_title(
            f"pred {int(predicted[index])}" + ("" if right else f" (true {int(labels[index])})"),
            color="black" if right else "red",
            fontsize=9,
        )
    figure.suptitle("test images and predicted labels", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _check_output_folder(output: Path) -> None:
    """Raise before training unless ``output`` is, or can be created as, a folder that takes the demo's files."""
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"the output {str(output)!r} exists and is not a folder")
    existing = next(folder for folder in (output, *output.absolute().parents) if folder.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"the output {str(output)!r} cannot be created: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"the output {str(output)!r} cannot be written: {str(existing)!r} is not writable")
    for name in (CHECKPOINT_NAME, CURVES_NAME, PREDICTIONS_NAME):
        if (output / name).is_dir():
            raise IsADirectoryError(f"{str(output / name)!r} is a folder; the demo writes a file there")


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` measured and wrote (on rank 0; other ranks get the same accuracy)."""

    test_accuracy: float
    reload_matches: bool
    seconds: float
    output: Path


def run_demo(
    *,
    epochs: int = 12,
    image_size: int = 64,
    variant: str = "mobilevit_xxs",
    batch_size: int = 64,
    lr: float = 3e-3,
    output: str | Path = "visionkit-demo",
    seed: int = 0,
    limit: Optional[int] = None,
    device: str = "auto",
    progress: bool = True,
    log: Any = print,
) -> DemoResult:
    """Train, evaluate, save, plot and reload-check; see the module docstring.

    Args:
        epochs: passes over the training images.
        image_size: side the 8x8 digits are upsampled to.
        variant: any short name of :data:`~visionkit.contrib.variants.VARIANTS`.
        batch_size: training batch per process.
        lr: peak learning rate of the one-cycle schedule.
        output: folder for the checkpoint and the figures (created if needed).
        seed: seed of the weights, the shuffling and dropout.
        limit: use only the first ``limit`` images (quick checks).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        progress: show progress bars.
        log: function that prints a line (rank 0 only).

    Returns:
        Test accuracy, whether the reloaded checkpoint predicts the same, the training time and the folder.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range (``lr`` must be finite) or ``variant`` is unknown.
        OSError: ``output`` cannot take the files (checked before training, on every process):
            ``FileExistsError`` when it is an existing file, ``NotADirectoryError`` when a folder it would be created
            in is a file, ``IsADirectoryError`` when one of the files to write is a folder, ``PermissionError`` when
            the folder it would be written or created in is not writable.
        ImportError: matplotlib (the ``demo`` extra) is missing (checked before training).
    """
    epochs = check_positive_int("epochs", epochs)  # numpy and 0-d tensor ints become an int
    image_size = _check_image_size(image_size)
    batch_size = check_positive_int("batch_size", batch_size)
    check_type("lr", lr, (int, float))
    check_positive_finite("lr", lr)
    seed = _check_seed(seed)
    check_type("variant", variant, str)
    check_type("output", output, (str, os.PathLike))
    check_type("progress", progress, bool)
    if not callable(log):
        raise TypeError(f"log must be callable with one line of text, got {type(log).__name__}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (BatchNorm needs two samples to train), got {batch_size}")
    output = Path(output)
    _check_output_folder(output)
    import matplotlib  # noqa: F401  (the plots come after training: fail before it when the extra is missing)

    owns_group = not dist.is_initialized()  # a process group the caller created stays theirs
    context = init_distributed(device)
    say = log if context.is_main else (lambda *_: None)
    try:
        torch.manual_seed(seed)
        model = build_classifier(variant)  # same initial weights on every rank (same seed)
        train_set, test_set = load_digits_split(limit)
        collate = DigitsBatch(image_size)
        train_loader = make_loader(train_set, batch_size, context, shuffle=True, seed=seed, drop_last=True,
                                   collate_fn=collate)
        test_loader = make_loader(test_set, 256, context, shuffle=False, collate_fn=collate)
        if len(train_loader) == 0:
            raise ValueError(
                f"batch_size {batch_size} x {context.world_size} process(es) exceeds the {len(train_set)} training "
                "images: not one full batch"
            )
        ddp_model = wrap_model(model, context)
        optimizer = torch.optim.AdamW(ddp_model.parameters(), lr=lr, weight_decay=0.05)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=epochs * len(train_loader), pct_start=0.2
        )
        say(
            f"visionkit demo: {variant} + ClassificationHead on scikit-learn digits ({len(train_set)} train / "
            f"{len(test_set)} test images, 8x8 upsampled to {image_size}x{image_size}), {epochs} epochs, batch "
            f"{batch_size} x {context.world_size} process(es), {context.device}, {torch.get_num_threads()} threads"
        )
        history: list[dict[str, float]] = []
        start = time.perf_counter()
        for epoch in range(epochs):
            trained = train_one_epoch(
                ddp_model, train_loader, optimizer, context, epoch=epoch, scheduler=scheduler,
                progress=progress, description=f"epoch {epoch + 1}/{epochs}",
            )
            tested = evaluate(ddp_model, test_loader, context)
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": trained.loss,
                    "train_accuracy": trained.accuracy,
                    "test_loss": tested.loss,
                    "test_accuracy": tested.accuracy,
                }
            )
            say(
                f"epoch {epoch + 1:>2}/{epochs}: train loss {trained.loss:.4f} acc {trained.accuracy:.4f} | "
                f"test loss {tested.loss:.4f} acc {tested.accuracy:.4f} | {time.perf_counter() - start:.0f} s"
            )
        seconds = time.perf_counter() - start
        matches = True
        accuracy = history[-1]["test_accuracy"]
        if context.is_main:
            trained_model = unwrap_model(ddp_model)
            test_images, test_labels = test_set.tensors
            logits = predict(trained_model, test_images, image_size)
            predicted = logits.argmax(dim=1)
            accuracy = (predicted == test_labels).double().mean().item()
            output.mkdir(parents=True, exist_ok=True)
            checkpoint_path = output / CHECKPOINT_NAME
            # The checkpoint and both figures are written as one set: if any of them fails, an earlier run's three
            # files all stay as they were (none is replaced, no partial file is left).
            with contextlib.ExitStack() as files:
                partial_checkpoint, partial_curves, partial_predictions = (
                    files.enter_context(replaced_on_success(output / name))
                    for name in (CHECKPOINT_NAME, CURVES_NAME, PREDICTIONS_NAME)
                )
                torch.save(
                    {
                        "format": "visionkit-demo-1",
                        "variant": variant,
                        "num_classes": NUM_CLASSES,
                        "image_size": image_size,
                        "seed": seed,
                        "epochs": epochs,
                        "test_accuracy": accuracy,
                        "history": history,
                        "state_dict": {k: v.detach().cpu() for k, v in trained_model.state_dict().items()},
                    },
                    partial_checkpoint,
                )
                _plot_curves(history, Path(partial_curves))
                _plot_predictions(test_images, test_labels, predicted, Path(partial_predictions))
            reloaded, _ = load_checkpoint(checkpoint_path)
            # on the trained model's device: on a GPU, TF32 convolutions differ from CPU ones beyond the tolerance
            reloaded_logits = predict(reloaded.to(next(trained_model.parameters()).device), test_images, image_size)
            matches = torch.equal(reloaded_logits.argmax(dim=1), predicted) and torch.allclose(
                reloaded_logits, logits, rtol=1e-5, atol=1e-5
            )
            say(f"test accuracy: {accuracy:.4f} ({int((predicted == test_labels).sum())}/{len(test_labels)})")
            say(f"training time: {seconds:.1f} s")
            say(f"wrote {checkpoint_path}, {output / CURVES_NAME}, {output / PREDICTIONS_NAME}")
            say(
                "reload check: "
                + ("OK, the reloaded checkpoint predicts the same labels" if matches else "FAILED, predictions differ")
            )
        if context.is_distributed:
            flags = torch.tensor([float(matches), accuracy], device=context.device)
            dist.broadcast(flags, src=0)
            matches, accuracy = bool(flags[0].item()), float(flags[1].item())
        return DemoResult(test_accuracy=accuracy, reload_matches=matches, seconds=seconds, output=output)
    finally:
        if owns_group:
            shutdown_distributed()


def _run(args: argparse.Namespace) -> int:
    if args.threads < 0:
        raise ValueError(f"--threads must be at least 0 (0: torch's choice), got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_demo(
        epochs=args.epochs,
        image_size=args.image_size,
        variant=args.variant,
        batch_size=args.batch_size,
        lr=args.lr,
        output=args.output,
        seed=args.seed,
        limit=args.limit,
        device=args.device,
        progress=not args.no_progress,
    )
    return 0 if result.reload_matches else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` command."""
    parser = subparsers.add_parser(
        "demo",
        help="train MobileViT from scratch on scikit-learn's digits: accuracy, checkpoint, plots, reload check",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
    )
    parser.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    parser.add_argument("--image-size", type=int, default=64, help="side the 8x8 digits are upsampled to (default 64)")
    parser.add_argument(
        "--variant",
        default="mobilevit_xxs",
        choices=[v.name for v in VARIANTS],
        metavar="NAME",
        help="backbone variant, any of: " + ", ".join(v.name for v in VARIANTS) + " (default mobilevit_xxs)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="batch per process (default 64)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    parser.add_argument("--output", default="visionkit-demo", help="output folder (default ./visionkit-demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, shuffling and dropout (default 0)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: auto")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images (quick checks)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=_run)
