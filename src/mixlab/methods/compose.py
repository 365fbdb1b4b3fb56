"""Compositions: a weighted random choice of mixer per batch or per sample."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Generator, Tensor

from mixlab.batch import MixedBatch
from mixlab.errors import MixlabTypeError, MixlabValueError, check_choice, check_non_negative
from mixlab.methods.base import LAM_MODES, Mixer, MixParams, check_params_fit_batch, unmixed_params
from mixlab.methods.context import MixerNeeds
from mixlab.sampling import PairSampler, RandomPairing, as_cpu_generator, numpy_rng

MixerSpec = Mixer | str | Mapping[str, Any]


class RandomChoice(Mixer):
    """Pick one mixer per batch (``mode="batch"``) or per sample (``mode="sample"``) with given weights.

    Like timm's mixup/CutMix switch and OpenMixup's multi-mode mixing. Each
    choice uses its own mixer's λ distribution. In sample mode all chosen
    methods share one partner draw and every method is computed on the whole
    batch, so the cost grows with the number of methods. Methods that mix
    inside the model (Manifold Mixup) can only be chosen per batch.

    Args:
        mixers: mixers, names, or dicts ``{"name": ..., **params}``.
        weights: non-negative weights, one per mixer (default: equal).
        mode: ``"batch"`` or ``"sample"``.
        p: probability of mixing at all (per batch, or per sample in sample mode).
        pairing, sigma: the partner rule used in sample mode (in batch mode each
            member uses its own).

    Example:
        >>> import torch, mixlab
        >>> mixer = mixlab.create_mixer("random_choice", mixers=["mixup", {"name": "cutmix", "alpha": 1.0}], weights=[0.5, 0.5])
        >>> mixer(torch.randn(4, 3, 8, 8), torch.arange(4)).inputs.shape
        torch.Size([4, 3, 8, 8])
    """

    name = "random_choice"

    def __init__(
        self,
        mixers: Sequence[MixerSpec],
        weights: Sequence[float] | None = None,
        *,
        mode: str = "batch",
        p: float = 1.0,
        pairing: str | PairSampler = "random",
        sigma: float | None = None,
        seed: int | None = None,
        num_classes: int | None = None,
        inplace: bool = False,
        validate: bool = True,
    ):
        super().__init__(
            lam=1.0,
            p=p,
            pairing=pairing,
            sigma=sigma,
            seed=seed,
            num_classes=num_classes,
            inplace=inplace,
            validate=validate,
        )
        if isinstance(mixers, (str, Mapping)) or not isinstance(mixers, Sequence) or not mixers:
            raise MixlabValueError(f"mixers must be a non-empty list of mixers, names or dicts; got {mixers!r}")
        self.mixers = [_build(spec) for spec in mixers]
        self.mode = check_choice("random_choice mode", mode, LAM_MODES)
        self.weights = _check_weights(weights, len(self.mixers))
        self.spatial = any(m.spatial for m in self.mixers)
        self.requires = frozenset().union(*(m.requires for m in self.mixers))
        if self.mode == "sample" and self.requires:
            names = [m.name for m in self.mixers if m.requires]
            raise MixlabValueError(f"mode='sample' cannot mix per sample with methods that need the model: {names}")
        self._check_members()
        self.num_classes = self._shared_num_classes()

    def _shared_num_classes(self) -> int | None:
        """One num_classes for the composition and its members, so labels are checked once per batch."""
        declared = {m.num_classes for m in self.mixers if m.num_classes is not None}
        if self.num_classes is not None:
            declared.add(self.num_classes)
        if len(declared) > 1:
            raise MixlabValueError(f"random_choice and its members declare different num_classes: {sorted(declared)}")
        return next(iter(declared), None)

    def _check_members(self) -> None:
        """Settings that belong to the composition must not be set on its members, where they would be ignored."""
        if self.mode == "batch" and not isinstance(self.pairing, RandomPairing):
            raise MixlabValueError(
                f"in mode='batch' each member draws its own partners: set pairing on the members, not on "
                f"random_choice (got pairing={self.pairing.name!r})"
            )
        for m in self.mixers:
            if isinstance(m, RandomChoice):
                raise MixlabValueError("random_choice cannot contain another random_choice; list its members instead")
            if m.inplace:
                raise MixlabValueError(f"set inplace on random_choice, not on its member {m.name!r}")
            if self.mode == "sample" and m.num_sources > 2:
                raise MixlabValueError(
                    f"in mode='sample' the members' batches are merged as two-source batches; {m.name!r} mixes "
                    f"{m.num_sources} inputs per sample: use mode='batch'"
                )
            if self.mode == "sample" and (m.p < 1.0 or not isinstance(m.pairing, RandomPairing)):
                raise MixlabValueError(
                    f"in mode='sample' one partner draw serves every member: set p and pairing on random_choice, "
                    f"not on {m.name!r} (got p={m.p}, pairing={m.pairing.name!r})"
                )

    def trainable_parameters(self) -> list:
        """The members' trainable parameters, for the training loop."""
        return [param for mixer in self.mixers for param in mixer.trainable_parameters()]

    @property
    def needs(self) -> MixerNeeds:
        """What any member needs (computed on every mixed step, whichever member is drawn)."""
        needs = MixerNeeds()
        for mixer in self.mixers:
            needs = needs.union(mixer.needs)
        return needs

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """The members' parameter groups."""
        return [group for mixer in self.mixers for group in mixer.optimizer_groups()]

    def loss_terms(self, mb: MixedBatch, outputs: Tensor) -> dict[str, Tensor]:
        """The loss terms of the member that mixed this batch (``mb.aux["choice"]``), if any."""
        choice = mb.aux.get("choice")
        return {} if choice is None else self.mixers[choice].loss_terms(mb, outputs)

    def bind_model(self, model: Any) -> None:
        """Let every member take its model-dependent defaults."""
        for mixer in self.mixers:
            mixer.bind_model(model)

    @property
    def num_sources(self) -> int:  # type: ignore[override]
        """The most inputs any member draws an output from (the config refuses two-source losses above 2)."""
        return max(mixer.num_sources for mixer in self.mixers)

    def start_training(self, total_steps: int) -> None:
        """Tell every member how long training takes."""
        for mixer in self.mixers:
            mixer.start_training(total_steps)

    def after_step(self) -> None:
        """Every member's end-of-step update."""
        for mixer in self.mixers:
            mixer.after_step()

    def to(self, device: Any) -> RandomChoice:
        """Move every member to ``device``."""
        for mixer in self.mixers:
            mixer.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The members' states, keyed by member index."""
        return {str(i): state for i, mixer in enumerate(self.mixers) if (state := mixer.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the members' states saved by :meth:`state_dict`."""
        for key, member_state in state.items():
            if not key.isdigit() or int(key) >= len(self.mixers):
                raise MixlabValueError(f"random_choice has {len(self.mixers)} members; got state for member {key!r}")
            self.mixers[int(key)].load_state_dict(member_state)

    def check(self, x: Tensor, y: Tensor) -> None:
        """Check the batch once (labels read once) and the targets against every member's pairing."""
        super().check(x, y)
        if self.validate:
            for m in self.mixers:
                m.pairing.check(y)

    def _check_context(self, context: dict[str, Any]) -> None:
        for m in self.mixers:
            m._check_context(context)

    def sample(
        self,
        x: Tensor,
        y: Tensor,
        generator: Generator | None = None,
        *,
        alpha_scale: float = 1.0,
        context: dict[str, Any] | None = None,
    ) -> MixParams:
        """Draw the choice(s), then each chosen mixer's parameters."""
        self.check(x, y)
        self._check_context(context or {})
        rng = numpy_rng(as_cpu_generator(generator, self.generator))
        if self.mode == "batch":
            if self.p < 1.0 and rng.random() >= self.p:
                return unmixed_params(x)
            k = int(rng.choice(len(self.mixers), p=self.weights))
            params = self.mixers[k]._draw(x, y, rng, alpha_scale, context)
            params.extra = {**params.extra, "choice": k}
            return params
        return self._sample_per_sample(x, y, rng, alpha_scale, context or {})

    def _sample_per_sample(
        self, x: Tensor, y: Tensor, rng: np.random.Generator, alpha_scale: float, context: dict
    ) -> MixParams:
        n = x.shape[0]
        choice = rng.choice(len(self.mixers), size=n, p=self.weights)
        if self.p < 1.0:  # -1 marks samples left unmixed
            choice = np.where(rng.random(n) < self.p, choice, -1)
        perm = self.pairing.sample(y, rng).to(x.device)
        parts = []
        for k, mixer in enumerate(self.mixers):
            lam = mixer.lam_sampler.sample(n, rng, alpha_scale=alpha_scale)
            parts.append(mixer._sample_params(x, y, perm, np.where(choice == k, lam, 1.0), rng, context))
        choice_t = torch.from_numpy(choice).to(x.device)
        lam = torch.ones(n, dtype=torch.float32, device=x.device)
        for k, part in enumerate(parts):
            lam = torch.where(choice_t == k, part.lam, lam)
        return MixParams(perm=perm, lam=lam, extra={"choice": choice_t, "parts": parts})

    def apply(self, x: Tensor, y: Tensor, params: MixParams, *, context: dict[str, Any] | None = None) -> MixedBatch:
        """Apply the chosen mixer(s)."""
        check_params_fit_batch(params, x)
        if not params.mixed:
            return MixedBatch.unmixed(x, y)
        if self.mode == "batch":
            mb = self.mixers[params.extra["choice"]].apply(x, y, params, context=context)
            mb.aux["choice"] = params.extra["choice"]
            if self.inplace and mb.inputs is not x:
                mb.inputs = x.copy_(mb.inputs)
            return mb
        choice, parts = params.extra["choice"], params.extra["parts"]
        out = x.clone()
        for k, (mixer, part) in enumerate(zip(self.mixers, parts, strict=False)):
            rows = (choice == k).nonzero().squeeze(1).to(x.device)
            if rows.numel():
                out.index_copy_(0, rows, mixer._mix(x, part, context or {}).index_select(0, rows))
        if self.inplace:
            out = x.copy_(out)
        return MixedBatch(out, y, y.index_select(0, params.perm), params.lam, params.perm)

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        # Unreachable: RandomChoice overrides sample() and refuses to be nested.
        raise MixlabTypeError("random_choice draws through its members")


def _build(spec: MixerSpec) -> Mixer:
    from mixlab.methods import create_mixer  # the registry imports this module

    if isinstance(spec, Mixer):
        return spec
    # The composition owns the mixing probability: a member named without p always mixes when chosen
    # (CutMix's own default, p = 0.5 as its authors train CIFAR, would silently halve its share).
    if isinstance(spec, str):
        return create_mixer(spec, p=1.0)
    if isinstance(spec, Mapping) and "name" in spec:
        params = dict(spec)
        return create_mixer(params.pop("name"), **{"p": 1.0, **params})
    raise MixlabTypeError(f"each mixer must be a Mixer, a name or a dict with 'name'; got {spec!r}")


def _check_weights(weights: Sequence[float] | None, count: int) -> np.ndarray:
    if weights is None:
        return np.full(count, 1.0 / count)
    if isinstance(weights, str) or not isinstance(weights, Sequence) or len(weights) != count:
        raise MixlabValueError(f"weights must be a list of {count} numbers, one per mixer; got {weights!r}")
    values = [check_non_negative("each weight", w) for w in weights]
    if sum(values) <= 0:
        raise MixlabValueError(f"weights must have a positive sum; got {list(weights)!r}")
    return np.asarray(values) / sum(values)
