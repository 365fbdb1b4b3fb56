"""Claims: published findings about mixup, each tested at CPU scale by a benchmark suite and a decision rule.

A claim file (``configs/claims/<name>.yaml``) names the paper and its figure, the
suite that is the experiment (``configs/suites/claim_<name>.yaml``, run through
the same results store as ``mixlab bench``) and one or more *checks*: a method, a
baseline, a statistic and the direction the paper reports. Each check's 95 %
interval of ``method − baseline`` (runs paired by seed) decides it:

- per-sample test statistics (``top1``, ``nll``, ``brier``, ``ece``; ``rmse``,
  ``mae``, ``mse``): the hull of the paired bootstrap over test samples and the
  t-interval over seeds (:func:`mixlab.evaluate.paired.compare_predictions`);
- final run metrics (``fgsm_acc``, ``train_time_s``, ...) and epoch metrics of
  the training log (``test_acc`` with ``epoch: N``): the t-interval over seeds
  of the per-seed differences, or of the ratios − 1 with ``relative: true``.

A check expecting ``higher`` is *reproduced* when its interval lies above
``+margin``, *not reproduced* when it lies below zero (or within
``±equivalence``, when set), and *inconclusive* otherwise; ``lower`` is the
mirror image; ``same`` is reproduced when the interval lies within
``±equivalence`` and not reproduced when it lies entirely beyond it;
``not_lower`` ("does as well as", non-inferiority) is reproduced when the
interval lies above ``-margin`` and not reproduced when it lies below it
(``not_higher``: the mirror image). A claim is
reproduced when every check is, not reproduced when any is not.

Every claim file, and its suite's plan, is validated before any training starts.

The package, by seam:

- :mod:`~mixlab.bench.claims.spec`: the claim-file models, finding and loading
  claim files, and checking a claim against its suite (:func:`prepare_claim`);
- :mod:`~mixlab.bench.claims.verdict`: the verdict rules and evaluating a claim
  on stored runs;
- :mod:`~mixlab.bench.claims.run`: running claims' suites, and their listing;
- :mod:`~mixlab.bench.claims.render`: the claims report (Markdown and HTML).

Example:
    >>> check_verdict("higher", 0.004, 0.021)
    'reproduced'
    >>> check_verdict("same", -0.004, 0.021, equivalence=0.01)
    'inconclusive'
"""

from mixlab.bench.claims.render import (
    claims_html,
    claims_markdown,
    describe_check,
    format_difference,
    format_value,
    write_claims_report,
)
from mixlab.bench.claims.run import ClaimListing, current_records, list_claim_details, run_claims
from mixlab.bench.claims.spec import (
    CLAIM_DIRS,
    EPOCH_METRICS,
    EXAMPLE_CLAIM,
    FINAL_METRICS,
    MAX_BUDGET_MINUTES,
    MIN_SEEDS,
    PER_SAMPLE_STATISTICS,
    Claim,
    ClaimCheck,
    ClaimError,
    Paper,
    PlannedClaim,
    claim_path,
    list_claims,
    load_claim,
    prepare_claim,
    prepare_claims,
)
from mixlab.bench.claims.verdict import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    VERDICTS,
    CheckResult,
    ClaimResult,
    check_verdict,
    claim_verdict,
    evaluate_check,
    evaluate_claim,
)

__all__ = [
    "CLAIM_DIRS",
    "EPOCH_METRICS",
    "EXAMPLE_CLAIM",
    "FINAL_METRICS",
    "INCONCLUSIVE",
    "MAX_BUDGET_MINUTES",
    "MIN_SEEDS",
    "NOT_REPRODUCED",
    "PER_SAMPLE_STATISTICS",
    "REPRODUCED",
    "VERDICTS",
    "CheckResult",
    "Claim",
    "ClaimCheck",
    "ClaimError",
    "ClaimListing",
    "ClaimResult",
    "Paper",
    "PlannedClaim",
    "check_verdict",
    "claim_path",
    "claim_verdict",
    "claims_html",
    "claims_markdown",
    "current_records",
    "describe_check",
    "evaluate_check",
    "evaluate_claim",
    "format_difference",
    "format_value",
    "list_claim_details",
    "list_claims",
    "load_claim",
    "prepare_claim",
    "prepare_claims",
    "run_claims",
    "write_claims_report",
]
