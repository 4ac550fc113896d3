import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.ddp_worker import GLOBAL_BATCH, LR, STEPS, make_problem
from visionkit.cli import main as cli_main
from visionkit.contrib import MobileViT, MobileViTv2, MobileViTv3
from visionkit.contrib.variants import VARIANTS
from visionkit.demo import load_checkpoint, load_digits_split, run_demo
from visionkit.training import DistributedContext, init_distributed, make_loader, wrap_model

ROOT = Path(__file__).resolve().parents[1]


def _run_ddp_worker(out_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_worker.py"), str(out_dir), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Grad strides do not match bucket view strides" not in done.stderr  # buckets match channels-last grads
    return done


def test_ddp_trains_a_feature_extractor_model_that_leaves_parameters_unused(tmp_path):
    _run_ddp_worker(tmp_path, "features")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(ranks[0]["params"][k], ranks[1]["params"][k]) for k in ranks[0]["params"])
    assert ranks[0]["samples"] == GLOBAL_BATCH * STEPS


def test_wrap_model_decides_find_unused_parameters_from_the_model():
    from visionkit.contrib import FeatureExtractor
    from visionkit.training import _leaves_parameters_unused

    assert not _leaves_parameters_unused(nn.Sequential(MobileViT("xxs"), nn.Identity()))
    assert not _leaves_parameters_unused(FeatureExtractor(MobileViT("xxs", expand_output=False), (2, 4)))
    assert _leaves_parameters_unused(FeatureExtractor(MobileViT("xxs"), (2, 4)))  # conv_1x1_exp never runs
    assert _leaves_parameters_unused(FeatureExtractor(MobileViT("xxs", expand_output=False), (3,)))  # layer_5
    assert not _leaves_parameters_unused(FeatureExtractor(MobileViTv2(0.5), (4,)))  # v2 has no expansion


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    _run_ddp_worker(tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["type"] for r in ranks] == ["DistributedDataParallel"] * 2
    assert [r["samples"] for r in ranks] == [GLOBAL_BATCH * STEPS] * 2  # summed over both ranks

    # Reference: one process, the same global batches. DDP without SyncBatchNorm normalises each rank's half on
    # its own and averages the two gradients, so the reference forwards the same two halves (rank r of a
    # DistributedSampler without shuffling takes indices r, r + 2, ...) and averages their losses.
    # One thread, as in the workers, so that reductions add in the same order.
    model, data = make_problem()
    images, labels = data.tensors
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in range(STEPS):
            batch = torch.arange(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)
            shards = [batch[rank::2] for rank in (0, 1)]
            loss = sum(nn.functional.cross_entropy(model(images[s]), labels[s]) for s in shards) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)

    initial, _ = make_problem()
    moved = 0
    for name, param in model.named_parameters():
        rank0, rank1 = ranks[0]["params"][name], ranks[1]["params"][name]
        assert torch.equal(rank0, rank1), f"{name} differs between ranks"
        torch.testing.assert_close(rank0, param.detach(), rtol=1e-4, atol=1e-5, msg=f"{name} differs from 1 process")
        moved += not torch.equal(rank0, dict(initial.named_parameters())[name])
    assert moved > 0.9 * len(ranks[0]["params"])  # training really changed the weights


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_every_parameter_reaches_the_loss_and_sync_batchnorm_converts(variant):
    x = torch.rand(2, 3, 32, 40)
    backbone = variant.build(expand_output=False)
    settings = [{"expand_output": False}]
    if backbone.config.expansion_channels is not None:  # v2-style families have no expansion to leave out
        settings.append({"expand_output": True, "output_stride": 8})
    for kwargs in settings:
        model = backbone if kwargs == settings[0] else variant.build(**kwargs)
        model(x).sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert missing == [], f"parameters that do not reach the output with {kwargs}: {missing[:5]}"
    backbone.eval()
    reference = copy.deepcopy(backbone)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(backbone)
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) > 10
    assert list(converted.state_dict()) == list(reference.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(converted(x), reference(x))


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: MobileViT("xxs", dropout=0.1, **kw),
        lambda **kw: MobileViTv2(0.5, dropout=0.1, attn_dropout=0.1, **kw),
        lambda **kw: MobileViTv3("xxs", dropout=0.1, **kw),
        lambda **kw: MobileViTv3(width_multiplier=0.5, dropout=0.1, **kw),
    ],
    ids=["v1", "v2", "v3-v1", "v3-v2"],
)
def test_grad_checkpointing_keeps_gradients_and_batchnorm_statistics(make):
    torch.manual_seed(0)
    plain = make()
    checkpointed = make(grad_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.grad_checkpointing and not plain.grad_checkpointing
    x = torch.rand(2, 3, 40, 56)
    outputs = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # same dropout masks
        out = model(x)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-6)
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-6, msg=name)
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        assert torch.equal(a, b), f"{name}: BatchNorm statistics updated twice"
    # Switching off restores the plain forward; the setting is checked.
    checkpointed.set_grad_checkpointing(False)
    assert not checkpointed.grad_checkpointing
    with pytest.raises(TypeError):
        checkpointed.set_grad_checkpointing("yes")
    with pytest.raises(TypeError):
        make(grad_checkpointing=1)


def test_grad_checkpointing_saves_memory_on_the_autograd_graph():
    # Count the bytes autograd keeps for backward (the quantity checkpointing reduces).
    def saved_bytes(model):
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.rand(2, 3, 128, 128)).sum()
        return total

    torch.manual_seed(0)
    plain = saved_bytes(MobileViT("xxs"))
    checkpointed = saved_bytes(MobileViT("xxs", grad_checkpointing=True))
    assert checkpointed < 0.3 * plain


class _Wrapped(nn.Module):
    """A stage replaced by another module (as after regional torch.compile): not iterable like nn.Sequential."""

    def __init__(self, stage: nn.Module) -> None:
        super().__init__()
        self.stage = stage

    def forward(self, x):
        return self.stage(x)


def test_grad_checkpointing_calls_hooked_and_replaced_stages_and_steps_aside_for_torch_func():
    torch.manual_seed(0)
    plain = MobileViT("xxs").train()
    checkpointed = copy.deepcopy(plain).train()
    checkpointed.set_grad_checkpointing(True)
    calls = []
    checkpointed.layer_4.register_forward_hook(lambda *args: calls.append("layer_4"))
    checkpointed.layer_5 = _Wrapped(checkpointed.layer_5)
    plain.layer_5 = _Wrapped(plain.layer_5)
    x = torch.rand(2, 3, 64, 64)
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # same dropout masks
        out = model(x)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    assert calls == ["layer_4"]  # the stage's own hook ran (it was skipped when the blocks ran one by one)
    for (name, expected), actual in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(actual.grad, expected.grad, rtol=0, atol=1e-6, msg=name)
    # torch.func.grad refuses checkpointing's saved-tensor hooks; the stages then run plainly
    model = MobileViT("xxs", grad_checkpointing=True).eval()
    image = torch.rand(1, 3, 32, 32)
    gradient = torch.func.grad(lambda im: model(im).sum())(image)
    model.set_grad_checkpointing(False)
    torch.testing.assert_close(gradient, torch.func.grad(lambda im: model(im).sum())(image))


def test_init_distributed_single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = init_distributed("cpu")
    assert (context.rank, context.world_size, context.is_distributed, context.is_main) == (0, 1, False, True)
    assert context.device == torch.device("cpu")
    with pytest.raises(ValueError, match="device"):
        init_distributed("tpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_distributed("cpu")


def test_wrap_model_refuses_sync_batchnorm_on_cpu_ddp():
    context = DistributedContext(rank=0, world_size=2)
    with pytest.raises(ValueError, match="SyncBatchNorm"):
        wrap_model(MobileViT("xxs"), context, sync_batchnorm=True)
    single = wrap_model(MobileViT("xxs"), DistributedContext(), sync_batchnorm=True)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in single.modules())


def test_make_loader_shards_and_shuffles_reproducibly():
    data = torch.utils.data.TensorDataset(torch.arange(10))
    shards = [
        [int(i) for (batch,) in make_loader(data, 2, DistributedContext(rank=r, world_size=2), shuffle=False)
         for i in batch]
        for r in (0, 1)
    ]
    assert shards == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    orders = [[int(i) for (b,) in make_loader(data, 3, DistributedContext(), shuffle=True, seed=5) for i in b]
              for _ in range(2)]
    assert orders[0] == orders[1] and sorted(orders[0]) == list(range(10)) and orders[0] != list(range(10))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        make_loader(data, 0, DistributedContext(), shuffle=False)


def test_digits_split_is_fixed_and_stratified():
    train, test = load_digits_split()
    again_train, _ = load_digits_split()
    assert (len(train), len(test)) == (1437, 360)
    assert torch.equal(train.tensors[1], again_train.tensors[1])
    assert torch.bincount(test.tensors[1]).min() >= 35  # every class in the test set
    images = train.tensors[0]
    assert images.shape[1:] == (1, 8, 8) and images.min() >= 0 and images.max() <= 1


def test_demo_tiny_run_writes_files_and_reload_check_passes(tmp_path):
    lines = []
    result = run_demo(epochs=1, image_size=16, batch_size=16, limit=120, output=tmp_path, seed=3, progress=False,
                      log=lines.append, device="cpu")
    assert result.reload_matches
    for name in ("checkpoint.pt", "training_curves.png", "predictions.png"):
        assert (tmp_path / name).stat().st_size > 1000
        if name.endswith(".png"):
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["variant"] == "mobilevit_xxs" and len(checkpoint["history"]) == 1
    assert checkpoint["test_accuracy"] == result.test_accuracy
    assert type(model[0]).__name__ == "MobileViT" and model[1].fc.out_features == 10
    assert any(line.startswith("test accuracy:") for line in lines)
    assert any("reload check: OK" in line for line in lines)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a visionkit demo checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_demo_writes_its_checkpoint_and_figures_as_one_set(tmp_path, monkeypatch):
    import visionkit.demo as demo

    settings = dict(epochs=1, image_size=8, batch_size=32, limit=80, output=tmp_path, progress=False,
                    log=lambda *_: None, device="cpu")
    run_demo(seed=1, **settings)
    names = ("checkpoint.pt", "training_curves.png", "predictions.png")
    first = {name: (tmp_path / name).read_bytes() for name in names}

    def broken_plot(*args):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(demo, "_plot_predictions", broken_plot)
    with pytest.raises(RuntimeError, match="plotting failed"):
        run_demo(seed=2, **settings)  # other weights: its checkpoint would differ from the first run's
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no partial file left behind
    assert {name: (tmp_path / name).read_bytes() for name in names} == first


def test_demo_command_line_with_another_variant(tmp_path, capsys):
    code = cli_main(["demo", "--epochs", "1", "--image-size", "8", "--batch-size", "32", "--limit", "80",
                     "--variant", "mobilevitv2_050", "--output", str(tmp_path), "--no-progress", "--threads", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "mobilevitv2_050" in out and "reload check: OK" in out
    assert load_checkpoint(tmp_path / "checkpoint.pt")[1]["variant"] == "mobilevitv2_050"
    with pytest.raises(ValueError, match="image_size"):
        run_demo(image_size=4, output=tmp_path)


def test_one_process_shuffling_follows_the_epoch_number_so_a_resumed_run_sees_the_same_orders():
    from visionkit.training import train_one_epoch

    data = torch.utils.data.TensorDataset(torch.arange(8))
    continuous = make_loader(data, 8, DistributedContext(), shuffle=True, seed=3)
    orders = []
    for epoch in range(3):
        continuous.sampler.set_epoch(epoch)
        orders.append([int(i) for i in next(iter(continuous))[0]])
    assert len({tuple(o) for o in orders}) == 3 and all(sorted(o) == list(range(8)) for o in orders)
    resumed = make_loader(data, 8, DistributedContext(), shuffle=True, seed=3)
    resumed.sampler.set_epoch(2)
    assert [int(i) for i in next(iter(resumed))[0]] == orders[2]
    own_loop = make_loader(data, 8, DistributedContext(), shuffle=True, seed=3)  # never calls set_epoch
    assert [[int(i) for i in next(iter(own_loop))[0]] for _ in range(3)] == orders

    seen = []

    class Recorder(nn.Module):  # train_one_epoch sets the epoch itself
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x):
            seen.append(x.tolist())
            return self.scale * torch.nn.functional.one_hot(x, 8).float()

    model = Recorder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    pairs = torch.utils.data.TensorDataset(torch.arange(8), torch.arange(8))  # (image, label) batches
    train_one_epoch(model, make_loader(pairs, 8, DistributedContext(), shuffle=True, seed=3), optimizer,
                    DistributedContext(), epoch=2)
    assert seen == [orders[2]]


def test_sync_batchnorm_is_refused_on_cpu_whenever_a_process_group_exists():
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        with pytest.raises(ValueError, match="SyncBatchNorm"):
            wrap_model(MobileViT("xxs"), DistributedContext(), sync_batchnorm=True)
    finally:
        dist.destroy_process_group()


def test_demo_keeps_a_process_group_it_did_not_create(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        run_demo(epochs=1, image_size=8, batch_size=32, limit=80, output=tmp_path, progress=False,
                 log=lambda *_: None, device="cpu")
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


def test_demo_refuses_bad_output_lr_and_threads_before_training(tmp_path, capsys, monkeypatch):
    import visionkit.demo as demo

    monkeypatch.setattr(demo, "train_one_epoch", lambda *a, **k: pytest.fail("training started"))
    existing = tmp_path / "a-file"
    existing.write_text("x")
    assert cli_main(["demo", "--output", str(existing), "--no-progress"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert cli_main(["demo", "--lr", "inf", "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "lr must be positive and finite, got inf" in capsys.readouterr().err
    assert cli_main(["demo", "--threads", "-1", "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "--threads must be at least 0" in capsys.readouterr().err


def test_demo_checkpoint_errors_are_value_errors(tmp_path):
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="torch.load failed"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"format": "visionkit-demo-1", "num_classes": 10}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="incomplete visionkit demo checkpoint: no 'variant', 'state_dict'"):
        load_checkpoint(tmp_path / "partial.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_wrap_model_leaves_the_model_unchanged_when_it_fails():
    model = MobileViT("xxs").requires_grad_(False)
    model.register_buffer("mask", torch.zeros(1, 4, 5, 5))  # a 4-D buffer: .to(channels_last) replaces it
    before = {name: (t.data_ptr(), t.stride()) for name, t in model.state_dict().items()}
    with pytest.raises(ValueError, match="at least one parameter with requires_grad=True"):
        wrap_model(model, DistributedContext(rank=0, world_size=2))
    assert {name: (t.data_ptr(), t.stride()) for name, t in model.state_dict().items()} == before
    model.requires_grad_(True)  # DistributedDataParallel itself now fails (no process group), after the layout change
    with pytest.raises(ValueError, match="process group"):
        wrap_model(model, DistributedContext(rank=0, world_size=2))
    assert {name: (t.data_ptr(), t.stride()) for name, t in model.state_dict().items()} == before


def test_wrap_model_puts_the_batchnorms_back_when_it_fails_after_the_sync_batchnorm_conversion(monkeypatch):
    model = MobileViT("xxs")
    norms = {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}

    def failing_move(module, *args, **kwargs):
        raise RuntimeError("the move to the device failed")

    monkeypatch.setattr(nn.Module, "to", failing_move)  # fails after the conversion, with or without a GPU
    with pytest.raises(RuntimeError, match="the move to the device failed"):
        wrap_model(model, DistributedContext(device=torch.device("cuda", 0)), sync_batchnorm=True)
    monkeypatch.undo()
    assert {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)} == norms
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def _class_batches(labels: torch.Tensor, soft: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    one_hot = nn.functional.one_hot(labels, 4).float()
    return [(one_hot.view(-1, 4, 1, 1) * 10, one_hot if soft else labels)]


def test_accuracy_of_probability_labels_counts_their_most_likely_class():
    from visionkit.training import evaluate, train_one_epoch

    context = DistributedContext()
    perfect = nn.Flatten()  # logits = 10 x one-hot of the true class
    for batch in (4, 2):  # 4: the batch as large as the class count (an unchecked comparison broadcast to (4, 4))
        labels = torch.tensor([0, 1, 2, 3, 1, 1, 0, 0])[:batch]
        for soft in (False, True):
            assert evaluate(perfect, _class_batches(labels, soft), context).accuracy == 1.0
    wrong = torch.tensor([[1, 0]]).repeat(4, 1)
    with pytest.raises(ValueError, match=r"labels must be class indices \(B,\) or class probabilities"):
        evaluate(perfect, [(torch.rand(4, 4, 1, 1), wrong)], context, loss_fn=lambda logits, labels: logits.sum())
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="labels must be"):
        train_one_epoch(model, [(torch.rand(4, 4, 1, 1), wrong)], optimizer, context,
                        loss_fn=lambda logits, labels: logits.sum())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no step with unscorable labels
    result = train_one_epoch(model, _class_batches(torch.tensor([0, 1, 2, 3]), True), optimizer, context)
    assert result.samples == 4 and 0.0 <= result.accuracy <= 1.0


def test_train_one_epoch_takes_any_iterable_and_checks_its_arguments_before_changing_anything():
    from visionkit.training import train_one_epoch

    context = DistributedContext()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2)).eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.rand(4, 3, 4, 4), torch.randint(0, 2, (4,))) for _ in range(2)]

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([(torch.rand(3, 4, 4), torch.tensor(1)) for _ in range(4)])

    loader = make_loader(torch.utils.data.TensorDataset(*batches[0]), 2, context, shuffle=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for bad, error, message in [
        (dict(optimizer=None), TypeError, "optimizer"),
        (dict(epoch="3"), TypeError, "epoch"),
        (dict(epoch=1.5), TypeError, "epoch"),
        (dict(epoch=True), TypeError, "epoch"),
        (dict(epoch=-1), ValueError, "epoch must be >= 0"),
        (dict(loss_fn="ce"), TypeError, "loss_fn must be callable"),
        (dict(scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)), TypeError, "needs one"),
        (dict(progress="no"), TypeError, "progress"),
        (dict(description=5), TypeError, "description"),
    ]:
        arguments = dict(optimizer=optimizer, epoch=0) | bad
        with pytest.raises(error, match=message):
            train_one_epoch(model, loader, arguments.pop("optimizer"), context, **arguments)
        assert not model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [len(b[0]) for b in loader] == [2, 2]  # the loader still works
    assert train_one_epoch(model, batches, optimizer, context).samples == 8  # a list of batches
    stream = torch.utils.data.DataLoader(Stream(), batch_size=2)
    assert train_one_epoch(model, stream, optimizer, context, progress=True).samples == 4  # no len(), a bar anyway


def test_progress_without_tqdm_names_what_to_install(monkeypatch):
    from visionkit.training import train_one_epoch

    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    model = nn.Linear(2, 2).eval()
    with pytest.raises(ImportError, match="pip install tqdm"):
        train_one_epoch(model, [(torch.rand(2, 2), torch.tensor([0, 1]))], torch.optim.SGD(model.parameters(), lr=0.1),
                        DistributedContext(), progress=True)
    assert not model.training


def test_make_loader_names_what_it_cannot_take_before_the_first_batch():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(range(4))

    context = DistributedContext()
    for dataset in (Stream(), 5, iter(range(4))):
        with pytest.raises(TypeError, match="map-style dataset .* got " + type(dataset).__name__):
            make_loader(dataset, 2, context, shuffle=False)
    data = list(range(4))
    with pytest.raises(TypeError, match="collate_fn must be None or a callable, got int"):
        make_loader(data, 2, context, shuffle=False, collate_fn=3)
    with pytest.raises(TypeError, match="drop_last"):
        make_loader(data, 2, context, shuffle=False, drop_last="yes")
    loader = make_loader(data, 2, context, shuffle=False, collate_fn=lambda samples: sum(samples))
    assert list(loader) == [1, 5]


def test_make_loader_takes_numpy_and_tensor_batch_sizes():
    import numpy as np

    for size in (np.int64(4), torch.tensor(4)):
        loader = make_loader(list(range(10)), size, DistributedContext(), shuffle=False)
        assert loader.batch_size == 4 and type(loader.batch_size) is int


def test_every_pass_over_a_loader_has_its_own_order_unless_the_epoch_is_given():
    from visionkit.training import train_one_epoch

    data = torch.utils.data.TensorDataset(torch.arange(16))
    for context in (DistributedContext(), DistributedContext(rank=1, world_size=2)):  # no process group needed
        loader = make_loader(data, 4, context, shuffle=True, seed=3)
        passes = [[int(i) for (b,) in loader for i in b] for _ in range(3)]
        assert len({tuple(order) for order in passes}) == 3 and len(passes[0]) == 16 // context.world_size
        loader.sampler.set_epoch(1)
        assert [int(i) for (b,) in loader for i in b] == passes[1]  # the epoch number, not the pass, sets it
    seen = []

    def record(logits, labels):
        seen.append(labels.tolist())
        return logits.sum() * 0

    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pairs = torch.utils.data.TensorDataset(torch.rand(8, 1), torch.arange(8))
    loader = make_loader(pairs, 8, DistributedContext(), shuffle=True)
    for _ in range(2):  # the module docstring's loop, without epoch=
        train_one_epoch(model, loader, optimizer, DistributedContext(), loss_fn=record)
    assert seen[0] != seen[1]


def test_train_one_epoch_refuses_labels_it_cannot_score_before_the_forward():
    from visionkit.training import train_one_epoch

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2)).eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(4, 3, 4, 4)
    for labels in (torch.randint(0, 2, (4, 2)), torch.rand(4), torch.zeros(3, dtype=torch.long)):
        with pytest.raises(ValueError, match=f"dtype {labels.dtype}"):
            train_one_epoch(model, [(images, labels)], optimizer, DistributedContext())
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # no statistics updated


def test_an_empty_loader_is_an_error_not_a_nan_result():
    from visionkit.training import evaluate, train_one_epoch

    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2))
    three = torch.utils.data.TensorDataset(torch.rand(3, 1), torch.arange(3))
    loader = make_loader(three, 4, DistributedContext(), shuffle=False, drop_last=True)
    with pytest.raises(ValueError, match="gave no batch"):
        evaluate(model, loader, DistributedContext())
    with pytest.raises(ValueError, match="gave no batch"):
        train_one_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), DistributedContext())


@pytest.mark.parametrize("environment", [{"RANK": "1"}, {"WORLD_SIZE": "0"}, {"WORLD_SIZE": "2", "RANK": "2"},
                                         {"LOCAL_RANK": "-1"}])
def test_a_torchrun_environment_out_of_range_is_refused(environment, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0"):
        init_distributed("cpu")


def test_demo_checks_its_arguments_and_output_before_training(tmp_path, monkeypatch):
    import numpy as np

    import visionkit.demo as demo
    from visionkit.demo import DigitsBatch, predict

    monkeypatch.setattr(demo, "train_one_epoch", lambda *a, **k: pytest.fail("training started"))
    quick = dict(epochs=1, image_size=8, limit=50, batch_size=16, progress=False, device="cpu")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "out" / "checkpoint.pt").mkdir(parents=True)
    for bad, error, message in [
        (dict(output=tmp_path / "a-file" / "sub"), NotADirectoryError, "is a file"),
        (dict(output=tmp_path / "out"), IsADirectoryError, "checkpoint.pt' is a folder"),
        (dict(seed=2**64), ValueError, "seed must be in"),
        (dict(progress="no"), TypeError, "progress"),
        (dict(log=None), TypeError, "log must be callable"),
        (dict(output=None), TypeError, "output"),
        (dict(variant=None), TypeError, "variant"),
    ]:
        with pytest.raises(error, match=message):
            run_demo(**(dict(quick, output=tmp_path / "o") | bad))
    with pytest.raises(ValueError, match="seed must be in"):
        make_loader(torch.utils.data.TensorDataset(torch.arange(4)), 2, DistributedContext(), shuffle=True,
                    seed=2**64)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(10))
    for bad in (dict(batch_size=0), dict(batch_size=-1), dict(image_size=0), dict(image_size=4)):
        with pytest.raises(ValueError, match="batch_size|image_size"):
            predict(model, torch.rand(2, 1, 8, 8), **(dict(image_size=8) | bad))
    with pytest.raises(ValueError, match="image_size must be at least 8"):
        DigitsBatch(4)
    monkeypatch.undo()
    result = run_demo(**(quick | dict(epochs=np.int64(1), image_size=np.int64(8))), output=tmp_path / "numpy",
                      log=lambda *_: None)
    assert result.reload_matches and load_checkpoint(tmp_path / "numpy" / "checkpoint.pt")[1]["image_size"] == 8


def test_a_limited_split_is_stratified_when_it_can_be_and_the_whole_limit_is_the_full_split():
    full_train, full_test = load_digits_split()
    all_train, all_test = load_digits_split(1797)
    assert torch.equal(all_test.tensors[1], full_test.tensors[1])
    assert torch.equal(all_train.tensors[0], full_train.tensors[0])
    _, test = load_digits_split(200)
    assert torch.bincount(test.tensors[1], minlength=10).tolist() == [4] * 10
    _, small = load_digits_split(46)
    assert torch.bincount(small.tensors[1], minlength=10).tolist() == [1] * 10
