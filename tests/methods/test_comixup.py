"""Co-Mixup: contract, many-source outputs per partition, diversity, half blocks, clean loss, training, errors.

The formulas themselves (energy, modular updates, brute-force minimiser, label
weights, clean-loss scale) are pinned in ``tests/fidelity/test_comixup_fidelity.py``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from mixer_checks import assert_mixer_contract, digits, own_loop, small_cnn
from mixlab.errors import MixlabTypeError, MixlabValueError
from mixlab.losses import bce_softmax
from mixlab.methods.comixup import CoMixup, CoMixupProblem, solve_comixup
from mixlab.methods.context import MixContext

pytestmark = pytest.mark.usefixtures("one_thread")


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@functools.cache
def _warm_weights() -> dict[str, torch.Tensor]:
    """``small_cnn`` after 20 plain SGD steps on digits (an untrained network's saliency is nearly flat)."""
    x, y = digits(512)
    net = small_cnn()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    generator = _generator(100)
    for _ in range(20):
        index = torch.randint(0, 512, (64,), generator=generator)
        loss = torch.nn.functional.cross_entropy(net(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _warm_cnn() -> torch.nn.Module:
    net = small_cnn()
    net.load_state_dict(_warm_weights())
    return net


def _constant_images(n: int, size: int = 8) -> torch.Tensor:
    """Image ``i`` is the constant ``i`` in channel 0 and ``i^2`` in channel 1: every pixel tells its inputs."""
    index = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    return torch.cat([index, index**2], 1).expand(n, 2, size, size).clone()


def _pixel_sources(mb, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For :func:`_constant_images`: each output pixel's two inputs ``a <= b`` (equal for a whole block).

    A pixel is ``(a + b) / 2`` and ``(a^2 + b^2) / 2``, so ``|a - b| = sqrt(2 (a^2 + b^2) - (a + b)^2)``.
    """
    total, squares = 2.0 * mb.inputs[:, 0].flatten(1).double(), 2.0 * mb.inputs[:, 1].flatten(1).double()
    gap = (2.0 * squares - total**2).clamp_min(0.0).sqrt()
    low, high = (total - gap) / 2.0, (total + gap) / 2.0
    assert torch.allclose(low, low.round(), atol=1e-6) and torch.allclose(high, high.round(), atol=1e-6), (
        "a pixel is neither one input nor the mean of two"
    )
    return low.round().long(), high.round().long()


# ------------------------------------------------------------------ contract and sources


def test_contract_on_digits_with_many_sources_per_output() -> None:
    x, y = digits(48)
    net = _warm_cnn()
    mixer = CoMixup(partition=16)
    assert mixer.needs.saliency and mixer.needs.clean_loss and not mixer.needs.features
    mb = assert_mixer_contract(mixer, x, y, net, num_classes=10, lam_is_mask_mean=True)
    assert mb.num_sources == 16 and mb.mask.shape == (48, 1, 16, 16)
    # Sources stay inside each output's partition of 16 consecutive inputs; the first is the output's own.
    assert torch.equal(mb.sources[:, 0], torch.arange(48))
    assert torch.equal(mb.sources // 16, (torch.arange(48) // 16).unsqueeze(1).expand(48, 16))
    used = (mb.weights > 0).sum(1).float()
    assert float(used.mean()) > 2.0, used  # more than two inputs per output on average
    assert float((used >= 3).float().mean()) > 0.3, used
    # The label keeps the clean loss of the saliency pass for loss_terms.
    assert mb.aux["clean_loss"].requires_grad


def test_outputs_are_made_of_their_sources_blocks_with_pixel_share_labels() -> None:
    n, grid = 45, 4
    x, y = _constant_images(n), torch.arange(n) % 10
    saliency = torch.rand(n, 8, 8, generator=_generator(1)) ** 4
    mixer = CoMixup(grid=grid, partition=20, clean_weight=0.0)
    mb = mixer(x, y, _generator(2), context={"saliency": saliency})
    low, high = _pixel_sources(mb, x)
    part = torch.arange(n) // 20
    assert torch.equal(low // 20, part.unsqueeze(1).expand_as(low)) and torch.equal(high // 20, low // 20)
    # The weight of each input is its share of the output's pixels (a half-block pixel counts 1/2 to each).
    share = (
        torch.zeros(n, n)
        .scatter_add_(1, low, torch.full(low.shape, 0.5))
        .scatter_add_(1, high, torch.full(low.shape, 0.5))
    )
    share /= low.shape[1]
    from_sources = torch.zeros(n, n).scatter_add_(1, mb.sources, mb.weights)
    torch.testing.assert_close(from_sources, share)
    # Blocks are 2 x 2 pixels: every pixel of a block has the same sources.
    blocks = mb.inputs[:, 0].unfold(1, 2, 2).unfold(2, 2, 2).flatten(3)
    assert bool((blocks == blocks[..., :1]).all())
    # The last partition has 5 inputs: its rows list 20 sources, the 15 beyond its inputs with weight 0.
    assert bool((mb.weights[40:, 5:] == 0).all()) and bool((mb.sources[40:] >= 40).all())


def test_without_smoothness_diversity_or_prior_every_block_takes_the_most_salient_input() -> None:
    n = 6
    x, y = _constant_images(n), torch.arange(n)
    saliency = torch.rand(n, 8, 8, generator=_generator(3))
    mixer = CoMixup(grid=4, partition=n, beta=0.0, gamma=0.0, eta=0.0, half_blocks=False, clean_weight=0.0)
    mb = mixer(x, y, _generator(4), context={"saliency": saliency})
    block = saliency.view(n, 4, 2, 4, 2).sum((2, 4))
    block = block / block.sum((1, 2), keepdim=True)
    expected = block.argmax(0).float()  # (4, 4), the same for every output
    assert torch.equal(mb.inputs[:, 0, ::2, ::2], expected.expand(n, 4, 4))


def test_diversity_spreads_the_use_of_each_input() -> None:
    """With gamma = 0 every output is the same collage of salient blocks; the diversity term spreads the inputs."""
    n = 20
    x, y = _constant_images(n), torch.arange(n) % 10
    saliency = torch.rand(n, 8, 8, generator=_generator(5)) ** 6

    def mix(gamma: float) -> tuple[torch.Tensor, int]:
        mixer = CoMixup(grid=4, partition=n, gamma=gamma, eta=0.0, half_blocks=False, clean_weight=0.0)
        mb = mixer(x, y, _generator(6), context={"saliency": saliency})
        blocks_used = torch.zeros(n, n).scatter_add_(1, mb.sources, mb.weights).sum(0) * 16  # over all outputs
        return blocks_used, len({tuple(row.flatten().tolist()) for row in mb.inputs})

    (without, same), (spread, distinct) = mix(0.0), mix(1.0)
    assert same == 1 and float(without.max()) >= 2 * n  # one collage, its inputs used by every output
    assert distinct == n and int((spread > 0).sum()) > int((without > 0).sum())
    assert float(spread.max()) < 1.5 * 16  # no input much beyond one image's worth in the whole partition


def test_half_blocks_blend_two_inputs_and_can_be_turned_off() -> None:
    n = 20
    x, y = _constant_images(n), torch.arange(n) % 10
    saliency = torch.rand(n, 8, 8, generator=_generator(7)) ** 3
    with_halves = CoMixup(grid=4, partition=n, clean_weight=0.0)(x, y, _generator(8), context={"saliency": saliency})
    low, high = _pixel_sources(with_halves, x)
    assert bool((low != high).any())  # some blocks are 50/50 blends
    assert bool(((with_halves.mask == 0) | (with_halves.mask == 0.5) | (with_halves.mask == 1)).all())
    whole = CoMixup(grid=4, partition=n, half_blocks=False, clean_weight=0.0)
    low, high = _pixel_sources(whole(x, y, _generator(8), context={"saliency": saliency}), x)
    assert torch.equal(low, high)


def test_two_source_partitions_make_an_ordinary_two_source_batch() -> None:
    x, y = _constant_images(8), torch.arange(8)
    mb = CoMixup(partition=2, grid=2, clean_weight=0.0)(x, y, _generator(9), context={"saliency": torch.rand(8, 8, 8)})
    assert mb.num_sources == 2 and torch.equal(mb.perm, torch.arange(8) ^ 1)
    torch.testing.assert_close(mb.weights, torch.stack([mb.lam, 1 - mb.lam], 1))


@pytest.mark.parametrize("shape", [(4, 3, 12), (4, 1, 6, 6, 6), (4, 2, 10, 7)])
def test_one_two_and_three_spatial_dims(shape: tuple[int, ...]) -> None:
    x, y = torch.randn(shape), torch.arange(4)
    mb = CoMixup(grid=3, clean_weight=0.0)(x, y, _generator(), context={"saliency": torch.rand(4, *shape[2:])})
    assert mb.inputs.shape == x.shape and mb.mask.shape == (4, 1, *shape[2:])
    torch.testing.assert_close(mb.lam, mb.mask.flatten(1).double().mean(1).float())


def test_soft_threshold_and_solver_options_run() -> None:
    x, y = _constant_images(10), torch.arange(10)
    saliency = torch.rand(10, 8, 8, generator=_generator(10))
    for options in ({"threshold": "soft"}, {"resolve": False, "sweeps": 1}, {"omega": 0.5}):
        mb = CoMixup(partition=5, clean_weight=0.0, **options)(x, y, _generator(11), context={"saliency": saliency})
        _pixel_sources(mb, x)


def test_p_zero_and_a_single_sample_leave_the_batch_unmixed() -> None:
    x, y = torch.randn(5, 1, 8, 8), torch.arange(5)
    mb = CoMixup(p=0.0)(x, y, _generator(), context={"saliency": torch.rand(5, 8, 8)})
    assert torch.equal(mb.inputs, x) and torch.equal(mb.lam, torch.ones(5))
    one = CoMixup()(x[:1], y[:1], _generator(), context={"saliency": torch.rand(1, 8, 8)})
    assert torch.equal(one.inputs, x[:1])


def test_inplace_writes_the_mix_into_x() -> None:
    x, y = torch.randn(6, 1, 8, 8, generator=_generator(12)), torch.arange(6)
    saliency = torch.rand(6, 8, 8, generator=_generator(13))
    reference = CoMixup(clean_weight=0.0)(x.clone(), y, _generator(14), context={"saliency": saliency})
    target = x.clone()
    mb = CoMixup(clean_weight=0.0, inplace=True)(target, y, _generator(14), context={"saliency": saliency})
    assert torch.equal(mb.inputs, reference.inputs) and torch.equal(target, reference.inputs)


def test_mixing_leaves_the_process_thread_count_alone() -> None:
    torch.set_num_threads(2)  # the module fixture restores the caller's count afterwards
    CoMixup()(torch.randn(4, 1, 8, 8), torch.arange(4), _generator(), context={"saliency": torch.rand(4, 8, 8)})
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)


def test_solver_loop_count_does_not_grow_with_the_batch() -> None:
    """The solver loops over a partition's output slots (m * sweeps), vectorised over partitions."""
    calls = []
    import mixlab.methods.comixup as module

    original = module._best_response

    def counting(*args: object) -> torch.Tensor:
        calls.append(1)
        return original(*args)

    for n in (20, 200):
        calls.clear()
        problem = CoMixupProblem.build(torch.rand(n, 16), (4, 4), partition=20)
        module._best_response = counting
        try:
            solve_comixup(problem, torch.zeros(problem.unary.shape, dtype=torch.long), sweeps=2)
        finally:
            module._best_response = original
        assert len(calls) == 20 * 2


# ------------------------------------------------------------------ the clean loss and training


def test_clean_loss_term_is_kept_with_its_graph_and_scaled_by_two_over_classes() -> None:
    x, y = digits(16)
    net = _warm_cnn()
    mixer = CoMixup(partition=8, clean_weight=0.5)
    context = MixContext(mixer, net)(x, y)
    mb = mixer(x, y, _generator(15), context=context)
    logits = mb.forward(net)
    terms = mixer.loss_terms(mb, logits)
    assert set(terms) == {"clean"} and terms["clean"].requires_grad
    torch.testing.assert_close(terms["clean"], 0.5 * 2 / 10 * context["clean_loss"])
    assert CoMixup(clean_weight=0.0).loss_terms(mb, logits) == {}
    assert not CoMixup(clean_weight=0.0).needs.clean_loss


def test_trains_in_own_loop() -> None:
    """From scratch, 30 steps of Co-Mixup with its clean-loss term lower the clean loss on the data."""
    x, y = digits(512)
    net = small_cnn()
    with torch.no_grad():
        before = float(torch.nn.functional.cross_entropy(net(x), y))
    result = own_loop(CoMixup(), net, x, y, steps=30, batch=64, lr=0.05)
    with torch.no_grad():
        after = float(torch.nn.functional.cross_entropy(net(x), y))
    assert np.isfinite(result["total"]).all() and after < 0.6 * before, (before, after)
    assert all(total > task for total, task in zip(result["total"], result["task"], strict=True))  # the clean term


def test_bce_softmax_scores_a_many_source_batch() -> None:
    x, y = digits(40)
    net = _warm_cnn()
    mixer = CoMixup()
    mb = mixer(x, y, _generator(16), context=MixContext(mixer, net)(x, y))
    logits = mb.forward(net)
    expected = torch.nn.functional.binary_cross_entropy(logits.softmax(1), mb.soft_targets(10))
    torch.testing.assert_close(bce_softmax(logits, mb), expected)


# ------------------------------------------------------------------ errors


def test_missing_or_wrong_saliency_is_a_clear_error() -> None:
    x, y = digits(8)
    mixer = CoMixup()
    with pytest.raises(MixlabValueError, match="MixContext"):
        mixer(x, y)
    with pytest.raises(MixlabValueError, match="saliency"):
        mixer(x, y, context={"model": small_cnn()})
    with pytest.raises(MixlabValueError, match=r"\(8, 16, 16\)"):
        mixer(x, y, context={"saliency": torch.rand(8, 8, 8)})
    with pytest.raises(MixlabValueError, match="one block count per spatial dim"):
        CoMixup(grid=(4, 4, 4))(x, y, context={"saliency": torch.rand(8, 16, 16)})


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"grid": 0}, MixlabValueError),
        ({"grid": (4, 0)}, MixlabValueError),
        ({"grid": ()}, MixlabValueError),
        ({"grid": 2.5}, MixlabTypeError),
        ({"partition": 1}, MixlabValueError),
        ({"partition": 2.0}, MixlabTypeError),
        ({"beta": -0.1}, MixlabValueError),
        ({"gamma": float("inf")}, MixlabValueError),
        ({"eta": float("nan")}, MixlabValueError),
        ({"tau": -1.0}, MixlabValueError),
        ({"omega": 1.5}, MixlabValueError),
        ({"threshold": "step"}, MixlabValueError),
        ({"half_blocks": "yes"}, MixlabTypeError),
        ({"resolve": 1}, MixlabTypeError),
        ({"sweeps": 0}, MixlabValueError),
        ({"sweeps": 2.0}, MixlabTypeError),
        ({"clean_weight": -1.0}, MixlabValueError),
        ({"lam": 0.5}, MixlabValueError),
        ({"lam_range": (0.2, 0.8)}, MixlabValueError),
        ({"lam_mode": "sample"}, MixlabValueError),
        ({"pairing": "same_class"}, MixlabValueError),
        ({"alpha": 0.0}, MixlabValueError),
    ],
)
def test_out_of_range_parameters_are_refused(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error, match=str(next(iter(kwargs)))):
        CoMixup(**kwargs)


def test_unknown_threshold_lists_the_accepted_ones() -> None:
    with pytest.raises(MixlabValueError, match=r"hard.*soft"):
        CoMixup(threshold="step")


def test_solver_refuses_zero_sweeps() -> None:
    problem = CoMixupProblem.build(torch.rand(4, 4), (2, 2), partition=4)
    with pytest.raises(MixlabValueError, match="sweeps"):
        solve_comixup(problem, torch.zeros(1, 4, 4, dtype=torch.long), sweeps=0)


def test_random_starts_differ_but_replay() -> None:
    x, y = _constant_images(20), torch.arange(20) % 10
    saliency = torch.rand(20, 8, 8, generator=_generator(17)) ** 3
    mixer = CoMixup(clean_weight=0.0)
    first = mixer(x, y, _generator(18), context={"saliency": saliency})
    again = mixer(x, y, _generator(18), context={"saliency": saliency})
    other = mixer(x, y, _generator(19), context={"saliency": saliency})
    assert torch.equal(first.inputs, again.inputs)
    assert not torch.equal(first.inputs, other.inputs)
    assert np.isfinite(first.weights.numpy()).all()
