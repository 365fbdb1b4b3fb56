"""The mixer context's computations: the saliency pass."""

from __future__ import annotations

import torch

from mixlab.methods.context import input_saliency, saliency_and_clean_loss


def test_input_saliency_runs_in_eval_mode_and_restores_the_mode():
    seen = []
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(4, 3))
    net[1].register_forward_hook(lambda module, args, out: seen.append(module.training))
    x = torch.ones(2, 1, 2, 2)
    first, second = input_saliency(net, x, torch.tensor([0, 1])), input_saliency(net, x, torch.tensor([0, 1]))
    assert seen == [False, False] and net.training
    assert torch.equal(first, second)  # no dropout: the same saliency twice


def test_the_clean_loss_pass_runs_in_train_mode_and_keeps_its_graph():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3))
    x = torch.randn(6, 1, 2, 2) + 3.0
    saliency, loss = saliency_and_clean_loss(net, x, torch.tensor([0, 1, 2, 0, 1, 2]))
    assert saliency.shape == (6, 2, 2)
    assert float(net[1].running_mean.abs().sum()) > 0  # BatchNorm statistics updated as in a training step
    loss.backward()
    assert net[2].weight.grad is not None and torch.isfinite(net[2].weight.grad).all()


def test_the_clean_loss_stand_in_has_the_clean_loss_value_and_gradient():
    # One backward serves the saliency and the clean term: its gradient must be the clean loss's own.
    torch.manual_seed(0)
    make = lambda: torch.nn.Sequential(  # noqa: E731
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64, 3)
    )
    net = make()
    reference = make()
    reference.load_state_dict(net.state_dict())
    x, y = torch.randn(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    _, stand_in = saliency_and_clean_loss(net, x, y)
    direct = torch.nn.functional.cross_entropy(reference(x), y)
    torch.testing.assert_close(stand_in.detach(), direct.detach())
    (0.5 * stand_in).backward()
    (0.5 * direct).backward()
    for ours, theirs in zip(net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad)
