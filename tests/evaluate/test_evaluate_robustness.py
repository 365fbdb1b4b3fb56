"""Logits, FGSM and Gaussian-noise accuracy: scales, clamping, determinism, and no side effects on the model."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from mixlab.engine.checkpoint import load_checkpoint
from mixlab.engine.config import RunConfig
from mixlab.engine.run import build_augment, build_model, load_run_data
from mixlab.errors import MixlabTypeError, MixlabValueError
from mixlab.evaluate import classification_metrics, fgsm_accuracy, noise_accuracy, predict_logits


class Recorder:
    """A preprocess that keeps a copy of every batch it is given, and passes it on as float."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.seen.append(batch.detach().clone())
        return batch.float()


class ModeSpy(nn.Module):
    """A linear classifier that records whether it ran in training mode."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, classes)
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.linear(x.flatten(1))


@pytest.fixture(scope="module")
def trained(trained_run):
    """The trained fixture model with its test split and eval-time preprocessing."""
    state = load_checkpoint(trained_run.output / "checkpoint.pt")
    config = RunConfig.model_validate(state["config"])
    splits = load_run_data(config)
    model = build_model(config, splits)
    model.load_state_dict(state["model"])
    augment = build_augment(config, splits)
    return model, splits.test, lambda x: augment(x, train=False)


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    """uint8 images with pixels at both ends of the range, so that perturbations must be clamped."""
    x = torch.randint(0, 256, (n, 1, 4, 4), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    x[:, :, 0, 0], x[:, :, 0, 1] = 0, 255
    return x


# ------------------------------------------------------------------ predict_logits


def test_predict_logits_is_batched_float32_cpu_and_independent_of_the_batch_size():
    model, x = ModeSpy(16, 3), images(7)
    recorder = Recorder()
    logits = predict_logits(model, x, preprocess=recorder, batch_size=3)
    assert logits.dtype == torch.float32 and logits.device.type == "cpu" and logits.shape == (7, 3)
    assert [len(b) for b in recorder.seen] == [3, 3, 1]
    assert recorder.seen[0].dtype == torch.uint8  # the raw batch, as the caller gave it
    assert not logits.requires_grad
    torch.testing.assert_close(logits, predict_logits(model, x, preprocess=Recorder(), batch_size=100, device="cpu"))


def test_the_model_runs_in_eval_mode_and_gets_its_modes_back():
    model = ModeSpy(16, 3).train()
    model.linear.eval()  # a submodule's own mode is kept as well
    x, y = images(), torch.zeros(6, dtype=torch.long)
    predict_logits(model, x, preprocess=Recorder())
    fgsm_accuracy(model, x, y, eps=0.1, preprocess=Recorder())
    noise_accuracy(model, x, y, std=0.1, preprocess=Recorder())
    assert model.modes and not any(model.modes)
    assert model.training and not model.linear.training


# ------------------------------------------------------------------ FGSM


def test_fgsm_at_zero_radius_is_exactly_the_clean_accuracy(trained):
    model, test, preprocess = trained
    clean = classification_metrics(predict_logits(model, test.x, preprocess=preprocess), test.y)["top1"]
    assert fgsm_accuracy(model, test.x, test.y, eps=0.0, preprocess=preprocess) == clean


def test_fgsm_accuracy_falls_as_the_radius_grows(trained):
    model, test, preprocess = trained
    radii = [0.0, 1 / 255, 4 / 255, 16 / 255, 64 / 255]
    accuracies = [fgsm_accuracy(model, test.x, test.y, eps=eps, preprocess=preprocess) for eps in radii]
    assert all(later <= earlier for earlier, later in itertools.pairwise(accuracies))
    assert accuracies[-1] < accuracies[0]


def test_fgsm_moves_each_input_by_eps_along_the_sign_of_the_loss_gradient():
    # for a linear two-class model the gradient of CE w.r.t. x points along w[other] - w[target]
    model = nn.Linear(5, 2)
    x, y = torch.randn(8, 5, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1] * 4)
    recorder = Recorder()
    fgsm_accuracy(model, x, y, eps=0.3, preprocess=recorder)
    w = model.weight.detach()
    expected = x + 0.3 * (w[1 - y] - w[y]).sign()
    torch.testing.assert_close(recorder.seen[-1], expected)  # float inputs: perturbed in their units, unclamped


def test_fgsm_on_images_perturbs_in_the_unit_scale_and_clamps():
    model, x, y = ModeSpy(16, 3), images(), torch.tensor([0, 1, 2, 0, 1, 2])
    recorder = Recorder()
    fgsm_accuracy(model, x, y, eps=0.5, preprocess=recorder)
    adversarial = recorder.seen[-1]
    assert adversarial.is_floating_point()
    assert adversarial.min() == 0.0 and adversarial.max() == 1.0  # pixels pushed past 0 and 255 are clamped
    step = (adversarial - x.float() / 255).abs()
    assert bool((step <= 0.5 + 1e-6).all())
    assert bool((step > 0.49).any())


def test_fgsm_leaves_the_parameters_gradients_and_flags_alone():
    model = ModeSpy(16, 3)
    sentinel = torch.full_like(model.linear.weight, 7.0)
    model.linear.weight.grad = sentinel.clone()
    model.linear.bias.requires_grad_(False)
    fgsm_accuracy(model, images(), torch.tensor([0, 1, 2, 0, 1, 2]), eps=0.1, preprocess=Recorder())
    torch.testing.assert_close(model.linear.weight.grad, sentinel)
    assert model.linear.bias.grad is None
    assert model.linear.weight.requires_grad and not model.linear.bias.requires_grad


def test_fgsm_runs_inside_a_no_grad_block():
    model, x, y = nn.Linear(3, 2), torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        inside = fgsm_accuracy(model, x, y, eps=0.5, preprocess=lambda b: b)
    assert inside == fgsm_accuracy(model, x, y, eps=0.5, preprocess=lambda b: b)


# ------------------------------------------------------------------ Gaussian noise


def test_noise_of_zero_std_is_exactly_the_clean_accuracy(trained):
    model, test, preprocess = trained
    clean = classification_metrics(predict_logits(model, test.x, preprocess=preprocess), test.y)["top1"]
    assert noise_accuracy(model, test.x, test.y, std=0.0, preprocess=preprocess) == clean
    assert noise_accuracy(model, test.x, test.y, std=1.0, preprocess=preprocess) < clean


def test_noise_is_fixed_by_the_seed():
    model, x, y = nn.Linear(4, 3), torch.randn(50, 4), torch.arange(50) % 3
    runs = {}
    for seed in (0, 0, 1):
        recorder = Recorder()
        accuracy = noise_accuracy(model, x, y, std=0.5, preprocess=recorder, seed=seed, batch_size=20)
        runs.setdefault(seed, []).append((accuracy, torch.cat(recorder.seen)))
    (acc_a, seen_a), (acc_b, seen_b) = runs[0]
    assert acc_a == acc_b and torch.equal(seen_a, seen_b)
    assert not torch.equal(seen_a, runs[1][0][1])


def test_noise_on_float_inputs_has_the_requested_std_and_no_clamp():
    model, x = nn.Linear(200, 2), torch.zeros(50, 200)
    recorder = Recorder()
    noise_accuracy(model, x, torch.zeros(50, dtype=torch.long), std=2.0, preprocess=recorder)
    noise = torch.cat(recorder.seen)
    assert noise.std().item() == pytest.approx(2.0, rel=0.02)
    assert noise.abs().max() > 1.0


def test_noise_on_images_stays_in_the_unit_range():
    model, x = ModeSpy(16, 3), images()
    recorder = Recorder()
    noise_accuracy(model, x, torch.zeros(6, dtype=torch.long), std=0.5, preprocess=recorder)
    noisy = torch.cat(recorder.seen)
    assert noisy.is_floating_point()
    assert noisy.min() == 0.0 and noisy.max() == 1.0
    assert not torch.equal(noisy, x.float() / 255)


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("call", "error", "seen"),
    [
        (lambda m, x, y: fgsm_accuracy(m, x, y, eps=-0.1, preprocess=Recorder()), MixlabValueError, "-0.1"),
        (lambda m, x, y: noise_accuracy(m, x, y, std=-2.0, preprocess=Recorder()), MixlabValueError, "-2.0"),
        (
            lambda m, x, y: noise_accuracy(m, x, y, std=0.1, preprocess=Recorder(), batch_size=0),
            MixlabValueError,
            "got 0",
        ),
        (
            lambda m, x, y: fgsm_accuracy(m, x, y[:4], eps=0.1, preprocess=Recorder()),
            MixlabValueError,
            "6 inputs and 4 labels",
        ),
        (
            lambda m, x, y: fgsm_accuracy(m, x, y.float(), eps=0.1, preprocess=Recorder()),
            MixlabValueError,
            "torch.float32",
        ),
        (lambda m, x, y: fgsm_accuracy(m, x, y + 3, eps=0.1, preprocess=Recorder()), MixlabValueError, "got 5"),
        (lambda m, x, y: noise_accuracy(m, x, y - 1, std=0.1, preprocess=Recorder()), MixlabValueError, "-1"),
        (lambda m, x, y: predict_logits(m, x[:0], preprocess=Recorder()), MixlabValueError, r"\(0, 1, 4, 4\)"),
        (lambda m, x, y: predict_logits(m, x, preprocess="normalise"), MixlabTypeError, "str"),
        (lambda m, x, y: predict_logits(lambda b: b, x, preprocess=Recorder()), MixlabTypeError, "function"),
    ],
)
def test_bad_arguments_are_refused_naming_what_was_seen(call, error, seen):
    with pytest.raises(error, match=seen):
        call(ModeSpy(16, 3), images(), torch.tensor([0, 1, 2, 0, 1, 2]))
