"""Training core on tiny synthetic data, on the CPU."""
import numpy as np
import pytest
import torch

from fmnist.device import pick_device
from fmnist.errors import StageError
from fmnist.model import nets
from fmnist.model.members import load_member
from fmnist.model.nets import Normalizer
from fmnist.params import parse_params
from fmnist.training.loop import Images, fit, lr_at
from fmnist.training.member import save_member
from tests.conftest import real_params


def tiny_cfg(**overrides):
    params = real_params()
    # No flips: the synthetic classes below are positions, which a flip would swap.
    params["train"].update({"epochs": 3, "batch_size": 32, "eval_batch_size": 64, "lr": 0.1,
                            "augment": {"flip": False, "translate": 1, "erasing": 0.0}, **overrides})
    return parse_params(params).train


def synthetic(n: int, seed: int) -> Images:
    """Class k is a bright 7x7 block at position k of a 4x4 grid (8 classes), plus noise: learnable in seconds."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 8
    x = rng.integers(0, 60, (n, 1, 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        r, c = divmod(int(k), 4)
        x[i, 0, r * 7:(r + 1) * 7, c * 7:(c + 1) * 7] = 220
    return Images(torch.from_numpy(x), torch.from_numpy(labels))


NORM = Normalizer(torch.tensor(0.2), torch.tensor(0.3), channels_last=True)


def train_tiny(cfg, seed=0, net="fast", **kwargs):
    torch.manual_seed(seed)
    model = nets.build(net, 8, (28, 28)).to(memory_format=torch.channels_last)
    data = synthetic(256, 1)
    nets.fit_whitening(model, NORM(data.x))
    result = fit(model, data, synthetic(64, 2), NORM, cfg, seed, **kwargs)
    return model, result


def test_training_lowers_the_loss_and_learns():
    _, result = train_tiny(tiny_cfg())
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert result.best["val_accuracy"] > 0.5  # chance is 0.125
    assert 1 <= result.best_epoch <= 3


def test_same_seed_gives_identical_weights():
    cfg = tiny_cfg(epochs=2)
    first, _ = train_tiny(cfg, seed=3)
    second, _ = train_tiny(cfg, seed=3)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_different_seeds_differ():
    cfg = tiny_cfg(epochs=1)
    first, _ = train_tiny(cfg, seed=1)
    second, _ = train_tiny(cfg, seed=2)
    assert not torch.equal(first.state_dict()["head.2.weight"], second.state_dict()["head.2.weight"])


class Killed(Exception):
    pass


@pytest.mark.fault
@pytest.mark.parametrize(("ema_decay", "lookahead_every", "optimizer"),
                         [(0.0, 0, "sgd"), (0.9, 0, "sgd"), (0.0, 3, "sgd"), (0.0, 0, "muon")])
def test_kill_and_resume_ends_with_the_same_weights(tmp_path, ema_decay, lookahead_every, optimizer):
    cfg = tiny_cfg(epochs=3, ema_decay=ema_decay, lookahead_every=lookahead_every, optimizer=optimizer,
                   augment={"flip": True, "translate": 2, "erasing": 0.5})
    uninterrupted, full = train_tiny(cfg, seed=5)

    def die_in_epoch_2(row):
        if row["epoch"] == 2:  # after epoch 2's work, before its checkpoint: like a kill mid-epoch
            raise Killed
    checkpoint = tmp_path / "resume.pt"
    with pytest.raises(Killed):
        train_tiny(cfg, seed=5, checkpoint=checkpoint, fingerprint="f", on_epoch=die_in_epoch_2)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    reported = []
    resumed, result = train_tiny(cfg, seed=99, checkpoint=checkpoint, fingerprint="f",  # seed unused on resume
                                 on_epoch=reported.append)
    assert [row["epoch"] for row in reported] == [1, 2, 3]  # restored epochs are reported again
    for (name, a), b in zip(uninterrupted.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["val_loss"] for r in result.history] == [r["val_loss"] for r in full.history]
    assert result.best_epoch == full.best_epoch


@pytest.mark.fault
def test_a_checkpoint_for_other_params_is_not_resumed(tmp_path):
    cfg = tiny_cfg(epochs=1)
    checkpoint = tmp_path / "resume.pt"
    train_tiny(cfg, checkpoint=checkpoint, fingerprint="old")
    _, result = train_tiny(cfg, checkpoint=checkpoint, fingerprint="new")
    assert [row["epoch"] for row in result.history] == [1]


def test_the_resume_fingerprint_changes_with_the_code(tmp_path):
    from fmnist.training.member import code_digest

    (tmp_path / "fmnist" / "model").mkdir(parents=True)
    (tmp_path / "stages").mkdir()
    net, stage = tmp_path / "fmnist" / "model" / "nets.py", tmp_path / "stages" / "train.py"
    net.write_text("WIDTH = 24\n")
    stage.write_text("EPOCHS = 38\n")
    (tmp_path / "stages" / "evaluate.py").write_text("")
    before = code_digest(tmp_path / "fmnist")
    assert code_digest(tmp_path / "fmnist") == before
    net.write_text("WIDTH = 32\n")
    after_net = code_digest(tmp_path / "fmnist")
    stage.write_text("EPOCHS = 40\n")
    after_stage = code_digest(tmp_path / "fmnist")
    assert len({before, after_net, after_stage}) == 3
    (tmp_path / "stages" / "evaluate.py").write_text("# not the train stage's\n")
    assert code_digest(tmp_path / "fmnist") == after_stage


@pytest.mark.fault
def test_nan_loss_stops_with_a_clear_message(tmp_path):
    broken = Normalizer(torch.tensor(0.0), torch.tensor(0.0), channels_last=True)  # 0/0: NaN inputs
    model = nets.build("fast", 8, (28, 28))
    checkpoint = tmp_path / "resume.pt"
    with pytest.raises(StageError, match=r"training loss became nan in epoch 1 .*lower train.lr"):
        fit(model, synthetic(64, 1), synthetic(32, 2), broken, tiny_cfg(epochs=1), 0, checkpoint=checkpoint)
    assert not checkpoint.exists()


def test_one_cycle_schedule():
    cfg = tiny_cfg(lr=1.0, warmup_fraction=0.2)
    assert lr_at(0, 100, cfg) == pytest.approx(0.1)
    assert lr_at(20, 100, cfg) == pytest.approx(1.0)
    assert lr_at(60, 100, cfg) == pytest.approx(0.5)
    assert lr_at(100, 100, cfg) == 0.0


@pytest.mark.fault
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_an_error_not_a_silent_cpu_run():
    with pytest.raises(StageError, match=r"train.device is 'cuda' but no CUDA GPU is visible.*train.device: auto or cpu"):
        pick_device("cuda")
    assert pick_device("auto").type == "cpu"


@pytest.mark.fault
def test_saved_member_loads_with_weights_only(tmp_path):
    _, result = train_tiny(tiny_cfg(epochs=1))
    params = parse_params(real_params())
    classes = params.dataset.classes
    model = nets.build(params.train.net, len(classes), (28, 28))  # the default net, its state dict as saved
    path = tmp_path / "m0.pt"
    save_member(path, model, NORM, params.train, classes, [28, 28], "m0", params.members["m0"], result)
    loaded, state = load_member(path)
    assert state["classes"] == classes and state["best_epoch"] == result.best_epoch
    x = torch.zeros(2, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))


def test_the_same_member_saved_to_two_paths_gives_identical_bytes(tmp_path):
    _, result = train_tiny(tiny_cfg(epochs=1))
    params = parse_params(real_params())
    torch.manual_seed(0)
    model = nets.build("fast", len(params.dataset.classes), (28, 28))
    first, second = tmp_path / "m0.pt", tmp_path / "elsewhere" / "m1.pt"
    for path in (first, second):
        save_member(path, model, NORM, params.train, params.dataset.classes, [28, 28], "m0", params.members["m0"],
                    result)
    # DVC, its run-cache and the lineage tags know a model by its md5: the bytes may depend on nothing else
    assert first.read_bytes() == second.read_bytes()
    assert [p.name for p in tmp_path.rglob("*.tmp")] == []


@pytest.mark.gpu
def test_cuda_training_runs_with_bf16_and_channels_last():
    device = torch.device("cuda")
    cfg = tiny_cfg(epochs=1, device="cuda")
    data, val = synthetic(256, 1), synthetic(64, 2)
    data, val = Images(data.x.to(device), data.y.to(device)), Images(val.x.to(device), val.y.to(device))
    norm = Normalizer(NORM.mean.to(device), NORM.std.to(device), True)
    model = nets.build("fast", 8, (28, 28)).to(device).to(memory_format=torch.channels_last)
    result = fit(model, data, val, norm, cfg, 0)
    assert np.isfinite(result.best["val_loss"])


def test_validation_follows_every_nth_epoch_and_each_of_the_last(tmp_path):
    from fmnist.training.loop import write_history

    cfg = tiny_cfg(epochs=7, validate_every=3, validate_last=2)
    _, result = train_tiny(cfg)
    validated = [row["epoch"] for row in result.history if row["val_loss"] is not None]
    assert validated == [3, 6, 7]
    assert result.best_epoch in validated  # the best checkpoint is one that was scored
    write_history(tmp_path / "h.csv", result.history)
    lines = (tmp_path / "h.csv").read_text().splitlines()
    columns = lines[0].split(",")
    cells = [line.split(",")[columns.index("val_accuracy")] for line in lines[1:]]
    assert [bool(c) for c in cells] == [False, False, True, False, False, True, True]  # empty, not "nan"



def test_lookahead_changes_the_weights_and_still_learns():
    averaged, result = train_tiny(tiny_cfg(epochs=3, lookahead_every=2), seed=1)
    assert result.best["val_accuracy"] > 0.5
    plain, _ = train_tiny(tiny_cfg(epochs=3), seed=1)
    assert not torch.equal(next(iter(averaged.parameters())), next(iter(plain.parameters())))


def test_whitened_net_learns_with_its_filters_frozen_and_its_bias_trained():
    torch.manual_seed(0)
    model, result = train_tiny(tiny_cfg(epochs=3), seed=0, net="fast_whiten")
    assert result.best["val_accuracy"] > 0.5
    fresh = nets.build("fast_whiten", 8, (28, 28))
    nets.fit_whitening(fresh, NORM(synthetic(256, 1).x))
    assert torch.equal(model.features[0].conv.weight, fresh.features[0].conv.weight.to(memory_format=torch.channels_last))
    assert not torch.equal(model.features[0].conv.bias, fresh.features[0].conv.bias)


def test_no_decay_lr_scale_multiplies_the_batchnorm_groups_lr():
    from fmnist.training.loop import make_optimizer

    model = nets.build("fast", 8, (28, 28))
    for optimizer in ("sgd", "muon"):
        groups = make_optimizer(model, tiny_cfg(no_decay_lr_scale=8.0, optimizer=optimizer)).param_groups
        scaled = [g for g in groups if g.get("lr_scale") == 8.0]
        assert len(scaled) == 1 and all(p.ndim == 1 for p in scaled[0]["params"])
        assert sum(p.numel() for p in scaled[0]["params"]) == sum(
            m.weight.numel() + m.bias.numel() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_muon_learns_and_keeps_each_filter_bank_normalized():
    model, result = train_tiny(tiny_cfg(epochs=3, optimizer="muon"), seed=2)
    assert result.best["val_accuracy"] > 0.5
    for p in model.parameters():
        if p.ndim == 4:  # renormalized before each step; one step moves the norm only slightly
            assert abs(p.norm().item() / len(p) ** 0.5 - 1) < 0.5
