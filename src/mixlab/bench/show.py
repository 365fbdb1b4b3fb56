"""What a mixing method does, as a picture: for a few pairs, sample A, its partner B and the mix.

:func:`mix_figure` draws the picture as a matplotlib ``Figure``, :func:`mix_grid` as an RGB
array (what the report's gallery uses, see :func:`mix_gallery`), and :func:`show_method`
draws it for a dataset's test split into a PNG file. Images ``(N, C, H, W)`` (uint8 or float)
are shown as pictures (grey for one channel, RGB for three), signals ``(N, C, L)`` as lines.

Methods that mix hidden features inside the model (Manifold Mixup) leave the inputs as they
are; their picture shows the pairs and λ with a caption saying so.

Example:
    >>> import torch
    >>> x, y = torch.rand(8, 1, 16, 16), torch.arange(8) % 4
    >>> mix_grid("cutmix", x, y, pairs=2).dtype
    dtype('uint8')
"""

from __future__ import annotations

import io
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from mixlab.batch import MixedBatch
from mixlab.bench.records import BASELINE_METHOD, RunRecord
from mixlab.errors import MixlabTypeError, MixlabValueError, UnknownNameError, check_choice, check_int

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from mixlab.methods import Mixer

NO_MIXING = "none"
DPI = 110
#: how many samples per displayed pair go through the mixer, so that enough partners have another label.
_BATCH_PER_PAIR = 4
_ROWS = ("A", "B", "mixed")
#: ``grid``: rows A, B and mixed, one column per pair; ``strip``: one line of (A, B, mixed) triplets.
LAYOUTS = ("grid", "strip")
_SIGNAL_COLOURS = {"A": "#1f77b4", "B": "#ff7f0e", "mixed": "#2ca02c"}
_CAPTIONS = {
    "input": "{method}: the mixed input made from A and B; λ is the weight of A in the label",
    "hidden": "{method} mixes hidden features inside the model, so the inputs are unchanged; "
    "λ is the weight of A in the hidden mix and the label",
    "none": "no mixing: the model sees A unchanged",
    "unmixed": "{method} left this batch unmixed (it mixes with probability p < 1)",
}


def mix_figure(
    mix: Mapping[str, Any] | str,
    x: Tensor,
    y: Tensor,
    *,
    pairs: int = 6,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    layout: str = "grid",
) -> Figure:
    """Draw ``pairs`` pairs mixed by a method: one column per pair, rows A, B and the mixed input.

    Args:
        mix: a method name (``"none"`` for no mixing) or a config's ``mix`` section
            ``{"method": ..., "options": {...}}`` (other keys are ignored).
        x: images ``(N, C, H, W)`` with 1 or 3 channels (uint8, or float), or signals ``(N, C, L)``.
        y: class indices ``(N,)`` (soft labels ``(N, K)`` and regression targets are shown too).
        pairs: how many pairs to draw (at most ``N``).
        seed: seeds the mixer's draws; the same seed gives the same picture.
        class_names: names of the class indices, for the titles.
        layout: ``"grid"`` (rows A, B, mixed; one column per pair) or ``"strip"`` (one line of
            A, B, mixed triplets, as in the report's gallery).

    Samples are taken across classes and the pairs shown are those whose partner has another
    label when there are enough, so the mix is visible.

    Example:
        >>> import torch
        >>> figure = mix_figure({"method": "mixup", "options": {"alpha": 1.0}}, torch.rand(6, 3, 8, 8), torch.arange(6), pairs=3)
        >>> len(figure.axes)
        9
    """
    method, options = parse_mix(mix)
    pairs, seed = _check_pairs(pairs), check_int("seed", seed)
    layout = check_choice("layout", layout, LAYOUTS)
    _check_batch(x, y)
    index = spread_classes(y, min(x.shape[0], _BATCH_PER_PAIR * pairs))
    batch, labels = _as_float(x[index].cpu()), y[index].cpu()
    model = display_model(method, batch, labels) if reads_model(method) else None
    mixer = build_display_mixer(method, options, seed, model=model)
    mixed = _mix(mixer, batch, labels, seed, model)
    kind = _kind(mixer, options, mixed, batch)
    shown = partner_indices(labels, mixed.perm, pairs)
    return _draw(method, kind, batch, labels, mixed, shown, class_names, layout)


def mix_grid(
    mix: Mapping[str, Any] | str,
    x: Tensor,
    y: Tensor,
    *,
    pairs: int = 6,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    layout: str = "grid",
) -> np.ndarray:
    """:func:`mix_figure` rendered to a uint8 RGB array ``(H, W, 3)``.

    Example:
        >>> import torch
        >>> image = mix_grid("manifold_mixup", torch.rand(4, 1, 28, 28), torch.arange(4), pairs=2)
        >>> image.ndim, image.shape[2]
        (3, 3)
    """
    from mixlab.bench.report import figure_to_array

    figure = mix_figure(mix, x, y, pairs=pairs, seed=seed, class_names=class_names, layout=layout)
    return figure_to_array(figure)


def show_method(
    method: str,
    *,
    dataset: str = "fashion_mnist",
    output: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    pairs: int = 6,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
) -> Path:
    """Draw what ``method`` does to pairs of ``dataset``'s test split into the PNG file ``output``.

    The method and its options are checked before any data is read (an unknown name raises
    :class:`~mixlab.errors.UnknownNameError` listing the known ones). The file is written atomically.
    Returns ``output`` as a ``Path``.
    """
    from mixlab.data import load_dataset
    from mixlab.engine.checkpoint import atomic_write_bytes

    options = dict(options or {})
    pairs, seed = _check_pairs(pairs), check_int("seed", seed)
    check_display_method(method, options, seed)
    splits = load_dataset(dataset, root=data_root)
    x, y = pick_samples(splits.test, _BATCH_PER_PAIR * pairs)
    figure = mix_figure(
        {"method": method, "options": options}, x, y, pairs=pairs, seed=seed, class_names=splits.class_names
    )
    figure.suptitle(f"{figure.get_suptitle()}\n{dataset}, test split", fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    output = Path(os.fspath(output))
    atomic_write_bytes(output, buffer.getvalue())
    return output


# ------------------------------------------------------------------ gallery callables for the report


def mix_gallery(
    x: Tensor, y: Tensor, *, pairs: int = 4, seed: int = 0, class_names: Sequence[str] | None = None
) -> Callable[[RunRecord], np.ndarray]:
    """A ``gallery`` for :func:`mixlab.bench.report.write_report`: each run's method drawn on ``(x, y)``.

    The method and options come from the run's ``config["mix"]`` (the run's method label when the
    config has none, the baseline meaning no mixing).

    Example:
        >>> import torch
        >>> draw = mix_gallery(torch.rand(8, 1, 12, 12), torch.arange(8) % 4, pairs=2)
        >>> draw(RunRecord("s", 1, "k", "d", "m", "erm", 0)).shape[2]
        3
    """

    def draw(record: RunRecord) -> np.ndarray:
        return mix_grid(run_mix(record), x, y, pairs=pairs, seed=seed, class_names=class_names, layout="strip")

    return draw


def dataset_gallery(
    *, data_root: str | os.PathLike | None = None, pairs: int = 4, seed: int = 0
) -> Callable[[RunRecord], np.ndarray | None]:
    """A ``gallery`` that draws each run's method on its own dataset's test split (loaded once per dataset).

    Runs whose dataset cannot be loaded, or is not images or signals, get ``None`` (left out of the gallery).
    """
    from mixlab.data import load_dataset
    from mixlab.errors import MixlabError

    loaded: dict[str, tuple[Tensor, Tensor, Sequence[str] | None] | None] = {}

    def samples(name: str, root: str | os.PathLike | None) -> tuple[Tensor, Tensor, Sequence[str] | None] | None:
        if name not in loaded:
            try:
                splits = load_dataset(name, root=root)
                loaded[name] = (*pick_samples(splits.test, _BATCH_PER_PAIR * pairs), splits.class_names)
            except MixlabError:
                loaded[name] = None
        return loaded[name]

    def draw(record: RunRecord) -> np.ndarray | None:
        # the data root the run itself used, unless the caller names one
        root = data_root if data_root is not None else (record.config.get("data") or {}).get("root")
        found = samples(record.dataset, root)
        if found is None or found[0].ndim not in (3, 4):
            return None
        x, y, class_names = found
        return mix_grid(run_mix(record), x, y, pairs=pairs, seed=seed, class_names=class_names, layout="strip")

    return draw


def run_mix(record: RunRecord) -> dict[str, Any]:
    """The ``mix`` section of a run's config, or one made from its method label.

    Example:
        >>> run_mix(RunRecord("s", 1, "k", "d", "m", "erm", 0))
        {'method': 'none', 'options': {}}
    """
    mix = record.config.get("mix") if isinstance(record.config, dict) else None
    if isinstance(mix, dict) and "method" in mix:
        return {"method": mix["method"], "options": dict(mix.get("options") or {})}
    return {"method": NO_MIXING if record.method == BASELINE_METHOD else record.method, "options": {}}


# ------------------------------------------------------------------ building and mixing


def parse_mix(mix: Mapping[str, Any] | str) -> tuple[str, dict[str, Any]]:
    """``(method, options)`` from a method name or a ``{"method", "options"}`` mapping.

    Example:
        >>> parse_mix({"method": "cutmix", "options": {"alpha": 1.0}, "loss": "ce"})
        ('cutmix', {'alpha': 1.0})
    """
    if isinstance(mix, str):
        return mix, {}
    if not isinstance(mix, Mapping) or not isinstance(mix.get("method"), str):
        raise MixlabTypeError(f"mix must be a method name or a mapping with a 'method' name; got {mix!r}")
    options = mix.get("options") or {}
    if not isinstance(options, Mapping):
        raise MixlabTypeError(f"mix options must be a mapping; got {options!r}")
    return mix["method"], dict(options)


def build_display_mixer(
    method: str, options: Mapping[str, Any], seed: int, model: torch.nn.Module | None = None
) -> Mixer | None:
    """The mixer for ``method`` with ``options`` (None for ``"none"``), built as the engine builds it.

    With ``model``, model-aware mixers get it (and Manifold Mixup its default layers) as in training.

    Raises:
        UnknownNameError: ``method`` is neither ``"none"`` nor a registered mixer (the known ones are listed).

    Example:
        >>> type(build_display_mixer("fmix", {}, 0)).__name__
        'FMix'
    """
    from mixlab.methods import create_mixer, list_mixers

    if method == NO_MIXING:
        if options:
            raise MixlabValueError(f"method 'none' takes no options; got {sorted(options)}")
        return None
    if method not in list_mixers():
        raise UnknownNameError("mixer", method, [NO_MIXING, *list_mixers()])
    if model is None:
        return create_mixer(method, **{"seed": seed, "p": 1.0, **options})  # the gallery always shows a mix
    from mixlab.engine.builders import build_mixer
    from mixlab.engine.config import MixConfig

    return build_mixer(MixConfig(method=method, options={"p": 1.0, **options}), model, seed=seed)


def check_display_method(method: str, options: Mapping[str, Any], seed: int) -> None:
    """Refuse an unknown method or option before any data is read (model-aware ones: by their accepted options).

    Example:
        >>> check_display_method("puzzlemix", {"beta": 1.0}, 0)
    """
    from mixlab.methods import accepted_params

    if not reads_model(method):
        build_display_mixer(*parse_mix({"method": method, "options": options}), seed)
        return
    unknown = sorted(set(options) - accepted_params(method))
    if unknown:
        raise MixlabTypeError(f"{method} does not take {', '.join(unknown)}; it accepts: {', '.join(sorted(accepted_params(method)))}")


def reads_model(method: str) -> bool:
    """Whether drawing ``method`` needs a model (saliency, features, attention, a learned generator).

    Manifold Mixup is drawn without one: it mixes hidden states, which a picture of inputs cannot show.

    Example:
        >>> reads_model("puzzlemix"), reads_model("manifold_mixup"), reads_model("none")
        (True, False, False)
    """
    from mixlab.methods import MIXERS, MODEL_AWARE_MIXERS, ManifoldMixup

    cls = MIXERS.get(method)
    return cls in MODEL_AWARE_MIXERS and cls is not ManifoldMixup


def display_model(method: str, x: Tensor, y: Tensor) -> torch.nn.Module:
    """An untrained, seeded model for drawing a model-aware mixer: ``vit_tiny`` when it reads attention,
    else ``cnn_small`` (images) or ``cnn1d`` (signals), sized for ``x``.

    Example:
        >>> import torch
        >>> type(display_model("puzzlemix", torch.rand(2, 1, 28, 28), torch.arange(2))).__name__
        'CNNSmall'
    """
    from mixlab.methods import MIXERS
    from mixlab.models import create_model

    classes = int(y.max()) + 1 if y.ndim == 1 and not y.is_floating_point() else (y.shape[1] if y.ndim == 2 else 1)
    attention = "attention" in MIXERS[method].requires
    name = "vit_tiny" if attention else ("cnn_small" if x.ndim == 4 else "cnn1d")
    torch.manual_seed(0)
    model = create_model(name, num_classes=max(classes, 2), in_channels=x.shape[1], input_size=tuple(x.shape[2:]))
    return model.eval()


def _mix(mixer: Mixer | None, batch: Tensor, labels: Tensor, seed: int, model: torch.nn.Module | None) -> MixedBatch:
    if mixer is None:
        unmixed = MixedBatch.unmixed(batch, labels)
        # without mixing there is no partner; show the next sample as B so the rows stay comparable
        unmixed.perm = torch.roll(torch.arange(batch.shape[0]), -1)
        return unmixed
    if model is None:
        return mixer(batch, labels, generator=torch.Generator().manual_seed(seed))
    from mixlab.methods.context import MixContext

    context = MixContext(mixer, model)(batch, labels)
    with torch.no_grad():  # learned mixers' outputs carry gradient to their generator: not wanted for a picture
        mixed = mixer(batch, labels, generator=torch.Generator().manual_seed(seed), context=context)
        mixed.forward(model)  # methods that set the label from the forward (TransMix, SUMix) do so here
    mixed.inputs, mixed.lam = mixed.inputs.detach(), mixed.lam.detach()
    return mixed


def _kind(mixer: Mixer | None, options: Mapping[str, Any], mixed: MixedBatch, batch: Tensor) -> str:
    """``none``, ``hidden`` (mixing inside the model), ``unmixed`` (skipped this draw) or ``input``."""
    from mixlab.methods import ManifoldMixup

    if mixer is None:
        return "none"
    # Built without a model, Manifold Mixup falls back to the input layer; in training the model's
    # own layers are used, so unless layers were given the input is not where it mixes.
    needs_model = isinstance(mixer, ManifoldMixup) and "layers" not in options
    if needs_model:
        return "hidden"
    # TransMix and SUMix mix the input and also set forward_fn (to relabel from the forward)
    if mixed.forward_fn is not None and torch.equal(mixed.inputs, batch):
        return "hidden"
    if torch.equal(mixed.inputs, batch):
        return "unmixed" if bool((mixed.lam == 1).all()) else "hidden"
    return "input"


def spread_classes(y: Tensor, count: int) -> Tensor:
    """Indices of ``count`` samples taken round-robin over the classes of ``y`` (first ``count`` for other targets).

    Example:
        >>> spread_classes(torch.tensor([0, 0, 0, 1, 1, 2]), 4).tolist()
        [0, 3, 5, 1]
    """
    count = min(count, y.shape[0])
    if y.ndim != 1 or y.is_floating_point():
        return torch.arange(count)
    labels = y.cpu().numpy()
    _, first = np.unique(labels, return_index=True)
    per_class = [np.flatnonzero(labels == labels[i])[:count] for i in sorted(first)]
    rounds = [int(group[k]) for k in range(count) for group in per_class if k < len(group)]
    return torch.tensor(rounds[:count], dtype=torch.long)


def partner_indices(labels: Tensor, perm: Tensor, pairs: int) -> list[int]:
    """Up to ``pairs`` sample indices, those whose partner has another label first, then another sample.

    Example:
        >>> partner_indices(torch.tensor([0, 0, 1, 1]), torch.tensor([1, 0, 0, 2]), 2)
        [2, 0]
    """
    keys = [_label_key(label) for label in labels]
    other_label = [i for i, j in enumerate(perm.tolist()) if keys[i] != keys[j]]
    other_sample = [i for i, j in enumerate(perm.tolist()) if i != j and i not in other_label]
    rest = [i for i in range(len(keys)) if i not in other_label and i not in other_sample]
    return (other_label + other_sample + rest)[:pairs]


def pick_samples(split: Any, count: int) -> tuple[Tensor, Tensor]:
    """``count`` samples of a data split (ArrayData or ImageFolderData) spread over its classes, as tensors."""
    subset = split.subset(spread_classes(split.labels, count))
    if hasattr(subset, "to_array"):  # image files are decoded only for the samples drawn
        subset = subset.to_array()
    return subset.x, subset.y


def _label_key(label: Tensor) -> Any:
    if label.ndim == 0:
        return label.item()
    return int(label.argmax()) if label.ndim == 1 else tuple(label.flatten().tolist())


def _check_batch(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise MixlabTypeError(f"x and y must be tensors; got {type(x).__name__} and {type(y).__name__}")
    if x.ndim not in (3, 4):
        raise MixlabValueError(
            f"a mix picture needs images (N, C, H, W) or signals (N, C, L); got x of shape {tuple(x.shape)}"
        )
    if x.ndim == 4 and x.shape[1] not in (1, 3):
        raise MixlabValueError(f"images must have 1 or 3 channels to be shown; got x of shape {tuple(x.shape)}")
    if x.shape[0] < 2 or y.shape[0] != x.shape[0]:
        raise MixlabValueError(
            f"a mix picture needs at least 2 samples and one label per sample; got x {tuple(x.shape)}, y {tuple(y.shape)}"
        )


def _as_float(x: Tensor) -> Tensor:
    """Inputs as the engine feeds them to a mixer: uint8 scaled to [0, 1], floats as they are."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return x if x.is_floating_point() else x.float()


# ------------------------------------------------------------------ drawing


def _draw(
    method: str,
    kind: str,
    batch: Tensor,
    labels: Tensor,
    mixed: MixedBatch,
    shown: list[int],
    class_names: Sequence[str] | None,
    layout: str,
) -> Figure:
    from mixlab.bench.report import new_figure

    partners = mixed.perm[shown]
    rows = {
        "A": batch[shown],
        "B": batch[partners],
        # a hidden-feature method feeds A itself to the model: show that, not a mix that never happens
        "mixed": batch[shown] if kind in ("hidden", "none") else mixed.inputs[shown],
    }
    width, height = (1.45, 1.6) if batch.ndim == 4 else (2.3, 1.4)
    lines, columns = (len(_ROWS), len(shown)) if layout == "grid" else (1, len(_ROWS) * len(shown))
    figure = new_figure(width * columns + 0.5, height * lines + 0.6)
    axes_grid = figure.subplots(lines, columns, squeeze=False)
    draw_panel = _image_panel if batch.ndim == 4 else _signal_panel
    scale = _display_range(rows)
    titles = _titles(kind, labels, shown, partners, mixed.lam[shown], class_names)
    for (line, place), row_name, column in _placements(layout, len(shown)):
        axes = axes_grid[line, place]
        draw_panel(axes, rows, row_name, column, scale)
        axes.set_title(titles[row_name][column], fontsize=7.5)
        axes.set_xticks([])
        axes.set_yticks([])
    if layout == "grid":
        for line, row_name in enumerate(_ROWS):
            label = "model input" if row_name == "mixed" and kind != "input" else row_name
            axes_grid[line, 0].set_ylabel(label, fontsize=9)
    caption = _CAPTIONS[kind].format(method=method)
    figure.suptitle(textwrap.fill(caption, width=int(13 * figure.get_figwidth())), fontsize=9)
    return figure


def _placements(layout: str, pairs: int) -> list[tuple[tuple[int, int], str, int]]:
    """``((line, place), row name, pair)`` of every panel: rows A/B/mixed in a grid, or triplets side by side."""
    if layout == "grid":
        return [((line, pair), name, pair) for line, name in enumerate(_ROWS) for pair in range(pairs)]
    return [((0, len(_ROWS) * pair + offset), name, pair) for pair in range(pairs) for offset, name in enumerate(_ROWS)]


def _titles(
    kind: str, labels: Tensor, shown: list[int], partners: Tensor, lam: Tensor, class_names: Sequence[str] | None
) -> dict[str, list[str]]:
    names_a = [_label_text(labels[i], class_names) for i in shown]
    names_b = [_label_text(labels[j], class_names) for j in partners.tolist()]
    mixed_prefix = {"input": "mix ", "hidden": "input, ", "unmixed": ""}
    mixed = ["A unchanged" if kind == "none" else f"{mixed_prefix[kind]}λ={float(value):.2f}" for value in lam]
    return {"A": [f"A: {name}" for name in names_a], "B": [f"B: {name}" for name in names_b], "mixed": mixed}


def _label_text(label: Tensor, class_names: Sequence[str] | None) -> str:
    if label.ndim == 1:  # soft label: its strongest class
        label = label.argmax()
    if label.is_floating_point():
        return f"{float(label):.3g}"
    index = int(label)
    return str(class_names[index]) if class_names is not None and 0 <= index < len(class_names) else str(index)


def _display_range(rows: dict[str, Tensor]) -> tuple[float, float]:
    """[0, 1] for images in that range, else the joint range of everything shown (one scale for all panels)."""
    values = torch.cat([row.flatten() for row in rows.values()]).float()
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:
        return 0.0, 1.0
    return low, high if high > low else low + 1.0


def _image_panel(axes: Axes, rows: dict[str, Tensor], row_name: str, column: int, scale: tuple[float, float]) -> None:
    low, high = scale
    image = ((rows[row_name][column].float() - low) / (high - low)).clamp(0, 1)
    if image.shape[0] == 1:
        axes.imshow(image[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        axes.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")


def _signal_panel(axes: Axes, rows: dict[str, Tensor], row_name: str, column: int, scale: tuple[float, float]) -> None:
    if row_name == "mixed":  # A and B faintly behind the mix, to see where it comes from
        for source in ("A", "B"):
            _plot_channels(axes, rows[source][column], _SIGNAL_COLOURS[source], alpha=0.35, width=0.8)
    _plot_channels(axes, rows[row_name][column], _SIGNAL_COLOURS[row_name], alpha=1.0, width=1.3)
    margin = 0.05 * (scale[1] - scale[0])
    axes.set_ylim(scale[0] - margin, scale[1] + margin)


def _plot_channels(axes: Axes, signal: Tensor, colour: str, *, alpha: float, width: float) -> None:
    for channel in signal.float():
        axes.plot(channel.numpy(), color=colour, alpha=alpha, linewidth=width)


#: the most pairs a picture shows: each is a column of three images, and more are unreadable (and slow to draw).
MAX_PAIRS = 32


def _check_pairs(pairs: object) -> int:
    pairs = check_int("pairs", pairs, 1)
    if pairs > MAX_PAIRS:
        raise MixlabValueError(f"pairs must be at most {MAX_PAIRS} (one column each); got {pairs}")
    return pairs
