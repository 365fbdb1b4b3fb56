"""How a classifier is evaluated: the settings of :func:`~mixlab.evaluate.evaluate_classifier` and of the analyses.

Example:
    >>> EvalSettings(analyses=["calibration"]).analyses
    ['calibration']
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mixlab.evaluate.gap import MAX_BINS
from mixlab.evaluate.sources import SOURCES

#: the analyses a suite can turn on under ``evaluate: {analyses: [...]}``, in the order they run.
ANALYSES = ("calibration", "ood", "corruptions", "transfer", "gap", "geometry")


class EvalSettings(BaseModel):
    """How a classifier is evaluated: attack radius, noise level, batch size, calibration bins, seed.

    Args:
        fgsm_eps: FGSM L∞ radius in the raw [0, 1] input scale (2/255: two grey levels).
        noise_std: standard deviation of the Gaussian noise, same scale.
        batch_size: samples per forward pass.
        n_bins: confidence bins of the ECE and the reliability diagram.
        seed: seed of the noise and of every analysis.
        analyses: the analyses to run after training, any of ``calibration``, ``ood``, ``corruptions``,
            ``transfer``, ``gap``, ``geometry`` (see :mod:`mixlab.evaluate.analysis`).
        ood, transfer: the out-of-distribution sources and transfer targets (:mod:`mixlab.evaluate.sources`);
            ``None``: the held-out classes when the run leaves classes out, and another dataset of the
            model's input kind.
        corruptions: the corruptions to apply (``None``: all for the input kind).
        ood_samples, corruption_samples, transfer_samples: at most this many samples of each source or of the
            test set (a seeded subset; ``None``: all).
        gap_samples, gap_bins, gap_permutations: real and mixed training samples, λ bins and permutations of
            the mixed-vs-real gap.
        gap_batch_size: the batches the gap mixes: small, since a batch-mode mixer draws one λ per batch and the
            λ bins need many draws (25: 40 draws for 1,000 samples).
        nc_samples: training samples for neural collapse (``None``: all).
        hessian_samples, hessian_probes: the fixed training subset and Rademacher probes of the Hessian trace.
        sharpness_sigma, sharpness_draws: relative weight-noise size and draws of the average sharpness.

    Example:
        >>> EvalSettings(noise_std=0.2).batch_size
        1000
    """

    model_config = ConfigDict(extra="forbid")

    fgsm_eps: float = Field(2 / 255, ge=0.0)
    noise_std: float = Field(0.1, ge=0.0)
    batch_size: int = Field(1000, gt=0)
    n_bins: int = Field(15, ge=2)
    seed: int = Field(0, ge=0)
    # The analyses run after training (mixlab.evaluate.analysis): which, on what data, at what size.
    analyses: list[Literal[ANALYSES]] = Field(default_factory=list)  # type: ignore[valid-type]
    ood: list[Literal[SOURCES]] | None = None  # type: ignore[valid-type]
    transfer: list[Literal[SOURCES]] | None = None  # type: ignore[valid-type]
    corruptions: list[str] | None = None
    ood_samples: int | None = Field(2000, gt=0)
    corruption_samples: int | None = Field(1000, gt=0)
    transfer_samples: int | None = Field(2000, gt=0)
    gap_samples: int = Field(1000, ge=40)
    gap_bins: int = Field(5, ge=1, le=MAX_BINS)
    gap_permutations: int = Field(200, ge=19)
    gap_batch_size: int = Field(25, ge=2)
    nc_samples: int | None = Field(5000, gt=0)
    hessian_samples: int = Field(256, gt=0)
    hessian_probes: int = Field(8, gt=0)
    sharpness_sigma: float = Field(0.01, gt=0.0)
    sharpness_draws: int = Field(5, gt=0)

    @field_validator("analyses", "ood", "transfer", "corruptions")
    @classmethod
    def _distinct(cls, names: list[str] | None) -> list[str] | None:
        repeated = sorted({name for name in names or () if names.count(name) > 1})
        if repeated:
            raise ValueError(f"names must not repeat; repeated: {', '.join(repeated)}")
        return names
