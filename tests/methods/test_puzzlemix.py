"""PuzzleMix: contract, the energy, the mask solver against brute force, block transport, training, errors."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
import torch
from mixer_checks import assert_trains, check_contract, digits, own_loop, small_cnn

from mixlab.errors import MixlabTypeError, MixlabValueError
from mixlab.methods.context import MixContext, MixerNeeds
from mixlab.methods.puzzle import (
    BoundaryCosts,
    PuzzleMix,
    block_grid,
    block_permutation_pixels,
    block_saliency,
    boundary_costs,
    puzzle_energy,
    solve_puzzle_mask,
    transport_blocks,
)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """The tensors here are small: on a shared 2-core machine thread hand-offs cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@functools.cache
def _warm_weights() -> dict[str, torch.Tensor]:
    """``small_cnn`` after 20 plain SGD steps on digits, so that its saliency is informative."""
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


# ------------------------------------------------------------------ contract


def test_needs_only_the_saliency() -> None:
    assert PuzzleMix().needs == MixerNeeds(saliency=True)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"transport": False},
        {"blocks": (3, 5), "transport_radius": 2},  # 16 is not divisible by 3 or 5
        {"lam_mode": "sample", "p": 0.7},
        {"solver": "exact", "blocks": (4,)},
        {"solver": "icm", "blocks": (8,), "gamma": 0.0},
    ],
)
def test_contract_and_exact_lam(options: dict) -> None:
    """Shapes, determinism, untouched inputs and model, and ``lam`` equal to the mask's mean (``check_contract``)."""
    x, y = digits(48)
    mixer = PuzzleMix(**options)
    mb = check_contract(mixer, x, y, _warm_cnn(), lam_is_mask_mean=True)
    assert mb.mask is not None and mb.mask.shape == (48, 1, 16, 16)
    assert bool(((mb.mask == 0) | (mb.mask == 1)).all()), "the mask is binary"


def test_mask_is_the_block_mask_upsampled() -> None:
    """The pixel mask is the block mask, nearest-upsampled; it matches ``F.interpolate(mode="nearest")``."""
    x, y = digits(32)
    net = _warm_cnn()
    mixer = PuzzleMix(blocks=(3,))
    context = MixContext(mixer, net)(x, y)
    params = mixer.sample(x, y, _generator(1), context=context)
    keep = params.extra["keep"].float().unsqueeze(1)
    expected = torch.nn.functional.interpolate(keep, size=(16, 16), mode="nearest")
    assert torch.equal(params.weight, expected)
    assert torch.equal(params.lam, params.weight.flatten(1).double().mean(1).float())


def test_mixed_pixels_come_from_the_two_sources() -> None:
    """Where the mask is 1 the pixels are ``x_i``'s (moved, never repeated), elsewhere the partner's."""
    n, size = 16, 16
    # every pixel of every image holds a distinct value: sample * 1000 + pixel
    x = (torch.arange(n).view(n, 1, 1, 1) * 1000 + torch.arange(size * size).view(1, 1, size, size)).float()
    y = torch.arange(n) % 10
    saliency = torch.rand(n, size, size, generator=_generator(2)) ** 4
    mixer = PuzzleMix(blocks=(4,), transport_weight=0.05, gamma=0.0)  # γ off: these pixel values are not an image
    mb = mixer(x, y, _generator(3), context={"saliency": saliency})
    source_sample, source_pixel = (mb.inputs[:, 0] // 1000).long(), (mb.inputs[:, 0] % 1000).long()
    kept = mb.mask[:, 0].bool()
    assert torch.equal(source_sample[kept], torch.arange(n).view(n, 1, 1).expand(n, size, size)[kept])
    assert torch.equal(source_sample[~kept], mb.perm.view(n, 1, 1).expand(n, size, size)[~kept])
    for i in range(n):  # no pixel is used twice (a loop over a few samples: a test, not the hot path)
        for part in (kept[i], ~kept[i]):
            assert source_pixel[i][part].unique().numel() == int(part.sum())
    moved = (source_pixel != torch.arange(size * size).view(1, size, size)).any()
    assert bool(moved), "with a low transport cost some block should move"


def test_unmixed_samples_are_left_as_they_are() -> None:
    """In sample mode with ``p < 1`` samples drawn unmixed keep their own image and ``lam == 1``."""
    x, y = digits(64)
    mixer = PuzzleMix(lam_mode="sample", p=0.5)
    mb = mixer(x, y, _generator(4), context=MixContext(mixer, _warm_cnn())(x, y))
    whole = mb.lam == 1.0
    assert 0 < int(whole.sum()) < 64
    assert torch.equal(mb.inputs[whole], x[whole])


def test_mask_mean_follows_the_drawn_ratio() -> None:
    """With the default weights the share of ``x_i`` follows λ and most samples really mix."""
    x, y = digits(128)
    context = MixContext(PuzzleMix(), _warm_cnn())(x, y)
    for lam in (0.2, 0.5, 0.8):
        mixer = PuzzleMix(lam=lam)
        shares = torch.cat([mixer(x, y, _generator(seed), context=context).lam for seed in range(3)])
        assert abs(float(shares.mean()) - lam) < 0.1, (lam, float(shares.mean()))
        assert float(((shares == 0) | (shares == 1)).float().mean()) < 0.35


def test_salient_halves_are_kept() -> None:
    """``x_i`` salient on the left, its partner on the right: the mask takes the left from ``x_i``."""
    n, size = 8, 16
    saliency = torch.zeros(n, size, size)
    saliency[:, :, : size // 2] = 1.0
    perm_saliency = torch.zeros(n, size, size)
    perm_saliency[:, :, size // 2 :] = 1.0
    grid = block_grid(size, size, 4, CPU)
    sal_a, sal_b = block_saliency(saliency, grid), block_saliency(perm_saliency, grid)
    keep = solve_puzzle_mask(sal_a, sal_b, 0.5, beta=1.2, eta=0.2)
    assert bool(keep[:, :, :2].all()) and not bool(keep[:, :, 2:].any())


# ------------------------------------------------------------------ the energy


def test_energy_terms() -> None:
    """Unary = minus the kept saliency; a straight cut costs ``beta / 64``; the prior follows λ."""
    k = 4
    sa = torch.rand(1, k, k, generator=_generator(5))
    sb = torch.rand(1, k, k, generator=_generator(6))
    left = torch.zeros(1, k, k)
    left[..., : k // 2] = 1
    kept = (left * sa + (1 - left) * sb).sum()
    torch.testing.assert_close(puzzle_energy(left, sa, sb, 0.5, beta=0.0, eta=0.0), -kept.view(1))
    cut = puzzle_energy(left, sa, sb, 0.5, beta=1.6, eta=0.0) - puzzle_energy(left, sa, sb, 0.5, beta=0.0, eta=0.0)
    torch.testing.assert_close(cut, torch.tensor([0.025]))
    ones, zeros = torch.ones(1, k, k), torch.zeros(1, k, k)
    zero_s = torch.zeros(1, k, k)
    assert puzzle_energy(ones, zero_s, zero_s, 0.8, beta=1.0, eta=1.0) < puzzle_energy(
        zeros, zero_s, zero_s, 0.8, beta=1.0, eta=1.0
    )


def test_boundary_costs_compare_the_pixels_across_each_edge() -> None:
    """``φ(u, v)`` is the mean |difference| between the last line of one block and the first of the next."""
    x = torch.rand(2, 3, 12, 12, generator=_generator(7))
    perm = torch.tensor([1, 0])
    grid = block_grid(12, 12, 3, CPU)
    costs = boundary_costs(x, perm, grid)
    assert costs.right.shape == (2, 2, 2, 3, 2) and costs.down.shape == (2, 2, 2, 2, 3)
    # right edge between block columns 0 and 1 in block row 2 of sample 0, x_i (u=1) then partner (v=0)
    expected = (x[0, :, 8:12, 3] - x[1, :, 8:12, 4]).abs().mean()
    torch.testing.assert_close(costs.right[0, 1, 0, 2, 0], expected)
    expected = (x[1, :, 3, 4:8] - x[0, :, 4, 4:8]).abs().mean()  # down edge, partner (u=0) over x_i (v=1)
    torch.testing.assert_close(costs.down[0, 0, 1, 0, 1], expected)


# ------------------------------------------------------------------ the solver against brute force


def _random_instances(count: int, k: int, seed: int) -> tuple:
    """Peaked random saliencies, random local-statistics costs, λ in (0.05, 0.95), β in [0, 4), γ in [0, 2), η in [0, 1)."""
    g = _generator(seed)
    sa = torch.rand(count, k, k, generator=g) ** 3
    sb = torch.rand(count, k, k, generator=g) ** 3
    sa, sb = sa / sa.sum((1, 2), keepdim=True), sb / sb.sum((1, 2), keepdim=True)
    lam = 0.05 + 0.9 * torch.rand(count, generator=g)
    boundary = BoundaryCosts(
        torch.rand(count, 2, 2, k, k - 1, generator=g), torch.rand(count, 2, 2, k - 1, k, generator=g)
    )
    weights = {"beta": 4.0 * float(torch.rand(1, generator=g)), "gamma": 2.0 * float(torch.rand(1, generator=g))}
    weights["eta"] = float(torch.rand(1, generator=g))
    return sa, sb, lam, boundary, weights


@functools.cache
def _brute_force(k: int, instances: int, seed: int) -> tuple[list[tuple], torch.Tensor, torch.Tensor]:
    """Instances in batches of 10 (one β, γ, η per batch) and their lowest and highest energy over all masks."""
    codes = torch.arange(2 ** (k * k))
    every_mask = ((codes[:, None] >> torch.arange(k * k)) & 1).view(-1, 1, k, k).float()
    batches, lows, highs = [], [], []
    for start in range(0, instances, 10):
        sa, sb, lam, boundary, weights = _random_instances(min(10, instances - start), k, seed + start)
        energies = puzzle_energy(every_mask, sa, sb, lam, boundary=boundary, **weights)  # (2^(k*k), batch)
        batches.append((sa, sb, lam, boundary, weights))
        lows.append(energies.min(0).values)
        highs.append(energies.max(0).values)
    return batches, torch.cat(lows), torch.cat(highs)


def _relative_gaps(k: int, method: str | None, instances: int, seed: int) -> torch.Tensor:
    """``(E(solution) - E_min) / (E_max - E_min)`` per instance, extremes over all ``2^(k*k)`` masks.

    With ``method=None`` the "solution" is a random mask (to show the criterion can fail).
    """
    batches, low, high = _brute_force(k, instances, seed)
    found = []
    for sa, sb, lam, boundary, weights in batches:
        if method is None:
            solution = torch.rand(sa.shape, generator=_generator(seed)) < 0.5
        else:
            solution = solve_puzzle_mask(sa, sb, lam, boundary=boundary, method=method, **weights)
        found.append(puzzle_energy(solution, sa, sb, lam, boundary=boundary, **weights))
    return (torch.cat(found) - low) / (high - low)


@pytest.mark.parametrize("method", ["auto", "icm"])
def test_solver_is_near_optimal_against_brute_force(method: str) -> None:
    """On 180 random 3x3 and 30 random 4x4 instances the solver's energy is within 5% of the optimum.

    "Within 5%" is relative to the energy range of the instance:
    ``E(solver) - E_min <= 0.05 * (E_max - E_min)``, with both extremes found by
    enumerating all ``2^(k*k)`` masks; it must hold on at least 95% of the
    instances. ``"auto"`` is the exact row DP on these grids (expected: every
    instance at the optimum); ``"icm"`` the coarse-to-fine local search used on
    larger grids. Random masks fail the criterion on most instances.
    """
    gaps = torch.cat([_relative_gaps(3, method, 180, seed=10), _relative_gaps(4, method, 30, seed=20)])
    assert gaps.numel() == 210 and bool((gaps >= -1e-6).all())
    assert float((gaps <= 0.05).float().mean()) >= 0.95, gaps.sort().values[-20:]
    if method == "auto":
        assert float(gaps.max()) <= 1e-5, "the row DP is exact"
    random_gaps = _relative_gaps(3, None, 180, seed=10)
    assert float((random_gaps <= 0.05).float().mean()) < 0.5, "the criterion must be able to fail"


def test_icm_on_larger_grids_is_close_to_the_exact_solver() -> None:
    """On 8x8 grids the coarse-to-fine search loses little against the exact row DP (256 row states)."""
    sa, sb, lam, boundary, _ = _random_instances(64, 8, seed=30)
    weights = {"beta": 1.2, "gamma": 0.5, "eta": 0.2}
    exact = solve_puzzle_mask(sa, sb, lam, boundary=boundary, method="exact", **weights)
    approx = solve_puzzle_mask(sa, sb, lam, boundary=boundary, method="icm", **weights)
    e_exact = puzzle_energy(exact, sa, sb, lam, boundary=boundary, **weights)
    e_approx = puzzle_energy(approx, sa, sb, lam, boundary=boundary, **weights)
    uniform = torch.minimum(
        puzzle_energy(torch.ones_like(exact), sa, sb, lam, boundary=boundary, **weights),
        puzzle_energy(torch.zeros_like(exact), sa, sb, lam, boundary=boundary, **weights),
    )
    assert bool((e_approx >= e_exact - 1e-6).all())
    # the gain over the better uniform mask reaches at least 90% of the optimum's on average
    assert float(((uniform - e_approx) / (uniform - e_exact).clamp_min(1e-9)).mean()) >= 0.9


# ------------------------------------------------------------------ transport


def _transport_instances(count: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = _generator(seed)
    saliency = torch.rand(count, k, k, generator=g) ** 4
    keep = torch.rand(count, k, k, generator=g) < 0.5
    return saliency, keep


@pytest.mark.parametrize(("size", "k", "radius"), [(16, 4, 1), (16, 8, 2), (28, 8, 2), (30, 7, 2)])
def test_transport_is_a_shape_preserving_permutation_that_keeps_more_saliency(size: int, k: int, radius: int) -> None:
    """Block moves form a permutation (of swaps) between blocks of one shape, and the kept saliency never drops."""
    saliency, keep = _transport_instances(200, k, seed=k + size)
    grid = block_grid(size, size, k, CPU)
    moves = transport_blocks(saliency, keep, weight=0.3, radius=radius, shape_id=grid.shape_id)
    index = torch.arange(k * k).expand_as(moves)
    assert torch.equal(moves.sort(dim=1).values, index), "a permutation of the blocks"
    assert torch.equal(moves.gather(1, moves), index), "made of swaps"
    shapes = grid.shape_id.flatten()
    assert torch.equal(shapes[moves], shapes.expand_as(moves)), "blocks move only into slots of their shape"
    flat_s, flat_keep = saliency.flatten(1), keep.flatten(1).float()
    before = (flat_s * flat_keep).sum(1)
    after = (flat_s.gather(1, moves) * flat_keep).sum(1)
    assert bool((after >= before - 1e-6).all())
    assert bool((after > before + 1e-6).any()), "some sample should gain"
    pixels = block_permutation_pixels(moves, grid)
    assert torch.equal(pixels.sort(dim=1).values, torch.arange(size * size).expand_as(pixels)), (
        "pixels are moved, not made"
    )


def test_transport_lowers_the_transport_objective() -> None:
    """``ξ * distance moved - kept saliency`` is never above that of leaving every block in place."""
    k, weight = 6, 0.5
    saliency, keep = _transport_instances(200, k, seed=40)
    moves = transport_blocks(saliency, keep, weight=weight, radius=2)
    s = saliency.flatten(1)
    s = s * (k * k) / s.sum(1, keepdim=True)
    rows, cols = torch.arange(k * k) // k, torch.arange(k * k) % k
    distance = (rows[moves] - rows).abs() + (cols[moves] - cols).abs()
    objective = weight * distance.sum(1) - (s.gather(1, moves) * keep.flatten(1)).sum(1)
    identity = -(s * keep.flatten(1)).sum(1)
    assert bool((objective <= identity + 1e-5).all())


def test_no_transport_when_no_block_can_move() -> None:
    """28x28 with 8 blocks alternates 4- and 3-pixel blocks: radius-1 swaps are impossible, nothing moves."""
    saliency, keep = _transport_instances(10, 8, seed=50)
    grid = block_grid(28, 28, 8, CPU)
    moves = transport_blocks(saliency, keep, weight=0.0, radius=1, shape_id=grid.shape_id)
    assert torch.equal(moves, torch.arange(64).expand(10, -1))


# ------------------------------------------------------------------ training


def test_trains_in_a_plain_loop() -> None:
    x, y = digits(512)
    result = own_loop(PuzzleMix(), small_cnn(), x, y, steps=40)
    assert_trains(result)


# ------------------------------------------------------------------ errors


def test_missing_saliency_says_what_to_pass() -> None:
    x, y = digits(8)
    with pytest.raises(MixlabValueError, match=r"MixContext\(mixer, model\)\(x, y\)"):
        PuzzleMix()(x, y)
    with pytest.raises(MixlabValueError, match="saliency"):
        PuzzleMix()(x, y, context={"model": small_cnn()})


def test_bad_saliency_and_inputs_are_refused() -> None:
    x, y = digits(8)
    with pytest.raises(MixlabValueError, match=r"shape \(N, H, W\)"):
        PuzzleMix()(x, y, context={"saliency": torch.rand(8, 8, 8)})
    with pytest.raises(MixlabTypeError, match="tensor"):
        PuzzleMix()(x, y, context={"saliency": [0.0]})
    with pytest.raises(MixlabValueError, match="2-D images"):
        PuzzleMix()(x[:, :, 0], y, context={"saliency": torch.rand(8, 16)})
    with pytest.raises(MixlabValueError, match="at least 32x32"):
        PuzzleMix(blocks=(32,))(x, y, context={"saliency": torch.rand(8, 16, 16)})


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"beta": -0.1}, MixlabValueError, "beta"),
        ({"gamma": -1.0}, MixlabValueError, "gamma"),
        ({"eta": float("nan")}, MixlabValueError, "eta"),
        ({"beta": float("inf")}, MixlabValueError, "beta"),
        ({"transport_weight": -0.5}, MixlabValueError, "transport_weight"),
        ({"blocks": (1, 4)}, MixlabValueError, "blocks"),
        ({"blocks": (4, 65)}, MixlabValueError, "blocks"),
        ({"blocks": ()}, MixlabValueError, "blocks"),
        ({"blocks": "48"}, MixlabValueError, "blocks"),
        ({"blocks": (2.5,)}, MixlabTypeError, "blocks"),
        ({"transport": "yes"}, MixlabTypeError, "transport"),
        ({"transport_radius": 0}, MixlabValueError, "transport_radius"),
        ({"transport_rounds": 0}, MixlabValueError, "transport_rounds"),
        ({"solver": "graphcut"}, MixlabValueError, "solver"),
        ({"solver": "exact", "blocks": (16,)}, MixlabValueError, "exact"),
        ({"model": "cnn"}, MixlabTypeError, "model"),
    ],
)
def test_bad_options_are_refused_at_construction(options: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        PuzzleMix(**options)


def test_exact_solver_refuses_large_grids() -> None:
    sa = torch.full((1, 11, 11), 1.0 / 121)
    with pytest.raises(MixlabValueError, match="exact"):
        solve_puzzle_mask(sa, sa, 0.5, beta=1.0, eta=0.0, method="exact")
