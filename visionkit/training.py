"""A small supervised training loop that runs in one process or under ``torchrun`` with DDP.

The same functions serve both cases. Under ``torchrun --nproc_per_node=N`` (which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``), :func:`init_distributed` joins the process group (``gloo`` on
CPU, ``nccl`` on CUDA), :func:`wrap_model` wraps the model in
:class:`~torch.nn.parallel.DistributedDataParallel`, and :func:`make_loader` shards the data with a
:class:`~torch.utils.data.distributed.DistributedSampler`. Losses and accuracies are summed over all ranks, so every
rank reports the same numbers. Process management is left to ``torchrun``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torch.utils.data import TensorDataset
    >>> context = init_distributed("cpu")  # one process: no process group
    >>> model = wrap_model(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), context)
    >>> data = TensorDataset(torch.rand(8, 1, 2, 2), torch.randint(0, 2, (8,)))
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> result = train_one_epoch(model, make_loader(data, 4, context, shuffle=True), optimizer, context)
    >>> result.samples
    8
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from .contrib._checks import check_choice, check_positive_int, check_type

__all__ = [
    "DistributedContext",
    "EpochResult",
    "evaluate",
    "init_distributed",
    "make_loader",
    "shutdown_distributed",
    "train_one_epoch",
    "unwrap_model",
    "wrap_model",
]

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs: its rank, the number of processes and its device.

    Attributes:
        rank: global rank of this process (0 when not distributed).
        world_size: number of processes (1 when not distributed).
        local_rank: rank on this machine; picks the CUDA device.
        device: the device this process trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the process that prints and writes files)."""
        return self.rank == 0


@dataclass(frozen=True)
class EpochResult:
    """Mean loss and accuracy over the samples all ranks saw in one pass.

    Attributes:
        loss: mean loss per sample.
        accuracy: fraction of samples whose arg-max prediction is the label.
        samples: number of samples, summed over ranks.
    """

    loss: float
    accuracy: float
    samples: int


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_distributed(device: str = "auto") -> DistributedContext:
    """Read the ``torchrun`` environment and join the process group when there is more than one process.

    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing is initialised and a single-process context is
    returned. Otherwise the default process group is initialised from the environment (``env://``) with the
    ``nccl`` backend on CUDA and ``gloo`` on CPU, unless one is already initialised, in which case it is reused.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``. On CUDA each process takes the
            GPU ``LOCAL_RANK``.

    Returns:
        The context of this process.

    Raises:
        TypeError: ``device`` is not a string.
        ValueError: ``device`` is unknown, ``"cuda"`` is asked for but not available, or a ``torchrun``
            environment variable is not an integer or out of range (``WORLD_SIZE >= 1``, ``0 <= RANK < WORLD_SIZE``,
            ``LOCAL_RANK >= 0``).
    """
    check_type("device", device, str)
    check_choice("device", device, ("auto", "cpu", "cuda"))
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for, but torch.cuda.is_available() is False")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(
            "the torchrun environment needs WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0, got "
            f"WORLD_SIZE={world_size}, RANK={rank}, LOCAL_RANK={local_rank} (unset RANK, WORLD_SIZE and LOCAL_RANK "
            "to run in one process)"
        )
    if use_cuda:
        torch.cuda.set_device(local_rank)
        run_on = torch.device("cuda", local_rank)
    else:
        run_on = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=run_on)


def shutdown_distributed() -> None:
    """Destroy the default process group if one is initialised (a no-op otherwise)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _leaves_parameters_unused(model: nn.Module) -> bool:
    """Whether a forward of ``model`` skips some of its parameters: a feature extractor runs its backbone only up to
    the deepest level it returns, never ``conv_1x1_exp`` (every backbone and head parameter is used otherwise)."""
    from .contrib.features import FeatureExtractor

    for module in model.modules():
        if isinstance(module, FeatureExtractor):
            backbone = module.backbone
            if max(module.indices) < len(backbone.feature_info) - 1:
                return True
            expansion = getattr(backbone, "conv_1x1_exp", None)
            if isinstance(expansion, nn.Module) and any(True for _ in expansion.parameters()):
                return True
    return False


def wrap_model(
    model: nn.Module,
    context: DistributedContext,
    *,
    sync_batchnorm: bool = False,
    find_unused_parameters: Optional[bool] = None,
) -> nn.Module:
    """Move ``model`` to the context's device and, when distributed, wrap it in ``DistributedDataParallel``.

    A forward of a visionkit backbone or head uses every parameter, except inside a
    :class:`~visionkit.contrib.FeatureExtractor`, which runs its backbone only up to the deepest level it returns
    and never runs ``conv_1x1_exp`` (build the backbone with ``expand_output=False`` for it). DDP must then be told
    (``find_unused_parameters=True``, which costs a graph traversal per step); by default this is decided from
    the model. On CPU the model is moved to channels-last memory format before wrapping, the layout the backbone
    computes in there, so that DDP's gradient buckets match the gradients' strides.

    Args:
        model: the model to train.
        context: from :func:`init_distributed`.
        sync_batchnorm: convert every BatchNorm to :class:`~torch.nn.SyncBatchNorm`, so that batch statistics are
            computed over the global batch (PyTorch supports this on GPUs only).
        find_unused_parameters: passed to ``DistributedDataParallel``; ``None`` decides from the model (see above).

    Returns:
        The model itself (single process) or its DDP wrapper.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``sync_batchnorm`` is asked for on CPU with a process group (PyTorch's SyncBatchNorm then
            fails at the first training batch), or no parameter requires a gradient in a distributed run.
    """
    check_type("model", model, nn.Module)
    check_type("context", context, DistributedContext)
    check_type("sync_batchnorm", sync_batchnorm, bool)
    if find_unused_parameters is not None:
        check_type("find_unused_parameters", find_unused_parameters, bool)
    if sync_batchnorm and context.device.type == "cpu" and (context.is_distributed or dist.is_initialized()):
        raise ValueError(
            "sync_batchnorm=True needs GPUs: PyTorch's SyncBatchNorm does not run on CPU tensors; "
            "train without it on CPU (each process then normalises its own share of the batch)"
        )
    if context.is_distributed and not any(p.requires_grad for p in model.parameters()):
        raise ValueError("DistributedDataParallel needs at least one parameter with requires_grad=True; none has")
    # What the SyncBatchNorm conversion and .to() below replace, so that a failure leaves the caller's model as it
    # was: the conversion swaps child modules in their parents' dicts (the new modules share the old parameters and
    # buffers); parameters (by default) keep their objects and get new data, buffers are replaced in their modules'
    # dicts.
    parameters = [(p, p.data) for p in model.parameters()]
    entries = [(m, dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in model.modules()]
    try:
        if sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(context.device)
        if not context.is_distributed:
            return model
        if find_unused_parameters is None:
            find_unused_parameters = _leaves_parameters_unused(model)
        device_ids = [context.device.index] if context.device.type == "cuda" else None
        if context.device.type == "cpu":
            model = model.to(memory_format=torch.channels_last)
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
    except BaseException:
        for parameter, data in parameters:
            parameter.data = data
        for module, saved_parameters, saved_buffers, saved_children in entries:
            module._parameters.update(saved_parameters)  # replaced, not edited, when torch.__future__ says so
            module._buffers.update(saved_buffers)
            module._modules.update(saved_children)  # the BatchNorms the conversion replaced
        raise


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class _EpochOfPass:
    """The epoch of a sampler's next pass: the one given to ``set_epoch`` since the last pass, or else the pass after
    the previous one (a loop of the user's own that never calls it still gets a new order each pass)."""

    def __init__(self) -> None:
        self.next = 0
        self.given: Optional[int] = None

    def take(self) -> int:
        epoch = self.next if self.given is None else self.given
        self.given, self.next = None, epoch + 1
        return epoch


class _EpochShuffler(Sampler[int]):
    """One process's shuffling: the order of epoch ``e`` is a permutation seeded with ``seed + e`` (as
    :class:`~torch.utils.data.distributed.DistributedSampler` seeds its own), the epoch as :class:`_EpochOfPass`
    gives it, so a resumed run that sets it sees the same orders as an uninterrupted one."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.size = len(dataset)  # type: ignore[arg-type]
        self.seed = seed
        self.epochs = _EpochOfPass()

    def set_epoch(self, epoch: int) -> None:
        self.epochs.given = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epochs.take())
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class _DistributedEpochSampler(DistributedSampler):
    """:class:`~torch.utils.data.distributed.DistributedSampler` whose epoch is the one :class:`_EpochOfPass` gives
    (PyTorch's keeps the last epoch set, so without ``set_epoch`` every pass had the same order)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epochs = _EpochOfPass()

    def set_epoch(self, epoch: int) -> None:
        self.epochs.given = epoch
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        super().set_epoch(self.epochs.take())
        return super().__iter__()


#: The seeds torch.Generator.manual_seed takes with room for the epoch added to them.
_SEED_RANGE = (-(2**63), 2**63 - 1)


def _check_seed(seed: Any) -> int:
    check_type("seed", seed, int)
    if not _SEED_RANGE[0] <= seed <= _SEED_RANGE[1]:
        raise ValueError(f"seed must be in [-2**63, 2**63 - 1], got {seed}")
    return seed


def make_loader(
    dataset: Dataset,
    batch_size: int,
    context: DistributedContext,
    *,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
    collate_fn: Optional[Callable[[list[Any]], Any]] = None,
) -> DataLoader:
    """A data loader that gives each process its own share of ``dataset``.

    Distributed, a :class:`~torch.utils.data.distributed.DistributedSampler` deals the (shuffled) indices out
    round-robin, so rank ``r`` gets indices ``r, r + N, r + 2N, ...`` of the order; the last share is padded with
    repeated samples unless ``drop_last``. In one process the indices are shuffled with a permutation seeded with
    ``seed + epoch`` (or kept in order). Distributed or not, the epoch counts the passes over the loader unless
    ``set_epoch`` gave it, so each pass has its own order; :func:`train_one_epoch` with ``epoch=`` sets it, so a
    resumed run sees the same orders as an uninterrupted one.

    Args:
        dataset: a map-style dataset.
        batch_size: samples per batch *per process*; the global batch is ``batch_size * world_size``.
        context: from :func:`init_distributed`.
        shuffle: shuffle every epoch.
        seed: seed of the shuffling (the same on every rank).
        drop_last: drop the last incomplete batch (and, distributed, the samples that do not divide evenly).
        num_workers: data-loading worker processes.
        collate_fn: builds a batch from a list of samples (e.g. to resize images on the fly).

    Raises:
        TypeError: an argument has the wrong type: ``dataset`` is not map-style (a
            ``torch.utils.data.IterableDataset``, which orders its own samples, or an object without
            ``__getitem__`` and ``__len__``), or ``collate_fn`` is not callable.
        ValueError: ``batch_size < 1``, ``num_workers < 0`` or ``seed`` outside :math:`[-2^{63}, 2^{63})`.
    """
    if isinstance(dataset, IterableDataset) or not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise TypeError(
            "make_loader needs a map-style dataset (with __getitem__ and __len__) to shuffle and shard, got "
            f"{type(dataset).__name__}; an IterableDataset orders and splits its own samples, so build a DataLoader "
            "for it directly (train_one_epoch takes any iterable of batches)"
        )
    batch_size = check_positive_int("batch_size", batch_size)  # numpy and 0-d tensor ints become an int
    check_type("context", context, DistributedContext)
    check_type("shuffle", shuffle, bool)
    _check_seed(seed)
    check_type("drop_last", drop_last, bool)
    check_type("num_workers", num_workers, int)
    if collate_fn is not None and not callable(collate_fn):
        raise TypeError(f"collate_fn must be None or a callable, got {type(collate_fn).__name__} ({collate_fn!r})")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    sampler: Any
    if context.is_distributed:
        sampler = _DistributedEpochSampler(
            dataset,
            num_replicas=context.world_size,
            rank=context.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
    elif shuffle:
        sampler = _EpochShuffler(dataset, seed)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=collate_fn,
    )


def _reduced(totals: torch.Tensor, context: DistributedContext) -> EpochResult:
    # totals = [sum of losses, correct predictions, samples], summed over ranks when distributed.
    if context.is_distributed:
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    loss_sum, correct, samples = totals.tolist()
    count = max(int(round(samples)), 0)
    if count == 0:  # every rank saw nothing (the sums are over all of them), so every rank raises
        raise ValueError(
            "the loader gave no batch (an empty dataset, or drop_last=True with fewer samples than one batch per "
            "process): there is no loss or accuracy to report"
        )
    return EpochResult(loss=loss_sum / count, accuracy=correct / count, samples=count)


def _progress(iterable: Iterable[Any], enabled: bool, description: str) -> Any:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(
            "progress=True shows a tqdm progress bar, and tqdm is not installed (pip install tqdm, or the demo "
            "extra); pass progress=False to train without it",
            name="tqdm",
        ) from None
    try:
        total = len(iterable)  # type: ignore[arg-type]
    except TypeError:  # a generator, or a DataLoader over an IterableDataset without a length
        total = None
    return tqdm(iterable, desc=description, total=total, leave=False, dynamic_ncols=True)


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How many predictions are right: labels are class indices :math:`(B,)`, or class probabilities
    :math:`(B, K)` (one-hot or soft, as ``F.cross_entropy`` also takes), whose most likely class counts."""
    if labels.dim() == 2 and labels.shape == logits.shape and labels.is_floating_point():
        labels = labels.argmax(dim=1)
    elif labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must be class indices (B,) or class probabilities (B, K) like the logits {tuple(logits.shape)}, "
            f"got shape {tuple(labels.shape)}"
        )
    return (logits.argmax(dim=1) == labels).sum()


def _check_labels(images: Any, labels: Any) -> None:
    """What :func:`_correct` needs of a batch's labels that is known before the forward: a tensor of class indices
    :math:`(B,)` of an integer dtype, or of class probabilities :math:`(B, K)` of a floating dtype."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a tensor, got {type(labels).__name__}")
    batch = images.shape[0] if isinstance(images, torch.Tensor) and images.dim() > 0 else None
    indices = labels.dim() == 1 and not labels.is_floating_point() and labels.dtype != torch.bool
    probabilities = labels.dim() == 2 and labels.is_floating_point()
    if not (indices or probabilities) or labels.shape[0] != batch:
        raise ValueError(
            f"labels must be class indices (B,) of an integer dtype or class probabilities (B, K) of a floating "
            f"dtype, with B = {batch} as in the images; got shape {tuple(labels.shape)} and dtype {labels.dtype}"
        )


def _check_scheduler(scheduler: Any) -> None:
    step = getattr(scheduler, "step", None)
    if not callable(step):
        raise TypeError(f"scheduler must have a step() method, got {type(scheduler).__name__}")
    try:
        inspect.signature(step).bind()
    except TypeError:
        raise TypeError(
            f"scheduler.step() is called with no argument after every optimiser step, but {type(scheduler).__name__}"
            f".step needs one {inspect.signature(step)}; step it yourself (e.g. ReduceLROnPlateau after evaluate)"
        ) from None
    except ValueError:  # no signature to read (a builtin): it will be called as it is
        pass


def _check_loop_arguments(model: Any, context: Any, loss_fn: Any) -> None:
    check_type("model", model, nn.Module)
    check_type("context", context, DistributedContext)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(logits, labels), got {type(loss_fn).__name__}")


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    context: DistributedContext,
    *,
    epoch: Optional[int] = None,
    loss_fn: LossFunction = nn.functional.cross_entropy,
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None,
    progress: bool = False,
    description: str = "train",
) -> EpochResult:
    """Train ``model`` for one pass over ``loader``: forward, loss, backward, optimiser step per batch.

    The model is put in training mode. With DDP, gradients are averaged over the ranks during ``backward``, so
    every rank applies the same update. The result is summed over the ranks.

    Args:
        model: a classifier returning logits :math:`(B, K)` (plain or DDP-wrapped).
        loader: yields ``(images, labels)`` batches, labels as class indices :math:`(B,)` or class probabilities
            :math:`(B, K)` (the accuracy then counts the most likely class); a :class:`~torch.utils.data.DataLoader`
            or any iterable of batches (only :func:`make_loader`'s samplers are reseeded per epoch).
        optimizer: the optimiser of ``model``'s parameters.
        context: from :func:`init_distributed`.
        epoch: epoch number; sets the order of :func:`make_loader`'s shuffling (distributed or not), so that a
            resumed run sees the orders of an uninterrupted one. ``None``: the loader's next pass, which has an
            order of its own too.
        loss_fn: ``loss_fn(logits, labels)`` returning the mean loss of the batch.
        scheduler: stepped (``scheduler.step()``, no argument) after every optimiser step, if given;
            ``ReduceLROnPlateau``, which needs a metric, is stepped by the caller after :func:`evaluate`.
        progress: show a progress bar with the running loss and accuracy (rank 0 only).
        description: label of the progress bar.

    Returns:
        Mean loss and accuracy over the epoch, measured on the fly (with the weights of the moment).

    Raises:
        TypeError: an argument has the wrong type, or ``scheduler.step`` needs an argument (checked before anything
            changes).
        ValueError: ``epoch`` is negative, the loader gives no batch, or a batch's labels are neither class indices
            :math:`(B,)` (an integer dtype) nor class probabilities :math:`(B, K)` (a floating dtype); the labels'
            type, rank and batch size are checked before the batch reaches the model.
        ImportError: ``progress=True`` without tqdm installed.
    """
    _check_loop_arguments(model, context, loss_fn)
    check_type("optimizer", optimizer, torch.optim.Optimizer)
    if epoch is not None:
        check_type("epoch", epoch, int)
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
    check_type("progress", progress, bool)
    check_type("description", description, str)
    if scheduler is not None:
        _check_scheduler(scheduler)
    bar = _progress(loader, progress and context.is_main, description)  # before any change: tqdm may be missing
    sampler = getattr(loader, "sampler", None)  # any iterable of batches works; only ours are reseeded
    if epoch is not None and isinstance(sampler, (DistributedSampler, _EpochShuffler)):
        sampler.set_epoch(epoch)
    model.train()
    totals = torch.zeros(3, dtype=torch.float64, device=context.device)
    for images, labels in bar:
        _check_labels(images, labels)  # before the forward: a refused batch leaves the BatchNorm statistics alone
        images, labels = images.to(context.device), labels.to(context.device)
        logits = model(images)
        loss = loss_fn(logits, labels)
        with torch.no_grad():
            correct = _correct(logits, labels)  # before the step: no update with labels it cannot score
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        with torch.no_grad():
            totals += torch.stack(
                (
                    loss.detach().double() * labels.shape[0],
                    correct.double(),
                    torch.tensor(float(labels.shape[0]), dtype=torch.float64, device=context.device),
                )
            )
        if bar is not loader:
            loss_sum, right, seen = totals.tolist()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{right / seen:.3f}")
    if bar is not loader:
        bar.close()
    return _reduced(totals, context)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    context: DistributedContext,
    *,
    loss_fn: LossFunction = nn.functional.cross_entropy,
) -> EpochResult:
    """Loss and accuracy of ``model`` (in eval mode) over ``loader``, summed over the ranks.

    Distributed without ``drop_last``, the ``DistributedSampler`` pads the last share with repeated samples; use
    one process for exact test-set figures when the test set does not divide by the number of processes.

    Args:
        model: a classifier returning logits :math:`(B, K)`.
        loader: yields ``(images, labels)`` batches, labels as in :func:`train_one_epoch`.
        context: from :func:`init_distributed`.
        loss_fn: ``loss_fn(logits, labels)`` returning the mean loss of the batch.

    Returns:
        Mean loss and accuracy.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: the loader gives no batch, or a batch's labels are neither class indices :math:`(B,)` nor class
            probabilities :math:`(B, K)`.
    """
    _check_loop_arguments(model, context, loss_fn)
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=context.device)
    for images, labels in loader:
        images, labels = images.to(context.device), labels.to(context.device)
        logits = model(images)
        totals[0] += loss_fn(logits, labels).double() * labels.shape[0]
        totals[1] += _correct(logits, labels)
        totals[2] += labels.shape[0]
    return _reduced(totals, context)
