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
    check_choice,
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


#: C-Mixup scopes: partners from the whole training set (the authors' code) or from the batch.
CMIXUP_SCOPES = ("dataset", "batch")
#: Rates kept after :meth:`CMixupPairing.fit` when ``top_k`` is not given: exact rows up to
#: 4096 training targets, the largest ``2**24 // N`` rates per row above (128 MB at most).
CMIXUP_RATE_ENTRIES = 2**24
#: Kernel entries computed at once by :meth:`CMixupPairing.fit` (32 MB of float64).
_CMIXUP_BLOCK_ENTRIES = 2**22


class CMixupPairing(PairSampler):
    """C-Mixup partner selection for regression (Yao et al., NeurIPS 2022, arXiv 2210.05775).

    Partner ``j`` of sample ``i`` is drawn with probability
    ``exp(-||y_i - y_j||^2 / (2 sigma^2)) / sum_k exp(-||y_i - y_k||^2 / (2 sigma^2))``
    (the paper's Eq. 6; the distance is Euclidean over all target columns).

    ``scope="dataset"`` (default) is the authors' code (huaxiuyao/C-Mixup,
    ``src/algorithm.py``: ``get_mixup_sample_rate`` computes this rate matrix
    once over the whole training set, each row normalised, and ``train`` draws
    every anchor's partner from its row with ``np.random.choice``, independently
    and with replacement). Here :meth:`fit` computes the rates once, and
    :class:`mixlab.data.pairs.PartnerBatchSampler` (or ``PartnerTensorLoader``)
    yields each batch as its anchors followed by one drawn partner per anchor.
    :meth:`sample` then pairs row ``i`` of the first half with row ``i`` of the
    second, and each partner with its anchor (the mirror pair: with a symmetric
    Beta it is distributed as the first, which is how the authors' PovertyMap
    script mixes both ways). Batches drawn any other way are refused only when
    the pairing is unfitted or the batch is odd: give dataset-scope C-Mixup
    batches from those helpers. The authors' tabular ``train`` forms and trains
    on the anchors' mixes only: :func:`mixlab.data.pairs.anchor_mixes` keeps
    them, and ``mixlab train`` fits, loads and trains this way by itself.

    ``scope="batch"`` normalises the kernel over the batch instead (no fit, any
    loader): cheaper, but with small batches partners are far apart and
    self-pairs frequent. The authors' ``batch_type=1`` (used for RCF-MNIST) is
    close to it but draws from the batch plus as many random samples.

    Args:
        sigma: the kernel bandwidth, in the units of the targets given to :meth:`fit` (the
            authors' ``--kde_bandwidth``: 1.0 by default; 1.75 Airfoil, 1.2 NO2, 0.05 exchange
            rate, 0.5 electricity, 4.0 crime, 1.0 SkillCraft, 0.2 RCF-MNIST in their README, each
            on its data's own target scale: raw decibels for Airfoil). ``mixlab train`` standardises
            regression targets and fits on them, so there ``sigma`` is in standard deviations of
            the training targets.
        exclude_self: drop ``j = i`` from the candidates. The authors' tabular code keeps
            it (``self_rate`` is the diagonal of the rate matrix); their PovertyMap script
            redraws it, which is this option.
        scope: ``"dataset"`` or ``"batch"``.
        top_k: rates kept per training sample after :meth:`fit` (the largest ones,
            renormalised; :attr:`truncated_mass` says how much was dropped). ``None``
            keeps whole rows while ``N * N <= CMIXUP_RATE_ENTRIES`` and ``CMIXUP_RATE_ENTRIES // N`` above.

    Example:
        >>> pairing = CMixupPairing(sigma=0.5).fit(torch.tensor([0.0, 0.1, 5.0, 5.1]))
        >>> rates = pairing.partner_rates()
        >>> bool(rates[0, 1] > rates[0, 2]), pairing.sample(torch.zeros(4), new_generator(0)).tolist()
        (True, [2, 3, 0, 1])
    """

    name = "c_mixup"

    def __init__(
        self, sigma: float = 1.0, exclude_self: bool = False, scope: str = "dataset", top_k: int | None = None
    ):
        self.sigma = check_positive("sigma", sigma)
        self.exclude_self = bool(exclude_self)
        self.scope = check_choice("c_mixup scope", scope, CMIXUP_SCOPES)
        self.top_k = None if top_k is None else check_int("top_k", top_k, minimum=1)
        self._cdf: torch.Tensor | None = None  # (N, k) cumulative rates, float32
        self._index: torch.Tensor | None = None  # (N, k) int32 partner indices; None when rows are whole
        self.truncated_mass = 0.0

    def check(self, y: torch.Tensor) -> None:
        """C-Mixup compares regression targets: they must be floating and finite.

        A NaN distance would make every kernel row NaN and pair the whole batch with row 0, silently.

        Example:
            >>> CMixupPairing().check(torch.tensor([0.0, float("nan")]))
            Traceback (most recent call last):
            ...
            mixlab.errors.MixlabValueError: c_mixup pairs by target distance and needs finite targets; got 1 NaN and 0 inf among 2 target values. Drop or impute those samples first
        """
        if not y.is_floating_point():
            raise MixlabTypeError(f"c_mixup pairs by target distance and needs float targets; got dtype {y.dtype}")
        nan_count, inf_count = torch.stack((y.isnan().sum(), y.isinf().sum())).tolist()
        if nan_count or inf_count:
            raise MixlabValueError(
                f"c_mixup pairs by target distance and needs finite targets; got {nan_count} NaN and {inf_count} inf "
                f"among {y.numel()} target values. Drop or impute those samples first"
            )

    def probabilities(self, y: torch.Tensor) -> torch.Tensor:
        """Return the ``(N, N)`` row-stochastic kernel over targets ``y`` (the rates among exactly these samples)."""
        self.check(y)
        return self._kernel_rows(_flat_targets(y), _flat_targets(y), 0)

    def _kernel_rows(self, rows: torch.Tensor, targets: torch.Tensor, first: int) -> torch.Tensor:
        """Normalised kernel rows for ``rows`` (targets ``first, first + 1, ...``) against all ``targets``."""
        dist2 = torch.cdist(rows, targets).square()
        # softmax rather than exp()/sum: with a small sigma exp() underflows to all-zero rows.
        logits = -dist2 / (2.0 * self.sigma**2)
        if self.exclude_self and targets.shape[0] > 1:
            own = torch.arange(rows.shape[0])
            logits[own, own + first] = float("-inf")
        return torch.softmax(logits, dim=1)

    # ------------------------------------------------------------ dataset scope

    def fit(self, train_targets: torch.Tensor) -> CMixupPairing:
        """Compute every training sample's partner rates once, block by block; returns the pairing.

        Memory stays bounded: at most ``_CMIXUP_BLOCK_ENTRIES`` kernel entries
        are computed at once, and only ``top_k`` rates per row are kept (all of
        them for small sets, see the class docstring).

        Example:
            >>> CMixupPairing().fit(torch.tensor([[1.0], [2.0], [4.0]])).num_targets
            3
        """
        self.check(train_targets)
        targets = _flat_targets(train_targets)
        n = targets.shape[0]
        if n == 0 or not bool(targets.isfinite().all()):
            raise MixlabValueError(
                f"c_mixup fit needs at least one target, all finite; got shape {tuple(train_targets.shape)}"
            )
        k = min(n, self.top_k or max(1, CMIXUP_RATE_ENTRIES // n))
        cdf = torch.empty((n, k), dtype=torch.float32)
        index = None if k == n else torch.empty((n, k), dtype=torch.int32)
        kept = torch.empty(n, dtype=torch.float64)
        block = max(1, _CMIXUP_BLOCK_ENTRIES // n)
        for first in range(0, n, block):
            rates = self._kernel_rows(targets[first : first + block], targets, first)
            if index is not None:
                rates, top = rates.topk(k, dim=1)
                index[first : first + block] = top.to(torch.int32)
            kept[first : first + block] = rates.sum(dim=1)
            cdf[first : first + block] = rates.cumsum(dim=1).to(torch.float32)
        self._cdf, self._index = cdf, index
        self.truncated_mass = max(0.0, float(1.0 - kept.min()))
        return self

    @property
    def num_targets(self) -> int:
        """The number of training targets given to :meth:`fit` (0 before)."""
        return 0 if self._cdf is None else self._cdf.shape[0]

    def _require_fit(self) -> torch.Tensor:
        if self._cdf is None:
            raise MixlabValueError(
                "c_mixup with scope='dataset' draws partners from the training set: call "
                "pairing.fit(train_targets) and load batches with mixlab.data.pairs.PartnerBatchSampler "
                "(or PartnerTensorLoader); or use scope='batch' (pairing='c_mixup_batch') for the within-batch kernel"
            )
        return self._cdf

    def partner_rates(self, anchors: torch.Tensor | None = None) -> torch.Tensor:
        """The fitted rates as a dense ``(len(anchors), N)`` float64 matrix (all training samples by default).

        Rows sum to 1; with ``top_k`` they are the kept rates renormalised.
        """
        cdf = self._require_fit()
        rows = torch.arange(cdf.shape[0]) if anchors is None else torch.as_tensor(anchors, dtype=torch.long)
        kept = cdf[rows].double()
        rates = torch.diff(kept, dim=1, prepend=torch.zeros(len(rows), 1, dtype=torch.float64))
        rates = rates / kept[:, -1:]
        if self._index is None:
            return rates
        dense = torch.zeros(len(rows), cdf.shape[0], dtype=torch.float64)
        return dense.scatter_(1, self._index[rows].long(), rates)

    def draw_partners(self, anchors: torch.Tensor | np.ndarray, rng: RandomSource) -> torch.Tensor:
        """One partner per anchor (training-set indices), drawn from its fitted rates; ``(A,)`` long.

        Example:
            >>> pairing = CMixupPairing(sigma=0.1).fit(torch.tensor([0.0, 0.01, 9.0]))
            >>> pairing.draw_partners(torch.tensor([2, 2]), new_generator(0)).tolist()
            [2, 2]
        """
        cdf = self._require_fit()
        rows = torch.as_tensor(anchors, dtype=torch.long).reshape(-1)
        if rows.numel() and not bool(((rows >= 0) & (rows < cdf.shape[0])).all()):
            raise MixlabValueError(f"anchors must index the {cdf.shape[0]} fitted targets; got {rows.tolist()[:8]}...")
        u = torch.from_numpy(numpy_rng(rng).random(len(rows)))
        out = torch.empty(len(rows), dtype=torch.long)
        step = max(1, _CMIXUP_BLOCK_ENTRIES // cdf.shape[1])
        for first in range(0, len(rows), step):  # chunks bound the gathered rows' memory
            kept = cdf[rows[first : first + step]]
            target = (u[first : first + step] * kept[:, -1].double()).to(torch.float32).unsqueeze(1)
            position = torch.searchsorted(kept, target, right=True).clamp_(max=cdf.shape[1] - 1)
            if self._index is not None:
                position = self._index[rows[first : first + step]].gather(1, position)
            out[first : first + step] = position.squeeze(1).long()
        return out

    # ------------------------------------------------------------ the mixer's draw

    def sample(self, y: torch.Tensor, rng: RandomSource) -> torch.Tensor:
        """The partner of every row: drawn from the batch kernel (``"batch"``), or the paired halves (``"dataset"``)."""
        if self.scope == "batch":
            return _draw_rows(self.probabilities(y).numpy(), numpy_rng(rng))
        self._require_fit()
        n = y.shape[0]
        if n % 2:
            raise MixlabValueError(
                f"c_mixup with scope='dataset' expects each batch as its anchors followed by their partners "
                f"(PartnerBatchSampler), so an even size; got {n} rows"
            )
        half = torch.arange(n // 2)
        return torch.cat([half + n // 2, half])

    def __repr__(self) -> str:
        fitted = f", fitted on {self.num_targets}" if self._cdf is not None else ""
        return f"CMixupPairing(sigma={self.sigma}, exclude_self={self.exclude_self}, scope={self.scope!r}{fitted})"


def _flat_targets(y: torch.Tensor) -> torch.Tensor:
    """Targets as ``(N, D)`` float64 on the CPU, for distances."""
    return y.detach().to("cpu", torch.float64).reshape(y.shape[0], -1)


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


PAIRINGS = ("random", "c_mixup", "c_mixup_batch", "same_class", "different_class")


def make_pair_sampler(pairing: str | PairSampler = "random", **kwargs: float) -> PairSampler:
    """Build a pair sampler from a name in ``PAIRINGS`` or return the given one.

    ``"c_mixup"`` is C-Mixup over the training set (fit it and load batches
    with :mod:`mixlab.data.pairs`); ``"c_mixup_batch"`` its within-batch kernel.

    Example:
        >>> make_pair_sampler("c_mixup", sigma=0.5).sigma
        0.5
        >>> make_pair_sampler("c_mixup_batch").scope
        'batch'
    """
    if pairing in ("c_mixup", "c_mixup_batch"):
        return CMixupPairing(**kwargs, scope="dataset" if pairing == "c_mixup" else "batch")
    if kwargs:
        raise MixlabValueError(
            f"{', '.join(sorted(kwargs))} only applies to pairing='c_mixup' or 'c_mixup_batch'; got pairing={pairing!r}"
        )
    if isinstance(pairing, PairSampler):
        return pairing
    if pairing == "random":
        return RandomPairing()
    if pairing in ("same_class", "different_class"):
        return ClassAwarePairing(pairing.split("_")[0])
    raise UnknownNameError("pairing", pairing, PAIRINGS)
