"""PuzzleMix: contract, the mask solver against brute force, transport, the clean loss, training, errors.

The formulas themselves (smoothness scale, three-label costs, local statistics,
the transport algorithm) are computed by hand in ``tests/fidelity/test_puzzlemix_fidelity.py``.
"""

from __future__ import annotations

import functools

import pytest
import torch

from mixer_checks import assert_mixer_contract, assert_trains, digits, own_loop, small_cnn
from mixlab.batch import MixedBatch
from mixlab.errors import MixlabTypeError, MixlabValueError
from mixlab.methods.blocks import block_saliency
from mixlab.methods.context import MixContext, MixerNeeds
from mixlab.methods.puzzle import (
    BoundaryCosts,
    PuzzleMix,
    block_grid,
    cell_pixels,
    mask_energy,
    mask_energy_terms,
    solve_puzzle_mask,
    transport_costs,
    transport_plan,
)

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_needs_the_saliency_and_the_clean_loss_only_when_weighted() -> None:
    assert PuzzleMix().needs == MixerNeeds(saliency=True)
    assert PuzzleMix(clean_weight=1.0).needs == MixerNeeds(saliency=True, clean_loss=True)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"transport": False},
        {"blocks": (3, 5)},  # 16 is not divisible by 3 or 5
        {"lam_mode": "sample", "p": 0.7},
        {"solver": "exact", "blocks": (4,)},
        {"solver": "icm", "blocks": (8,), "gamma": 0.0},
        {"n_labels": 2, "transport_size": None},
        {"clean_weight": 1.0, "blocks": (4,)},
    ],
)
def test_contract_and_exact_lam(options: dict) -> None:
    """Shapes, determinism, untouched inputs and model, and ``lam`` equal to the mask's mean."""
    x, y = digits(48)
    mixer = PuzzleMix(**options)
    mb = assert_mixer_contract(mixer, x, y, _warm_cnn(), lam_is_mask_mean=True, num_classes=10)
    assert mb.mask is not None and mb.mask.shape == (48, 1, 16, 16)
    levels = torch.linspace(0, 1, mixer.n_labels)
    assert bool((mb.mask.unsqueeze(-1) == levels).any(-1).all()), "the mask takes the label values only"


def test_three_labels_give_half_blocks_and_their_blend() -> None:
    """With ``n_labels=3`` some blocks are 1/2, and there the output is the mean of the two (transported) sources."""
    x, y = digits(128)
    mixer = PuzzleMix(lam=0.5, transport=False)
    mb = mixer(x, y, _generator(5), context=MixContext(mixer, _warm_cnn())(x, y))
    half = mb.mask.expand_as(x) == 0.5
    assert bool(half.any())
    torch.testing.assert_close(mb.inputs[half], (0.5 * (x + x[mb.perm]))[half])


def test_mask_is_the_block_mask_upsampled() -> None:
    """The pixel mask is the block mask, nearest-upsampled; it matches ``F.interpolate(mode="nearest")``."""
    x, y = digits(32)
    net = _warm_cnn()
    mixer = PuzzleMix(blocks=(3,))
    context = MixContext(mixer, net)(x, y)
    params = mixer.sample(x, y, _generator(1), context=context)
    blocks = params.extra["block_mask"].unsqueeze(1)
    expected = torch.nn.functional.interpolate(blocks, size=(16, 16), mode="nearest")
    assert torch.equal(params.weight, expected)
    assert torch.equal(params.lam, params.weight.flatten(1).double().mean(1).float())


def test_mixed_pixels_come_from_the_two_sources() -> None:
    """Where the mask is 1 the pixels are ``x_i``'s (moved, never repeated), elsewhere the partner's."""
    n, size = 16, 16
    # every pixel of every image holds a distinct value: sample * 1000 + pixel
    x = (torch.arange(n).view(n, 1, 1, 1) * 1000 + torch.arange(size * size).view(1, 1, size, size)).float()
    y = torch.arange(n) % 10
    saliency = torch.rand(n, size, size, generator=_generator(2)) ** 4
    mixer = PuzzleMix(blocks=(4,), n_labels=2, transport_weight=0.1, gamma=0.0)  # γ off: not an image
    mb = mixer(x, y, _generator(3), context={"saliency": saliency})
    source_sample, source_pixel = (mb.inputs[:, 0] // 1000).long(), (mb.inputs[:, 0] % 1000).long()
    kept = mb.mask[:, 0].bool()
    assert torch.equal(source_sample[kept], torch.arange(n).view(n, 1, 1).expand(n, size, size)[kept])
    assert torch.equal(source_sample[~kept], mb.perm.view(n, 1, 1).expand(n, size, size)[~kept])
    for i in range(n):  # no pixel is used twice (a loop over a few samples: a test, not the hot path)
        for part in (kept[i], ~kept[i]):
            assert source_pixel[i][part].unique().numel() == int(part.sum())
    moved = (source_pixel != torch.arange(size * size).view(1, size, size)).any()
    assert bool(moved), "with a low transport cost some cell should move"


def test_transport_raises_the_saliency_shown() -> None:
    """Moving content into the shown cells never lowers the saliency they show (on these inputs it raises it)."""
    n, size = 32, 16
    saliency = torch.rand(n, size, size, generator=_generator(6)) ** 6
    x = saliency.unsqueeze(1).clone()  # each image is its own saliency map: what is shown can be read off
    y = torch.zeros(n, dtype=torch.long)
    shown = {}
    for transport in (False, True):
        mixer = PuzzleMix(blocks=(4,), n_labels=2, gamma=0.0, transport=transport, transport_weight=0.1)
        mb = mixer(x, y, _generator(7), context={"saliency": saliency})
        shown[transport] = (mb.inputs * mb.mask).sum((1, 2, 3))
    assert bool((shown[True] >= shown[False] - 1e-6).all()) and bool((shown[True] > shown[False] + 1e-6).any())


def test_unmixed_samples_are_left_as_they_are() -> None:
    """In sample mode with ``p < 1`` samples drawn unmixed keep their own image and ``lam == 1``."""
    x, y = digits(64)
    mixer = PuzzleMix(lam_mode="sample", p=0.5)
    mb = mixer(x, y, _generator(4), context=MixContext(mixer, _warm_cnn())(x, y))
    whole = mb.lam == 1.0
    assert 0 < int(whole.sum()) < 64
    assert torch.equal(mb.inputs[whole], x[whole])


def test_the_prior_pulls_the_mask_towards_the_drawn_ratio() -> None:
    """The share of ``x_i`` grows with λ, is symmetric about 1/2 and about 1/2 at λ = 1/2.

    With the authors' weights the binomial prior dominates far from 1/2 (their masks
    are mostly one image at λ = 0.2): the share follows λ's side, not its value.
    """
    x, y = digits(128)
    context = MixContext(PuzzleMix(), _warm_cnn())(x, y)
    shares = {}
    for lam in (0.2, 0.4, 0.5, 0.6, 0.8):
        mixer = PuzzleMix(lam=lam)
        shares[lam] = float(torch.cat([mixer(x, y, _generator(s), context=context).lam for s in range(3)]).mean())
    assert shares[0.2] < shares[0.4] < shares[0.5] < shares[0.6] < shares[0.8], shares
    assert abs(shares[0.5] - 0.5) < 0.1 and abs(shares[0.2] + shares[0.8] - 1.0) < 0.1, shares


def test_block_counts_with_blocks_under_two_pixels_are_skipped() -> None:
    """Blocks (2, 4, 8, 16) on 16x16 images draw among 2, 4 and 8 only (16 would give 1-pixel blocks)."""
    x, y = digits(8, size=16)
    mixer = PuzzleMix()
    drawn = {
        mixer.sample(x, y, _generator(s), context={"saliency": torch.rand(8, 16, 16)}).extra["blocks"]
        for s in range(30)
    }
    assert drawn == {(2, 2), (4, 4), (8, 8)}


def test_salient_halves_are_kept() -> None:
    """``x_i`` salient on the left, its partner on the right: the mask takes the left from ``x_i``."""
    n, size = 8, 16
    saliency = torch.zeros(n, size, size)
    saliency[:, :, : size // 2] = 1.0
    perm_saliency = torch.zeros(n, size, size)
    perm_saliency[:, :, size // 2 :] = 1.0
    sal_a, sal_b = block_saliency(saliency, (4, 4)), block_saliency(perm_saliency, (4, 4))
    for n_labels in (2, 3):
        terms = mask_energy_terms(sal_a, sal_b, 0.5, beta=1.2, eta=0.2, n_labels=n_labels)
        mask = terms.levels[solve_puzzle_mask(terms)]
        assert bool((mask[:, :, :2] == 1).all()) and bool((mask[:, :, 2:] == 0).all())


# ------------------------------------------------------------------ the solver against brute force


def _random_terms(count: int, k: int, n_labels: int, seed: int, beta: float | None = None):
    """Peaked random saliencies, random local-statistics costs, λ in (0.05, 0.95); β, γ, η drawn unless given."""
    g = _generator(seed)
    sa = torch.rand(count, k, k, generator=g) ** 3
    sb = torch.rand(count, k, k, generator=g) ** 3
    sa, sb = sa / sa.sum((1, 2), keepdim=True), sb / sb.sum((1, 2), keepdim=True)
    lam = 0.05 + 0.9 * torch.rand(count, generator=g)
    boundary = BoundaryCosts(
        torch.rand(count, 2, 2, k, k - 1, generator=g), torch.rand(count, 2, 2, k - 1, k, generator=g)
    )
    beta = 16.0 * float(torch.rand(1, generator=g)) if beta is None else beta
    gamma, eta = 2.0 * float(torch.rand(1, generator=g)), float(torch.rand(1, generator=g))
    return mask_energy_terms(sa, sb, lam, beta=beta, gamma=gamma, eta=eta, n_labels=n_labels, boundary=boundary)


@functools.cache
def _brute_force(k: int, n_labels: int, instances: int, seed: int) -> tuple[list, torch.Tensor, torch.Tensor]:
    """Instances in batches of 10 (one β, γ, η per batch) and their lowest and highest energy over all label maps."""
    codes = torch.arange(n_labels ** (k * k))
    powers = n_labels ** torch.arange(k * k)
    every = (torch.div(codes[:, None], powers, rounding_mode="floor") % n_labels).view(-1, 1, k, k)
    batches, lows, highs = [], [], []
    for start in range(0, instances, 10):
        terms = _random_terms(min(10, instances - start), k, n_labels, seed + start)
        energies = mask_energy(every, terms)  # (L^(k*k), batch)
        batches.append(terms)
        lows.append(energies.min(0).values)
        highs.append(energies.max(0).values)
    return batches, torch.cat(lows), torch.cat(highs)


def _relative_gaps(k: int, n_labels: int, method: str | None, instances: int, seed: int) -> torch.Tensor:
    """``(E(solution) - E_min) / (E_max - E_min)`` per instance; ``method=None``: a random label map."""
    batches, low, high = _brute_force(k, n_labels, instances, seed)
    found = []
    for terms in batches:
        if method is None:
            solution = torch.randint(0, n_labels, terms.unary.shape[:3], generator=_generator(seed))
        else:
            solution = solve_puzzle_mask(terms, method)
        found.append(mask_energy(solution, terms))
    return (torch.cat(found) - low) / (high - low)


@pytest.mark.parametrize("method", ["auto", "icm"])
def test_solver_is_near_optimal_against_brute_force(method: str) -> None:
    """On random 3x3 (two and three labels) and 4x4 (two labels) instances the solver is within 2% of the optimum.

    "Within 2%" is relative to the energy range of the instance,
    ``E(solver) - E_min <= 0.02 (E_max - E_min)``, both extremes found by
    enumerating every label map; it must hold on at least 95% of the instances.
    ``"auto"`` is the exact row DP on these grids (every instance at the optimum);
    ``"icm"`` the coarse-to-fine row/column search of larger grids. Random maps fail it.
    """
    gaps = torch.cat(
        [
            _relative_gaps(3, 2, method, 100, seed=10),
            _relative_gaps(3, 3, method, 60, seed=20),
            _relative_gaps(4, 2, method, 30, seed=30),
        ]
    )
    assert bool((gaps >= -1e-6).all())
    assert float((gaps <= 0.02).float().mean()) >= 0.95, gaps.sort().values[-20:]
    if method == "auto":
        assert float(gaps.max()) <= 1e-5, "the row DP is exact"
    random_gaps = _relative_gaps(3, 3, None, 60, seed=20)
    assert float((random_gaps <= 0.02).float().mean()) < 0.2, "the criterion must be able to fail"


@pytest.mark.parametrize(("k", "n_labels"), [(8, 2), (5, 3)])
def test_icm_on_larger_grids_is_close_to_the_exact_solver(k: int, n_labels: int) -> None:
    """With the authors' weights the row/column search finds the exact optimum on most 8x8 and 5x5 instances."""
    terms = _random_terms(64, k, n_labels, seed=40 + k, beta=1.2)
    exact = mask_energy(solve_puzzle_mask(terms, "exact"), terms)
    approx = mask_energy(solve_puzzle_mask(terms, "icm"), terms)
    uniform = torch.stack([mask_energy(torch.full((64, k, k), j), terms) for j in range(n_labels)]).min(0).values
    assert bool((approx >= exact - 1e-6).all())
    assert float((approx <= exact + 1e-6).float().mean()) >= 0.75
    # over the batch, the energy gained over the best uniform mask is at least 98% of the optimum's
    assert float((uniform - approx).sum() / (uniform - exact).sum()) >= 0.98


# ------------------------------------------------------------------ transport


@pytest.mark.parametrize(("size", "counts"), [(16, 4), (16, 8), (28, 8), (30, 7)])
def test_transport_moves_each_cell_at_most_once_within_its_shape(size: int, counts: int) -> None:
    """Each source cell lands in at most one destination, of its own pixel shape; shown cells get content."""
    g = _generator(size + counts)
    saliency = torch.rand(200, counts * counts, generator=g) ** 4
    saliency = saliency / saliency.sum(1, keepdim=True)
    shown = torch.rand(200, counts * counts, generator=g) < 0.5
    grid = block_grid(size, size, counts, CPU)
    cost, blocked = transport_costs(grid)
    plan = transport_plan(saliency, shown, cost, blocked, weight=0.3, iterations=counts)
    placed = plan >= 0
    assert bool(placed[shown].all()), "every shown cell receives content"
    rows = torch.arange(200).unsqueeze(1).expand_as(plan)
    used = torch.zeros(200, counts * counts, dtype=torch.long).index_put_(
        (rows[placed], plan[placed]), torch.tensor(1), accumulate=True
    )
    assert int(used.max()) <= 1, "no content is used twice"
    shapes = grid.shape_id
    assert torch.equal(shapes[plan[placed]], shapes.expand_as(plan)[placed]), "content keeps its pixel shape"
    pixels = cell_pixels(plan, grid)
    assert bool(((pixels >= 0) & (pixels < size * size)).all())


def test_transport_costs_forbid_moves_between_shapes() -> None:
    """28 pixels in 8 cells alternate 4- and 3-pixel cells: moves between them are blocked."""
    _, blocked = transport_costs(block_grid(28, 28, 8, CPU))
    assert bool(blocked[0, 1]) and not bool(blocked[0, 2]) and not bool(blocked.diagonal().any())


# ------------------------------------------------------------------ the clean loss


def test_clean_loss_is_kept_and_weighted() -> None:
    """With ``clean_weight`` the batch keeps the context's clean loss (with its graph), scaled by 2 w / K."""
    x, y = digits(32)
    net = _warm_cnn()
    mixer = PuzzleMix(clean_weight=0.5, blocks=(4,))
    context = MixContext(mixer, net)(x, y)
    mb = mixer(x, y, _generator(8), context=context)
    outputs = mb.forward(net)
    terms = mixer.loss_terms(mb, outputs)
    assert set(terms) == {"clean"} and terms["clean"].requires_grad
    torch.testing.assert_close(terms["clean"], context["clean_loss"] * (2 * 0.5 / 10))
    assert PuzzleMix().loss_terms(mb, outputs) == {}, "clean_weight=0 adds nothing"
    unkept = MixedBatch.unmixed(x, y)
    assert mixer.loss_terms(unkept, outputs) == {}, "no clean loss in the batch: nothing to add"


# ------------------------------------------------------------------ training


def test_trains_in_a_plain_loop() -> None:
    x, y = digits(512)
    result = own_loop(PuzzleMix(blocks=(2, 4, 8)), small_cnn(), x, y, steps=40)
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
    with pytest.raises(MixlabValueError, match="input_std has 3 channels"):
        PuzzleMix(input_std=(0.2, 0.2, 0.2))(x, y, context={"saliency": torch.rand(8, 16, 16)})


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
        ({"n_labels": 1}, MixlabValueError, "n_labels"),
        ({"n_labels": 5}, MixlabValueError, r"n_labels must be an int in \[2, 4\]; got 5"),
        ({"n_labels": 2.5}, MixlabTypeError, "n_labels"),
        ({"neighbour_size": 0}, MixlabValueError, "neighbour_size"),
        ({"transport_size": 0}, MixlabValueError, "transport_size"),
        ({"input_std": -1.0}, MixlabValueError, "input_std"),
        ({"input_std": 0.0}, MixlabValueError, "input_std must be positive"),
        ({"input_std": ()}, MixlabValueError, "input_std"),
        ({"clean_weight": -1.0}, MixlabValueError, "clean_weight"),
        ({"transport": "yes"}, MixlabTypeError, "transport"),
        ({"solver": "graphcut"}, MixlabValueError, "solver"),
        ({"solver": "exact"}, MixlabValueError, "exact"),  # 3 labels on 16 blocks: 3**16 row labellings
        ({"model": "cnn"}, MixlabTypeError, "model"),
    ],
)
def test_bad_options_are_refused_at_construction(options: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        PuzzleMix(**options)


def test_exact_solver_refuses_large_grids() -> None:
    s = torch.full((1, 6, 6), 1.0 / 36)
    terms = mask_energy_terms(s, s, 0.5, beta=1.0, eta=0.0, n_labels=3)  # 3**6 = 729 row labellings
    with pytest.raises(MixlabValueError, match="exact"):
        solve_puzzle_mask(terms, "exact")
