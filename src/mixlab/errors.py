"""Error types raised by mixlab.

Every error says what was wrong, the value seen and what is expected. Each
type is also a ``ValueError`` or ``TypeError`` so that code written against
the standard exceptions keeps working.

Example:
    >>> import mixlab
    >>> try:
    ...     mixlab.create_mixer("mixupp")
    ... except mixlab.errors.UnknownNameError as err:
    ...     print(isinstance(err, ValueError))
    True
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable


class MixlabError(Exception):
    """Base class of every error mixlab raises on purpose."""


class MixlabValueError(MixlabError, ValueError):
    """A value is outside what is accepted (a range, a shape, a label)."""


class MixlabTypeError(MixlabError, TypeError):
    """A value has the wrong type or dtype."""


class UnknownNameError(MixlabValueError):
    """A name (method, module, mode) is not among the known ones."""

    def __init__(self, kind: str, name: object, known: Iterable[str]):
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(self.known)}")


class MissingDependencyError(MixlabError, ImportError):
    """An optional dependency needed for what was asked is not installed (or cannot be imported)."""


def check_probability(name: str, value: float) -> float:
    """Return ``value`` as a float if it is a probability in [0, 1], else raise.

    Example:
        >>> check_probability("p", 0.5)
        0.5
    """
    value = _as_real(name, value)
    if not 0.0 <= value <= 1.0:
        raise MixlabValueError(f"{name} must be a probability in [0, 1]; got {value!r}")
    return value


def check_positive(name: str, value: float) -> float:
    """Return ``value`` as a float if it is finite and > 0, else raise.

    Example:
        >>> check_positive("alpha", 0.2)
        0.2
    """
    value = _as_real(name, value)
    if not (value > 0.0 and value != float("inf")):
        raise MixlabValueError(f"{name} must be a finite number > 0; got {value!r}")
    return value


def check_non_negative(name: str, value: float) -> float:
    """Return ``value`` as a float if it is finite and >= 0, else raise.

    Example:
        >>> check_non_negative("weight", 2)
        2.0
    """
    value = _as_real(name, value)
    if not 0.0 <= value < float("inf"):
        raise MixlabValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return value


def check_choice(kind: str, value: object, known: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``known``, else raise ``UnknownNameError``.

    Example:
        >>> check_choice("lam_mode", "batch", ("batch", "sample"))
        'batch'
    """
    known = tuple(known)
    if value not in known:
        raise UnknownNameError(kind, value, known)
    return value  # type: ignore[return-value]


def check_int(name: str, value: object, minimum: int = 0) -> int:
    """Return ``value`` as an int if it is an integer >= ``minimum`` (NumPy integers too), else raise.

    Example:
        >>> check_int("epochs", 3)
        3
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise MixlabTypeError(f"{name} must be an int; got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise MixlabValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def _as_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise MixlabTypeError(f"{name} must be a real number; got {value!r} of type {type(value).__name__}")
    value = float(value)
    if value != value:  # NaN
        raise MixlabValueError(f"{name} must be a number, not NaN; got {value!r}")
    return value
