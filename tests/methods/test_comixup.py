"""Co-Mixup: contract, the energy, the solver against brute force, supermodular diversity, training, errors."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from mixer_checks import assert_trains, check_contract, digits, own_loop, small_cnn

from mixlab.errors import MixlabTypeError, MixlabValueError
from mixlab.methods.comixup import (
    CoMixup,
    CoMixupProblem,
    block_grid,
    block_saliency,
    diversity_penalty,
    solve_comixup,
    source_usage,
)
from mixlab.methods.context import MixContext


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """The tensors here are tiny: on a shared 2-core machine thread hand-offs cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@functools.cache
def _warm_weights() -> dict[str, torch.Tensor]:
    """``small_cnn`` after 20 plain SGD steps on digits.

    An untrained network's saliency is nearly flat, and then Co-Mixup's energy
    prefers whole images (mixing gathers little saliency and costs smoothness);
    a little training makes the saliency informative, as during real training.
    """
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


def _random_problem(rng: np.random.Generator, n: int, blocks: tuple[int, ...]) -> CoMixupProblem:
    """Skewed block saliency, any partners (also repeated ones), and weights that make every term matter."""
    k = int(np.prod(blocks))
    saliency = torch.from_numpy(rng.gamma(0.5, size=(n, k))).float()
    saliency = saliency / saliency.sum(1, keepdim=True)
    perm = rng.permutation(n) if rng.random() < 0.7 else rng.integers(0, n, n)
    return CoMixupProblem.build(
        saliency,
        torch.from_numpy(perm),
        torch.from_numpy(rng.uniform(0.05, 0.95, n)).float(),
        blocks,
        beta=float(rng.uniform(0.0, 1.5)),
        gamma=float(rng.choice([0.0, 1.0, 3.0, 10.0])),
        eta=float(rng.uniform(0.0, 0.5)),
        tau=float(rng.uniform(0.0, 1.0)),
        omega=float(rng.uniform(0.0, 0.5)),
    )


def _all_labellings(n: int, k: int) -> torch.Tensor:
    """Every joint labelling of ``n`` outputs on ``k`` blocks, ``(2^(n k), n, k)`` bool."""
    codes = torch.arange(2 ** (n * k))
    return ((codes[:, None] >> torch.arange(n * k)) & 1).bool().view(-1, n, k)


# ------------------------------------------------------------------ contract


def test_contract_on_digits() -> None:
    x, y = digits(48)
    net = _warm_cnn()
    mixer = CoMixup()
    assert mixer.needs.saliency and not mixer.needs.features
    mb = check_contract(mixer, x, y, net, lam_is_mask_mean=True)
    mask = mb.mask[:, 0]
    assert mb.mask.shape == (48, 1, 16, 16) and bool(((mask == 0) | (mask == 1)).all())
    # A 4 x 4 grid of 4 x 4-pixel blocks: the mask is constant on every block.
    blocks = mask.unfold(1, 4, 4).unfold(2, 4, 4).flatten(3)
    assert bool((blocks == blocks[..., :1]).all())
    assert float(((mb.lam > 0) & (mb.lam < 1)).float().mean()) > 0.5, mb.lam
    kept = mb.mask.bool().expand_as(x)
    assert torch.equal(mb.inputs[kept], x[kept]) and torch.equal(mb.inputs[~kept], x[mb.perm].expand_as(x)[~kept])


def test_without_smoothness_or_diversity_each_block_is_the_more_salient_one() -> None:
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6)
    saliency = torch.rand(6, 8, 8, generator=_generator(1))
    mixer = CoMixup(grid=4, beta=0.0, gamma=0.0, eta=0.0)
    mb = mixer(x, y, _generator(2), context={"saliency": saliency})
    block = saliency.view(6, 4, 2, 4, 2).sum((2, 4))  # 2 x 2-pixel blocks, normalised per input
    block = block / block.sum((1, 2), keepdim=True)
    paired = mb.perm != torch.arange(6)
    assert bool(paired.any())
    assert torch.equal(mb.mask[paired, 0, ::2, ::2].bool(), (block > block[mb.perm])[paired])


def test_lam_one_leaves_the_batch_unmixed() -> None:
    x, y = torch.randn(5, 2, 8, 8), torch.arange(5)
    mb = CoMixup(lam=1.0)(x, y, _generator(), context={"saliency": torch.rand(5, 8, 8)})
    assert torch.equal(mb.inputs, x) and torch.equal(mb.lam, torch.ones(5))


def test_mixing_leaves_the_process_thread_count_alone() -> None:
    torch.set_num_threads(2)  # the module fixture restores the caller's count afterwards
    CoMixup()(torch.randn(4, 1, 8, 8), torch.arange(4), _generator(), context={"saliency": torch.rand(4, 8, 8)})
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)


@pytest.mark.parametrize("shape", [(4, 3, 12), (4, 1, 6, 6, 6), (4, 2, 10, 7)])
def test_one_two_and_three_spatial_dims(shape: tuple[int, ...]) -> None:
    x, y = torch.randn(shape), torch.arange(4)
    mb = CoMixup(grid=3)(x, y, _generator(), context={"saliency": torch.rand(4, *shape[2:])})
    assert mb.inputs.shape == x.shape and mb.mask.shape == (4, 1, *shape[2:])
    torch.testing.assert_close(mb.lam, mb.mask.flatten(1).double().mean(1).float())


def test_block_saliency_sums_blocks_of_uneven_size() -> None:
    saliency = torch.rand(3, 10, 7, generator=_generator(3))
    blocks = block_grid((10, 7), 3)
    pooled = block_saliency(saliency, blocks)
    rows, cols = [0, 4, 7, 10], [0, 3, 5, 7]  # floor(i * 3 / size) boundaries
    manual = torch.stack(
        [saliency[:, rows[a] : rows[a + 1], cols[b] : cols[b + 1]].sum((1, 2)) for a in range(3) for b in range(3)], 1
    )
    torch.testing.assert_close(pooled, manual / manual.sum(1, keepdim=True))


# ------------------------------------------------------------------ the energy and the solver


def test_energy_matches_its_definition_term_by_term() -> None:
    rng = np.random.default_rng(4)
    problem = _random_problem(rng, 4, (2, 3))
    z = torch.rand(4, 6, generator=_generator(5)) < 0.5
    unary = sum(
        float(problem.unary_self[j, k] if z[j, k] else problem.unary_partner[j, k]) for j in range(4) for k in range(6)
    )
    grid = z.view(4, 2, 3)
    cut = int((grid[:, 1:] != grid[:, :-1]).sum() + (grid[:, :, 1:] != grid[:, :, :-1]).sum())
    usage = np.zeros((4, 4))
    for j in range(4):
        usage[j, j] += int(z[j].sum())
        usage[j, int(problem.perm[j])] += 6 - int(z[j].sum())
    compat = problem.compat.double().numpy()
    reuse = sum(
        usage[j, i] * max(0.0, float(compat[i] @ (usage.sum(0) - usage[j])) - problem.tau_blocks)
        for j in range(4)
        for i in range(4)
    )
    expected = unary + problem.smoothness * cut + problem.diversity * reuse
    assert float(problem.energy(z)) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_solver_bookkeeping_matches_the_energy() -> None:
    """The solver's energies, and its per-output diversity profiles (every count an output could take), are exact."""
    from mixlab.methods.comixup import _Solver

    rng = np.random.default_rng(8)
    for n, blocks in [(5, (2, 3)), (9, (4, 4))]:
        problem = _random_problem(rng, n, blocks)
        solver, k = _Solver(problem), int(np.prod(blocks))
        z = torch.rand(3, n, k, generator=_generator(n)) < 0.5
        torch.testing.assert_close(solver.energy(z), problem.energy(z), rtol=1e-5, atol=1e-4)
        own = z.float().sum(-1)
        profile = solver.reuse_profile(own)
        for j in range(n):
            counts = own.unsqueeze(1).repeat(1, k + 1, 1)
            counts[:, :, j] = torch.arange(k + 1.0)
            expected = torch.stack([solver.reuse(counts[:, x]) for x in range(k + 1)], 1)
            torch.testing.assert_close(profile[:, j], expected, rtol=1e-5, atol=1e-3)


def test_solver_is_near_the_exact_optimum_by_brute_force() -> None:
    """On >= 200 random instances small enough to enumerate every joint labelling.

    "Within 5%" is relative to the energy range of the instance:
    ``(E(solver) - E_min) / (E_max - E_min) <= 0.05``, which must hold on at
    least 95% of the instances. The labelling that ignores smoothness and
    diversity (the unary optimum) fails the same criterion, so the check has teeth.
    """
    rng = np.random.default_rng(0)
    gaps, unary_only = [], []
    for n, blocks, count in [(2, (2, 2), 84), (3, (2, 2), 84), (4, (2, 2), 20), (2, (3, 3), 12)]:
        labellings = _all_labellings(n, int(np.prod(blocks)))
        for _ in range(count):
            problem = _random_problem(rng, n, blocks)
            energies = problem.energy(labellings)
            low, span = energies.min(), energies.max() - energies.min()
            z = solve_comixup(problem, generator=_generator(int(rng.integers(1 << 30))))
            assert z.shape == (n, int(np.prod(blocks))) and z.dtype == torch.bool
            gaps.append(float((problem.energy(z) - low) / span))
            unary_only.append(float((problem.energy(problem.unary_self < problem.unary_partner) - low) / span))
    gaps_t = torch.tensor(gaps)
    assert len(gaps) >= 200
    assert float((gaps_t <= 0.05).float().mean()) >= 0.95, sorted(gaps)[-12:]
    assert float((gaps_t <= 1e-6).float().mean()) >= 0.8  # mostly the exact optimum
    assert float((torch.tensor(unary_only) <= 0.05).float().mean()) < 0.8


def test_diversity_is_supermodular() -> None:
    """``D(X | Y) + D(X & Y) >= D(X) + D(Y)`` for random sets of (output, block, source) indicators."""
    g = _generator(6)
    n, k, pairs = 5, 4, 400
    perm = torch.tensor([1, 2, 0, 0, 3])
    compat = torch.rand(n, n, generator=g)  # any non-negative A
    sets = torch.rand(2, pairs, n, k, 2, generator=g) < 0.5  # last dim: block from x_j, block from x_perm[j]

    def usage(chosen: torch.Tensor) -> torch.Tensor:
        counts = chosen.sum(-2).float()  # (pairs, n, 2)
        return torch.diag_embed(counts[..., 0]) + torch.nn.functional.one_hot(perm, n) * counts[..., 1:]

    x_set, y_set = sets
    for tau_blocks in (0.0, 2.0, 5.0):

        def reuse(chosen: torch.Tensor, tau: float = tau_blocks) -> torch.Tensor:
            return diversity_penalty(usage(chosen), compat, tau)

        union_and_meet = reuse(x_set | y_set) + reuse(x_set & y_set)
        assert bool((union_and_meet >= reuse(x_set) + reuse(y_set) - 1e-4).all())

    # The step threshold of the authors' code ("hard") is not supermodular: the hinge is a deliberate choice.
    def hard(chosen: torch.Tensor) -> torch.Tensor:
        counts = usage(chosen)
        pressure = (counts.sum(-2, keepdim=True) - counts) @ compat.T
        return (counts * pressure * (pressure > 5.0)).sum((-2, -1))

    assert bool((hard(x_set | y_set) + hard(x_set & y_set) < hard(x_set) + hard(y_set) - 1e-4).any())


def test_source_usage_counts_blocks_per_input() -> None:
    z = torch.tensor([[True, False, False], [True, True, True], [False, False, False]])
    usage = source_usage(z, torch.tensor([2, 0, 0]))
    assert usage.tolist() == [[1.0, 0.0, 2.0], [0.0, 3.0, 0.0], [3.0, 0.0, 0.0]]


def test_diversity_reduces_reuse_of_a_salient_input() -> None:
    """Pairs (2i, 2i+1): even inputs have spread-out saliency, odd ones one salient block.

    Alone, each output of a pair takes the odd input's salient block and the
    even input everywhere else: the two outputs coincide and every block of the
    even input is used twice. The diversity term breaks this up.
    """
    pairs, k = 4, 16
    saliency = torch.full((2 * pairs, k), 1.0 / k)
    saliency[1::2] = torch.nn.functional.one_hot(torch.arange(pairs) * 3, k).float()
    perm = torch.arange(2 * pairs).view(pairs, 2).flip(1).flatten()
    lam = torch.full((2 * pairs,), 0.5)

    def uses_of_even_inputs(gamma: float) -> torch.Tensor:
        problem = CoMixupProblem.build(saliency, perm, lam, (4, 4), gamma=gamma)
        z = solve_comixup(problem, generator=_generator(7))
        return z[0::2].int() + (~z[1::2]).int()  # (pairs, K): outputs using each block of each even input

    without, with_diversity = uses_of_even_inputs(0.0), uses_of_even_inputs(1.0)
    assert int((without == 2).sum()) == pairs * (k - 1)
    assert int((with_diversity == 2).sum()) < int((without == 2).sum())
    assert int(with_diversity.sum()) < int(without.sum())


# ------------------------------------------------------------------ training


def test_trains_in_own_loop() -> None:
    x, y = digits(512)
    mixed = []
    mixer = CoMixup()
    sample = mixer.sample

    def counting_sample(*args: object, **kwargs: object) -> object:
        params = sample(*args, **kwargs)
        mixed.append(float(((params.lam > 0) & (params.lam < 1)).float().mean()))
        return params

    mixer.sample = counting_sample  # type: ignore[method-assign]
    result = own_loop(mixer, _warm_cnn(), x, y, steps=40, batch=64, lr=0.01)
    assert_trains(result)
    assert sum(mixed) / len(mixed) > 0.5  # the loss fell on mixed samples, not on whole images


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
        CoMixup(grid=(4, 4, 4))(x, y, context=MixContext(mixer, small_cnn())(x, y))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"grid": 0}, MixlabValueError),
        ({"grid": (4, 0)}, MixlabValueError),
        ({"grid": ()}, MixlabValueError),
        ({"grid": 2.5}, MixlabTypeError),
        ({"beta": -0.1}, MixlabValueError),
        ({"gamma": float("inf")}, MixlabValueError),
        ({"eta": float("nan")}, MixlabValueError),
        ({"tau": -1.0}, MixlabValueError),
        ({"omega": 1.5}, MixlabValueError),
        ({"restarts": 0}, MixlabValueError),
        ({"sweeps": 0}, MixlabValueError),
        ({"sweeps": 2.0}, MixlabTypeError),
    ],
)
def test_out_of_range_parameters_are_refused(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error, match=str(next(iter(kwargs)))):
        CoMixup(**kwargs)
