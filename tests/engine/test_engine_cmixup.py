"""The engine with dataset-scope C-Mixup (Yao et al., NeurIPS 2022, arXiv 2210.05775).

As the authors' code (huaxiuyao/C-Mixup, ``src/algorithm.py``, ``train`` with
``batch_type=0``), every anchor's partner is drawn from the whole training set
with the Gaussian label kernel; the engine loads each batch as its anchors,
then their partners, and trains on the anchors' mixes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from engine_fixtures import tiny_config

import mixlab
from mixlab.batch import MixedBatch
from mixlab.data import ArrayData, DataSplits, load_dataset
from mixlab.data.loader import FolderLoader, TensorLoader, epoch_order
from mixlab.data.pairs import PartnerBatchSampler, PartnerTensorLoader, anchor_mixes, epoch_partners
from mixlab.engine import load_config, train
from mixlab.engine.checkpoint import load_checkpoint, read_jsonl
from mixlab.engine.distributed import DistInfo
from mixlab.engine.run import (
    AnchorMixes,
    _build_trainer,
    _loader,
    dataset_pairings,
    fit_partner_pairing,
    load_run_data,
)
from mixlab.errors import MixlabTypeError, MixlabValueError
from mixlab.sampling import CMixupPairing

RECIPE = Path(__file__).parents[2] / "configs" / "recipes" / "diabetes_c_mixup.yaml"
CPU = DistInfo(0, 1, torch.device("cpu"))


def diabetes_config(*overrides: str):
    return load_config(RECIPE, ["train.progress=off", "train.threads=1", *overrides])


def standardised(y: torch.Tensor) -> torch.Tensor:
    y = y.double()
    return (y - y.mean()) / y.std()


# ---------------------------------------------------------------- what the loop is given


def test_the_loop_gets_anchor_partner_batches_and_trains_on_the_anchor_mixes():
    config = diabetes_config("train.epochs=1", "mix.options.sigma=0.5")
    splits = load_run_data(config)
    trainer = _build_trainer(config, splits, CPU, False, False)
    loader, mixer = trainer.train_loader, trainer.mixer
    assert isinstance(loader, PartnerTensorLoader) and isinstance(mixer, AnchorMixes)
    pairing = mixer.mixer.pairing
    assert loader.pairing is pairing and pairing.num_targets == len(splits.train) == 354

    # the rates: the row-normalised kernel on the standardised training targets (sigma in standard deviations)
    z = standardised(splits.train.y)
    for anchor in (0, 17, 200):
        weights = torch.exp(-((z - z[anchor]) ** 2) / (2 * 0.5**2))
        torch.testing.assert_close(pairing.partner_rates([anchor])[0], weights / weights.sum(), atol=1e-6, rtol=0)

    # as many steps per epoch as plain batches of 32 anchors; each step loads 2 * 32 rows
    plain = TensorLoader(splits.train.x, z, batch_size=32, shuffle=True, drop_last=True)
    assert len(loader) == len(plain) == trainer.steps_per_epoch == 354 // 32
    loader.set_epoch(0)
    x, y = next(iter(loader))
    anchors = epoch_order(354, epoch=0, seed=0, shuffle=True, drop_last=True)[:32]
    partners = epoch_partners(pairing, epoch_order(354, epoch=0, seed=0, shuffle=True, drop_last=True), seed=0, epoch=0)
    torch.testing.assert_close(x, splits.train.x[torch.cat([anchors, partners[:32]])])
    torch.testing.assert_close(y.double(), z[torch.cat([anchors, partners[:32]])], atol=1e-6, rtol=0)

    mb = mixer(x, y, torch.Generator().manual_seed(0), step=0, epoch=0)
    lam = float(mb.lam[0])
    assert mb.batch_size == 32 and bool((mb.lam == lam).all())  # one lambda per batch, the anchors' rows only
    torch.testing.assert_close(mb.inputs, lam * x[:32] + (1 - lam) * x[32:])
    torch.testing.assert_close(mb.mixed_target(), lam * y[:32] + (1 - lam) * y[32:])
    loss, outputs = trainer.objective(trainer.model, x, y, mb)
    assert outputs.shape == (32, 1) and torch.isfinite(loss)


def test_clean_scheduled_steps_train_on_the_anchors_alone():
    config = diabetes_config("train.epochs=2", "mix.schedule=[{kind: warmup, options: {epochs: 1}}]")
    trainer = _build_trainer(config, load_run_data(config), CPU, False, False)
    x, y = next(iter(trainer.train_loader))
    mb = trainer.mixer(x, y, torch.Generator().manual_seed(0), step=0, epoch=0)
    assert (
        torch.equal(mb.inputs, x[:32])
        and torch.equal(mb.lam, torch.ones(32))
        and torch.equal(mb.mixed_target(), y[:32])
    )


def test_manifold_mixup_mixes_inside_the_model_and_keeps_the_anchors_outputs():
    # the authors' Airfoil setting: C-Mixup partners, mixup of hidden states
    config = diabetes_config("train.epochs=1", "mix.method=manifold_mixup")
    trainer = _build_trainer(config, load_run_data(config), CPU, False, False)
    x, y = next(iter(trainer.train_loader))
    mb = trainer.mixer(x, y, torch.Generator().manual_seed(3), step=0, epoch=0)
    assert mb.forward_fn is not None and mb.inputs.shape[0] == 64 and mb.lam.shape == (32,)
    loss, outputs = trainer.objective(trainer.model, x, y, mb)
    assert outputs.shape == (32, 1) and torch.isfinite(loss)
    result = train(config, None, echo=False)
    assert result.final["steps"] == 354 // 32


# ---------------------------------------------------------------- end to end, resume, DDP


class _CrashError(Exception):
    pass


def test_c_mixup_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    config = diabetes_config("train.epochs=3")
    full = train(config, tmp_path / "full", echo=False)

    def crash_after_first(record: dict) -> None:
        if record["epoch"] == 1:
            raise _CrashError

    with pytest.raises(_CrashError):
        train(config, tmp_path / "cut", echo=False, on_epoch_end=crash_after_first)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    resumed = train(config, tmp_path / "cut", resume=True, echo=False)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    losses = [r["train_loss"] for r in read_jsonl(tmp_path / "cut" / "metrics.jsonl")]
    assert losses == [r["train_loss"] for r in full.history]
    other = train(diabetes_config("train.epochs=3", "train.seed=1"), None, echo=False)
    assert other.history[0]["train_loss"] != full.history[0]["train_loss"]


def test_each_rank_loads_its_own_anchors_with_partners_from_the_whole_set():
    config = diabetes_config("train.epochs=1")
    splits = load_run_data(config)
    y = splits.train.y.double()
    mean, scale = float(y.mean()), float(y.std())
    z = standardised(splits.train.y).float()
    pairing = fit_partner_pairing(mixlab.Mixup(pairing="c_mixup", sigma=2.0), splits, z)
    row_of = {tuple(row.tolist()): i for i, row in enumerate(splits.train.x)}
    assert len(row_of) == 354
    anchors, partners = [], []
    for rank in (0, 1):
        dist = DistInfo(rank, 2, torch.device("cpu"))
        loader = _loader(config, splits.train, dist, train=True, target_mean=mean, target_scale=scale, pairing=pairing)
        assert isinstance(loader, PartnerTensorLoader) and (loader.rank, loader.world_size) == (rank, 2)
        assert len(loader) == 354 // 2 // 32
        batches = list(loader)
        anchors.append({row_of[tuple(row.tolist())] for xb, _ in batches for row in xb[:32]})
        partners.append(torch.cat([yb[32:] for _, yb in batches]))
    assert len(anchors[0]) == len(anchors[1]) == 5 * 32 and not anchors[0] & anchors[1]
    assert not torch.equal(partners[0], partners[1])  # each rank draws from its own (seed, epoch, rank) stream


def child_env() -> dict[str, str]:
    # one thread in every process, so that float sums are the same on both ranks
    return {**os.environ, "OMP_NUM_THREADS": "1"}


DDP_WORKER = """
import os, sys, torch
from mixlab.engine import load_config, train
result = train(load_config(sys.argv[1]), sys.argv[2], echo=False)
torch.save(result.model.state_dict(), os.path.join(sys.argv[3], f"rank{os.environ['RANK']}.pt"))
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_two_gloo_ranks_train_c_mixup_to_identical_weights(tmp_path):
    config = yaml.safe_load(RECIPE.read_text())
    config["train"].update({"epochs": 2, "progress": "off", "device": "cpu"})
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [str(worker), str(path), str(tmp_path / "out"), str(tmp_path)]
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
    final = yaml.safe_load((tmp_path / "out" / "final.json").read_text())
    assert final["steps"] == 2 * (354 // 2 // 32)
    test_y = load_dataset("diabetes").test.y
    assert final["test_rmse"] < float((test_y - test_y.mean()).square().mean().sqrt())


# ---------------------------------------------------------------- finding the pairing, bad input


def test_the_pairing_is_found_on_the_mixer_its_members_and_a_relabelling_base():
    assert dataset_pairings(mixlab.Mixup()) == [] and dataset_pairings(None) == []
    assert dataset_pairings(mixlab.create_mixer("mixup", pairing="c_mixup_batch")) == []
    own = mixlab.create_mixer("mixup", pairing="c_mixup")
    assert dataset_pairings(own) == [own.pairing]
    shared = CMixupPairing(sigma=0.3)
    choice = mixlab.create_mixer(
        "random_choice", mixers=[mixlab.Mixup(pairing=shared), mixlab.CutMix(pairing=shared), "mixup"]
    )
    assert dataset_pairings(choice) == [shared]
    transmix = mixlab.create_mixer("transmix", pairing="c_mixup", sigma=0.3)
    assert transmix.base.pairing in dataset_pairings(transmix)


def regression_splits(y: torch.Tensor) -> DataSplits:
    part = ArrayData(torch.zeros(len(y), 2), y)
    return DataSplits("toy", "regression", part, None, part, None, (2,), None, {})


def test_members_pairings_are_all_fitted_and_must_agree():
    y = torch.tensor([0.0, 0.5, 3.0, 3.5])
    members = [
        {"name": "mixup", "pairing": "c_mixup", "sigma": 0.4},
        {"name": "mixup", "pairing": "c_mixup", "sigma": 0.4},
    ]
    choice = mixlab.create_mixer("random_choice", mixers=members)
    first = fit_partner_pairing(choice, regression_splits(y), y)
    assert first is choice.mixers[0].pairing
    assert [m.pairing.num_targets for m in choice.mixers] == [4, 4]
    differ = mixlab.create_mixer("random_choice", mixers=[members[0], {**members[1], "sigma": 0.8}])
    with pytest.raises(MixlabValueError, match=r"share sigma.*0\.4.*0\.8"):
        fit_partner_pairing(differ, regression_splits(y), y)
    assert fit_partner_pairing(mixlab.Mixup(), regression_splits(y), y) is None


def test_c_mixup_on_classification_or_integer_targets_is_refused_before_training(data_root, tmp_path):
    config = tiny_config(data_root, mix={"method": "mixup", "options": {"pairing": "c_mixup"}})
    with pytest.raises(MixlabValueError, match=r"for regression; dataset 'fashion_mnist' is a classification task"):
        train(load_config(config), tmp_path / "run", echo=False)
    assert not (tmp_path / "run").exists()
    y = torch.arange(4)
    with pytest.raises(MixlabTypeError, match=r"float targets; got dtype torch\.int64"):
        fit_partner_pairing(mixlab.Mixup(pairing="c_mixup"), regression_splits(y), y)


# ---------------------------------------------------------------- the helpers


def test_anchor_mixes_keeps_the_first_half_of_every_per_row_field():
    x, y = torch.arange(8.0).view(4, 2), torch.tensor([1.0, 2.0, 3.0, 4.0])
    perm, lam = torch.tensor([2, 3, 0, 1]), torch.tensor([0.25, 0.5, 0.25, 0.5])
    mb = MixedBatch(x + 100, y, y[perm], lam, perm, mask=lam.view(4, 1))
    cut = anchor_mixes(mb)
    assert (
        torch.equal(cut.inputs, x[:2] + 100)
        and torch.equal(cut.perm, perm[:2])
        and torch.equal(cut.mask, lam[:2, None])
    )
    assert torch.equal(cut.mixed_target(), torch.tensor([0.25 * 1 + 0.75 * 3, 0.5 * 2 + 0.5 * 4]))
    assert torch.equal(anchor_mixes(MixedBatch(x, y, y, lam, perm, mask=torch.ones(1, 1))).mask, torch.ones(1, 1))
    inside = MixedBatch(x, y, y[perm], lam, perm, forward_fn=lambda model, inputs: model(inputs) * 2)
    cut = anchor_mixes(inside)
    assert cut.inputs.shape[0] == 4 and torch.equal(cut.forward(torch.nn.Identity()), 2 * x[:2])
    sources = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 0], [3, 0, 1]])
    three = MixedBatch.from_sources(x, y, sources, torch.full((4, 3), 1 / 3))
    assert anchor_mixes(three).weights.shape == (2, 3) and anchor_mixes(three).source_targets.shape == (2, 3)
    with pytest.raises(MixlabValueError, match="even size; got 3"):
        anchor_mixes(MixedBatch.unmixed(x[:3], y[:3]))


def test_folder_loader_takes_a_partner_batch_sampler_and_passes_the_epoch_on():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 1, 2, 2, generator=g), torch.randn(10, generator=g)
    dataset = torch.utils.data.TensorDataset(x, y)
    pairing = CMixupPairing(sigma=0.5).fit(y)
    order = {"batch_size": 3, "shuffle": True, "drop_last": True, "seed": 4}
    loader = FolderLoader(dataset, workers=0, batch_sampler=PartnerBatchSampler(pairing, **order), **order)
    own = PartnerBatchSampler(pairing, **order)
    assert len(loader) == len(own) == 3
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        own.set_epoch(epoch)
        for (xb, yb), index in zip(loader, own, strict=True):
            assert xb.shape[0] == 6 and torch.equal(yb, y[index]) and torch.equal(xb, x[index])
    with pytest.raises(MixlabValueError, match=r"seed 4 \(loader: 5\)"):
        FolderLoader(dataset, workers=0, batch_sampler=PartnerBatchSampler(pairing, **order), **{**order, "seed": 5})
    with pytest.raises(MixlabTypeError, match="set_epoch"):
        FolderLoader(dataset, workers=0, batch_sampler=[[0, 1]], **order)
