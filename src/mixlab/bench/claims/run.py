"""Running claims: each claim's suite through the results store (finished runs skipped), then its verdict;
and the listing ``mixlab claims --list`` shows.

Example:
    >>> list_claim_details(["no_such_claim"])[0].valid
    False
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mixlab.bench.claims.spec import Claim, PlannedClaim, list_claims, prepare_claim, prepare_claims
from mixlab.bench.claims.verdict import INCONCLUSIVE, ClaimResult, evaluate_claim
from mixlab.bench.records import RunRecord
from mixlab.bench.runner import NullDisplay, run_suite, same_config
from mixlab.bench.store import ResultStore
from mixlab.bench.suite import SuitePlan
from mixlab.errors import MixlabError
from mixlab.evaluate.paired import RESAMPLES

# ------------------------------------------------------------------ running claims


def current_records(plan: SuitePlan, records: Sequence[RunRecord]) -> tuple[list[RunRecord], list[str]]:
    """The records of the plan's runs stored with the plan's config; and the keys stored with another config.

    A run of an older version of the suite (other epochs, say) is not evidence for this one.

    Example:
        >>> from mixlab.bench.suite import load_suite, plan_suite
        >>> current_records(plan_suite(load_suite("mnist1d")), [])
        ([], [])
    """
    specs = {spec.key: spec for spec in plan.runs}
    current, stale = [], []
    for record in records:
        spec = specs.get(record.key)
        if spec is None:
            continue
        if same_config(record.config, spec):
            current.append(record)
        else:
            stale.append(record.key)
    return current, stale


def run_claims(
    names: Sequence[str] | None,
    store: ResultStore,
    *,
    output: str | os.PathLike = "runs",
    workers: int = 1,
    data_root: str | os.PathLike | None = None,
    train: bool = True,
    display: Callable[[PlannedClaim], NullDisplay] | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> list[ClaimResult]:
    """Run each claim's suite through ``store`` (finished runs are skipped), then evaluate the claim.

    Every claim is validated and its suite planned before any training starts
    (:func:`prepare_claims` raises :class:`ClaimError` listing every problem).
    A claim whose suite fails to run is evaluated on what the store holds, with
    its ``error`` set; the others go on.

    Args:
        names: claim names or files (every claim found when ``None`` or empty).
        output: run directories go to ``output/<suite>/<run key>``.
        workers: runs trained at once (see :func:`mixlab.bench.runner.run_suite`).
        train: ``False`` evaluates what the store holds, training nothing.
        display: makes the progress display of each claim's suite.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp, ResultStore(Path(tmp) / "store.db") as store:
        ...     run_claims(["no_such_claim"], store)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mixlab.bench.claims.spec.ClaimError: 1 claim(s) cannot be run:
        unknown claim 'no_such_claim'; known: ...

    Example (shell)::

        mixlab claims mixup_label_noise --workers 2
    """
    planned = prepare_claims(names, data_root=data_root)
    return [
        _run_claim(item, store, output, workers, train, display, resamples=resamples, seed=seed) for item in planned
    ]


def _run_claim(
    item: PlannedClaim,
    store: ResultStore,
    output: str | os.PathLike,
    workers: int,
    train: bool,
    display: Callable[[PlannedClaim], NullDisplay] | None,
    **bootstrap: int,
) -> ClaimResult:
    error = None
    if train:
        try:
            run_suite(item.plan, store, output=output, workers=workers, display=display(item) if display else None)
        except Exception as failure:  # one claim's failure must not stop the others
            error = f"suite {item.suite!r} did not run: {type(failure).__name__}: {failure}"
    try:
        records, stale = current_records(item.plan, store.records(item.suite, with_predictions=True))
        result = evaluate_claim(item.claim, records, seeds=item.plan.suite.seeds, **bootstrap)
    except Exception as failure:  # an unreadable store row must not stop the other claims either
        reason = f"the runs of suite {item.suite!r} could not be evaluated: {type(failure).__name__}: {failure}"
        return ClaimResult(item.claim, (), INCONCLUSIVE, error="; ".join(filter(None, (error, reason))))
    notices = tuple(item.plan.notices)
    if stale:
        notices += (f"{len(stale)} stored run(s) of an older version of suite {item.suite!r} were left out "
                    f"({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}): run the claim to redo them",)  # fmt: skip
    return replace(result, error=error, notices=notices, total_runs=len(item.plan.runs))


# ------------------------------------------------------------------ listing claims


@dataclass(frozen=True)
class ClaimListing:
    """What ``mixlab claims --list`` shows of one claim: the claim and its suite's size, or why it is invalid.

    Example:
        >>> ClaimListing("x", error="bad file").valid
        False
    """

    name: str
    claim: Claim | None = None
    runs: int | None = None
    suite: str | None = None
    measured_s: float | None = None
    finished_runs: int = 0
    error: str | None = None

    @property
    def valid(self) -> bool:
        """Whether the claim file and its suite are valid.

        Example:
            >>> ClaimListing("x").valid
            True
        """
        return self.error is None


def list_claim_details(
    names: Sequence[str] | None = None,
    *,
    store: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
) -> list[ClaimListing]:
    """Each claim with its suite's number of runs and, when ``store`` holds its finished runs, their wall time.

    Trains nothing and creates no store; an invalid claim is listed with its error.

    Example:
        >>> list_claim_details(["no_such_claim"])[0].error  # doctest: +ELLIPSIS
        "unknown claim 'no_such_claim'; known: ..."
    """
    listings = []
    opened = ResultStore(store) if store is not None and Path(store).is_file() else None
    try:
        for name in list(dict.fromkeys(names)) if names else list_claims():
            try:
                item = prepare_claim(name, data_root=data_root)
            except MixlabError as error:
                listings.append(ClaimListing(str(name), error=str(error)))
                continue
            measured, finished = None, 0
            if opened is not None:
                records = [r for r in current_records(item.plan, opened.records(item.suite))[0] if r.finished]
                finished = len(records)
                measured = sum(r.final.get("wall_time_s", 0.0) for r in records) if records else None
            listings.append(
                ClaimListing(item.claim.name, item.claim, len(item.plan.runs), item.suite, measured, finished)
            )
    finally:
        if opened is not None:
            opened.close()
    return listings
