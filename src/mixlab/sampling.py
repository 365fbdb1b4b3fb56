"""Randomness: mixing-ratio samplers and pair samplers.

All draws take an explicit generator and never touch Python's, NumPy's or
torch's global random state. Small parameters are drawn on the CPU with NumPy,
seeded by one draw of the caller's ``torch.Generator``; large random fields
(FMix spectra) are drawn on the data's device from a torch generator seeded
the same way, so one seed gives the same parameters on every device but the
same FMix masks only on the same device type.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> lam = BetaLambda(1.0).sample(4, g)
    >>> bool(((lam >= 0) & (lam <= 1)).all())
    True
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from mixlab.errors import (
    MixlabTypeError,
    MixlabValueError,
    UnknownNameError,
    check_int,
    check_positive,
    check_probability,
)

# ---------------------------------------------------------------- generators


def new_generator(seed: int | None = None) -> torch.Generator:
    """Return a CPU generator seeded with ``seed``, or from OS entropy when ``None``.

    Seeding from OS entropy leaves torch's global generator alone.

    Example:
        >>> g1, g2 = new_generator(3), new_generator(3)
        >>> torch.equal(torch.rand(2, generator=g1), torch.rand(2, generator=g2))
        True
    """
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(check_int("seed", seed))
    return g


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed derived from ``seed`` and ``keys`` (e.g. a stream name, epoch, rank).

    Streams derived with different keys are independent; the same keys always
    give the same seed, which lets a resumed run redraw exactly what an
    uninterrupted one would have drawn.

    Example:
        >>> derive_seed(0, "shuffle", 1) == derive_seed(0, "shuffle", 1) != derive_seed(0, "shuffle", 2)
        True
    """
    words = [check_int("seed", seed)]
    for key in keys:
        words.extend(key.encode() if isinstance(key, str) else [check_int("key", key) + 256])
    return int(np.random.SeedSequence(words).generate_state(2, np.uint64)[0] >> np.uint64(1))


def as_cpu_generator(generator: torch.Generator | None, fallback: torch.Generator) -> torch.Generator:
    """Return a CPU generator to draw parameters from.

    ``None`` gives ``fallback`` (the mixer's own generator). A generator on
    another device seeds a CPU one from a single draw, so the same state still
    gives the same parameters.

    Example:
        >>> fb = new_generator(0)
        >>> as_cpu_generator(None, fb) is fb
        True
    """
    if generator is None:
        return fallback
    if not isinstance(generator, torch.Generator):
        raise MixlabTypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    if generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return new_generator(seed)


RandomSource = np.random.Generator | torch.Generator


_THREAD = threading.local()


def numpy_rng(source: RandomSource) -> np.random.Generator:
    """A NumPy generator for the small parameter draws of one batch.

    Given a ``torch.Generator`` it is seeded from one draw of it, so the torch
    generator's state still decides every parameter; given a NumPy generator
    it is returned as it is. NumPy's per-call cost on tiny arrays is a fraction
    of torch's, which matters for small batches. To save the cost of building
    a generator per batch, each thread reuses one PCG64 generator, reseeded on
    every call: use the result for the current batch only.

    Example:
        >>> a = numpy_rng(torch.Generator().manual_seed(0)).random()
        >>> b = numpy_rng(torch.Generator().manual_seed(0)).random()
        >>> a == b
        True
    """
    if isinstance(source, np.random.Generator):
        return source
    if not isinstance(source, torch.Generator):
        raise MixlabTypeError(f"expected a torch.Generator or numpy Generator; got {type(source).__name__}")
    seed = int(torch.randint(0, 2**62, (1,), generator=as_cpu_generator(source, source)))
    cached = getattr(_THREAD, "rng", None)
    if cached is None:
        bit_generator = np.random.PCG64(0)
        cached = _THREAD.rng = (bit_generator, bit_generator.state, np.random.Generator(bit_generator))
    bit_generator, state, rng = cached
    # Spread the 62-bit seed over PCG64's 128-bit state (any state is a valid start).
    state["state"]["state"] = (seed * 0x9E3779B97F4A7C15F39CC0605CEDC835) % 2**128
    state["has_uint32"] = 0
    bit_generator.state = state
    return rng


def torch_generator(rng: np.random.Generator, device: torch.device) -> torch.Generator:
    """A torch generator on ``device`` seeded from ``rng``, for large random fields drawn where they are used.

    The generator is reused (reseeded) by the next call on this thread: use it at once.

    Example:
        >>> torch_generator(np.random.default_rng(0), torch.device("cpu")).device.type
        'cpu'
    """
    generators = getattr(_THREAD, "torch_generators", None)
    if generators is None:
        generators = _THREAD.torch_generators = {}
    if device not in generators:
        generators[device] = torch.Generator(device=device)
    # Reseeding one generator per thread and device is cheaper than building one per batch.
    return generators[device].manual_seed(int(rng.integers(0, 2**62)))


# ---------------------------------------------------------------- mixing ratios


@runtime_checkable
class LambdaSampler(Protocol):
    """Draws ``n`` mixing ratios in [0, 1] as a float64 NumPy array."""

    def sample(self, n: int, rng: RandomSource, alpha_scale: float = 1.0) -> np.ndarray: ...


class BetaLambda:
    """λ ~ Beta(α, α), as in mixup (Zhang et al., ICLR 2018, arXiv 1710.09412).

    Example:
        >>> BetaLambda(0.2).sample(3, new_generator(0)).shape
        (3,)
    """

    def __init__(self, alpha: float):
        self.alpha = check_positive("alpha", alpha)

    def sample(self, n: int, rng: RandomSource, alpha_scale: float = 1.0) -> np.ndarray:
        """Draw ``n`` ratios from Beta(a, a) with ``a = alpha * alpha_scale`` (scaled by ramps)."""
        a = self.alpha if alpha_scale == 1.0 else check_positive("alpha * alpha_scale", self.alpha * alpha_scale)
        return numpy_rng(rng).beta(a, a, size=n)

    def __repr__(self) -> str:
        return f"BetaLambda(alpha={self.alpha})"


class UniformLambda:
    """λ ~ U(low, high), with 0 <= low <= high <= 1.

    Example:
        >>> lam = UniformLambda(0.3, 0.4).sample(100, new_generator(0))
        >>> bool(((lam >= 0.3) & (lam <= 0.4)).all())
        True
    """

    def __init__(self, low: float, high: float):
        self.low = check_probability("lam_range low", low)
        self.high = check_probability("lam_range high", high)
        if self.low > self.high:
            raise MixlabValueError(f"lam_range must have low <= high; got ({low}, {high})")

    def sample(self, n: int, rng: RandomSource, alpha_scale: float = 1.0) -> np.ndarray:
        """Draw ``n`` ratios uniformly in the range."""
        return self.low + (self.high - self.low) * numpy_rng(rng).random(n)

    def __repr__(self) -> str:
        return f"UniformLambda({self.low}, {self.high})"


class FixedLambda:
    """λ fixed to one value (``0.5`` gives Midpoint Mixup).

    Example:
        >>> FixedLambda(0.5).sample(2, new_generator(0)).tolist()
        [0.5, 0.5]
    """

    def __init__(self, value: float):
        self.value = check_probability("lam", value)

    def sample(self, n: int, rng: RandomSource, alpha_scale: float = 1.0) -> np.ndarray:
        """Return ``n`` copies of the value."""
        return np.full(n, self.value)

    def __repr__(self) -> str:
        return f"FixedLambda({self.value})"


def make_lambda_sampler(
    alpha: float | None = None, lam: float | None = None, lam_range: tuple[float, float] | None = None
) -> LambdaSampler:
    """Build the λ sampler from exactly one of ``alpha``, ``lam`` (fixed) or ``lam_range``.

    Example:
        >>> make_lambda_sampler(lam_range=(0.2, 0.8))
        UniformLambda(0.2, 0.8)
    """
    given = [name for name, v in (("alpha", alpha), ("lam", lam), ("lam_range", lam_range)) if v is not None]
    if len(given) > 1:
        raise MixlabValueError(f"give only one of alpha, lam, lam_range; got {', '.join(given)}")
    if lam is not None:
        return FixedLambda(lam)
    if lam_range is not None:
        if not isinstance(lam_range, (tuple, list)) or len(lam_range) != 2:
            raise MixlabValueError(f"lam_range must be a pair (low, high); got {lam_range!r}")
        return UniformLambda(*lam_range)
    return BetaLambda(1.0 if alpha is None else alpha)


# ---------------------------------------------------------------- pair selection


class PairSampler(ABC):
    """Chooses each sample's partner: ``perm[i]`` is the index mixed into sample ``i``."""

    name = "random"

    def check(self, y: torch.Tensor) -> None:
        """Raise before any draw if the targets do not suit this rule (any targets do by default)."""
        return

    @abstractmethod
    def sample(self, y: torch.Tensor, rng: RandomSource) -> torch.Tensor:
        """Return ``(N,)`` long partner indices on the CPU, drawn from ``rng`` (torch or NumPy generator)."""


class RandomPairing(PairSampler):
    """A uniform random permutation of the batch (the default).

    Example:
        >>> sorted(RandomPairing().sample(torch.zeros(4), new_generator(0)).tolist())
        [0, 1, 2, 3]
    """

    name = "random"

    def sample(self, y: torch.Tensor, rng: RandomSource) -> torch.Tensor:
        """Return a random permutation of ``range(N)``."""
        return torch.from_numpy(numpy_rng(rng).permutation(y.shape[0]))


class CMixupPairing(PairSampler):
    """C-Mixup partner selection for regression (Yao et al., NeurIPS 2022, arXiv 2210.05775).

    Partner ``j`` of sample ``i`` is drawn with probability proportional to
    ``exp(-||y_i - y_j||^2 / (2 sigma^2))`` over the batch. Sample ``i`` itself
    is a candidate, as in the paper's sampling distribution, unless
    ``exclude_self=True``.

    Example:
        >>> y = torch.tensor([0.0, 0.1, 5.0, 5.1])
        >>> p = CMixupPairing(sigma=0.5).probabilities(y)
        >>> bool(p[0, 1] > p[0, 2])
        True
    """

    name = "c_mixup"

    def __init__(self, sigma: float = 1.0, exclude_self: bool = False):
        self.sigma = check_positive("sigma", sigma)
        self.exclude_self = bool(exclude_self)

    def check(self, y: torch.Tensor) -> None:
        """C-Mixup compares regression targets: they must be floating."""
        if not y.is_floating_point():
            raise MixlabTypeError(f"c_mixup pairs by target distance and needs float targets; got dtype {y.dtype}")

    def probabilities(self, y: torch.Tensor) -> torch.Tensor:
        """Return the ``(N, N)`` row-stochastic partner probabilities for targets ``y``."""
        self.check(y)
        flat = y.detach().to("cpu", torch.float64).reshape(y.shape[0], -1)
        dist2 = torch.cdist(flat, flat).square()
        # softmax rather than exp()/sum: with a small sigma exp() underflows to all-zero rows.
        logits = -dist2 / (2.0 * self.sigma**2)
        if self.exclude_self and y.shape[0] > 1:
            logits.fill_diagonal_(float("-inf"))
        return torch.softmax(logits, dim=1)

    def sample(self, y: torch.Tensor, rng: RandomSource) -> torch.Tensor:
        """Draw one partner per sample from the kernel probabilities."""
        return _draw_rows(self.probabilities(y).numpy(), numpy_rng(rng))


class ClassAwarePairing(PairSampler):
    """Partners restricted by class: ``"same"`` or ``"different"`` class only.

    A form of selective mixup (Teney et al., 2023, arXiv 2305.16817). A partner
    is drawn uniformly among the allowed samples; a sample with none allowed in
    the batch is paired with itself (and so left unmixed). Soft labels are
    compared by their arg-max class.

    Example:
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> perm = ClassAwarePairing("different").sample(y, new_generator(0))
        >>> bool((y[perm] != y).all())
        True
    """

    def __init__(self, mode: str = "different"):
        if mode not in ("same", "different"):
            raise UnknownNameError("class-aware pairing mode", mode, ("same", "different"))
        self.mode = mode
        self.name = f"{mode}_class"

    def sample(self, y: torch.Tensor, rng: RandomSource) -> torch.Tensor:
        """Draw a partner uniformly among the allowed samples."""
        labels = y.detach().argmax(dim=1) if y.is_floating_point() and y.ndim == 2 else y.detach()
        labels = labels.to("cpu").reshape(y.shape[0], -1)
        same = (labels.unsqueeze(1) == labels.unsqueeze(0)).all(dim=2)
        allowed = same if self.mode == "same" else ~same
        allowed.fill_diagonal_(False)
        none_allowed = ~allowed.any(dim=1)
        allowed[none_allowed, none_allowed.nonzero().squeeze(1)] = True
        weights = allowed.to(torch.float64).numpy()
        return _draw_rows(weights / weights.sum(axis=1, keepdims=True), numpy_rng(rng))


def _draw_rows(probabilities: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """One index per row of a row-stochastic matrix, by inverting each row's CDF."""
    cdf = np.cumsum(probabilities, axis=1)
    u = rng.random((probabilities.shape[0], 1)) * cdf[:, -1:]
    index = (cdf <= u).sum(axis=1).clip(max=probabilities.shape[1] - 1)
    return torch.from_numpy(index.astype(np.int64))


PAIRINGS = ("random", "c_mixup", "same_class", "different_class")


def make_pair_sampler(pairing: str | PairSampler = "random", **kwargs: float) -> PairSampler:
    """Build a pair sampler from a name in ``PAIRINGS`` or return the given one.

    Example:
        >>> make_pair_sampler("c_mixup", sigma=0.5).sigma
        0.5
    """
    if pairing == "c_mixup":
        return CMixupPairing(**kwargs)
    if kwargs:
        raise MixlabValueError(
            f"{', '.join(sorted(kwargs))} only applies to pairing='c_mixup'; got pairing={pairing!r}"
        )
    if isinstance(pairing, PairSampler):
        return pairing
    if pairing == "random":
        return RandomPairing()
    if pairing in ("same_class", "different_class"):
        return ClassAwarePairing(pairing.split("_")[0])
    raise UnknownNameError("pairing", pairing, PAIRINGS)
