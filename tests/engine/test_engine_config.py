"""Config validation: every problem names its key path, the value seen and what is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixlab.engine.builders import build_objective, build_schedule, lr_factor
from mixlab.engine.config import (
    ConfigError,
    MixConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    apply_overrides,
    config_diff,
    config_to_dict,
    load_config,
)

RECIPES = sorted((Path(__file__).parents[2] / "configs" / "recipes").glob("*.yaml"))


def test_recipes_exist_and_validate():
    names = {p.stem for p in RECIPES}
    for required in (
        "fashion_mnist_erm",
        "fashion_mnist_mixup",
        "fashion_mnist_cutmix",
        "fashion_mnist_fmix",
        "diabetes_c_mixup",
        "cifar100_preact_resnet18_mixup",
        "mnist1d_mixup",
    ):
        assert required in names
    for path in RECIPES:
        config = load_config(path)
        assert config.name == path.stem


def test_cifar100_recipe_mirrors_the_openmixup_setting():
    config = load_config(Path(RECIPES[0]).parent / "cifar100_preact_resnet18_mixup.yaml")
    assert (config.model.name, config.train.epochs, config.train.batch_size) == ("preact_resnet18", 200, 100)
    assert (config.optim.name, config.optim.lr, config.optim.lr_schedule, config.optim.weight_decay) == (
        "sgd",
        0.1,
        "cosine",
        1e-4,
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochz=3", ["train.epochz", "unknown key; accepted: amp, batch_size, channels_last", "epochs"]),
        ("mix.schedule=[{kind: warmup, option: {}}]", ["mix.schedule.0.option", "accepted: kind, options"]),
        ("train.epochs=three", ["train.epochs", "'three'", "integer"]),
        ("train.epochs=0", ["train.epochs", "greater than 0", "got 0"]),
        ("optim.lr=-0.1", ["optim.lr", "greater than 0", "-0.1"]),
        ("optim.name=adam", ["optim.name", "'sgd' or 'adamw'", "'adam'"]),
        ("data.val_fraction=1.5", ["data.val_fraction", "less than 1", "1.5"]),
        ("train.device=gpu", ["train.device", "cuda:N", "'gpu'"]),
        ("data.name=imagenet", ["data.name", "unknown dataset 'imagenet'", "fashion_mnist"]),
        ("model.name=resnet9000", ["model.name", "unknown model 'resnet9000'", "cnn_small"]),
        ("mix.method=mixupp", ["mix.method", "unknown mixer 'mixupp'", "cutmix"]),
        ("mix.options.alhpa=1", ["mix", "alhpa", "accepts"]),
        ("mix.options.alpha=-1", ["mix", "alpha", "-1"]),
    ],
)
def test_bad_values_name_the_key_and_value(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config({"mix": {"method": "cutmix"}}, [override])
    for fragment in expected:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_model_aliases_are_accepted():
    assert load_config(None, ["model.name=wrn_28_10"]).model.name == "wrn_28_10"
    assert load_config(None, ["model.name=timm:resnet18"]).model.name == "timm:resnet18"


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epochs=-1", "optim.lr=0"])
    message = str(info.value)
    assert "2 problem(s)" in message and "train.epochs" in message and "optim.lr" in message


def test_bad_schedule_and_loss_options():
    with pytest.raises(ConfigError, match=r"mix\.schedule\.0\.kind"):
        load_config(None, ["mix.method=mixup", "mix.schedule=[{kind: sometimes}]"])
    with pytest.raises(ConfigError, match="stop_after"):
        load_config(None, ["mix.method=mixup", "mix.schedule=[{kind: stop_after, options: {epoch: 3}}]"])
    with pytest.raises(ConfigError, match="needs a mixing method"):
        load_config(None, ["mix.loss=decoupled"])
    with pytest.raises(Exception, match="accepted: eta, lam_power"):
        build_objective(MixConfig(method="mixup", loss="decoupled", loss_options={"beta": 1}), "classification")
    with pytest.raises(Exception, match="mse is for regression"):
        build_objective(MixConfig(loss="mse"), "classification")


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listed)


def test_overrides_parse_yaml_values_and_nest():
    raw = apply_overrides(
        {"train": {"epochs": 5}}, ["train.epochs=3", "optim.milestones=[1, 2]", "train.grad_clip=null"]
    )
    assert raw == {"train": {"epochs": 3, "grad_clip": None}, "optim": {"milestones": [1, 2]}}
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"train": {"epochs": 5}}, ["train.epochs.value=3"])


def test_config_diff_lists_changed_keys():
    a = config_to_dict(RunConfig())
    b = config_to_dict(load_config(None, ["train.epochs=4", "mix.method=mixup"]))
    assert config_diff(a, b) == ["mix.method: 'none' -> 'mixup'", "train.epochs: 10 -> 4"]


def test_lr_schedules():
    cosine = lr_factor(OptimConfig(lr_schedule="cosine", min_lr=0.01), steps_per_epoch=10, epochs=2)
    # the floor is min_lr / lr = 0.1
    assert [round(cosine(s), 6) for s in (0, 10, 20)] == [1.0, 0.55, 0.1]
    step = lr_factor(OptimConfig(lr_schedule="step", milestones=[1, 2], gamma=0.5), steps_per_epoch=10, epochs=3)
    assert [step(s) for s in (0, 9, 10, 19, 20)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    warm = lr_factor(OptimConfig(lr_schedule="constant", warmup_epochs=0.5), steps_per_epoch=10, epochs=1)
    assert [warm(s) for s in (0, 4, 5, 9)] == [0.2, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="milestones"):
        OptimConfig(lr_schedule="step")


def test_schedules_compose():
    schedule = build_schedule(
        [ScheduleConfig(kind="warmup", options={"epochs": 1}), ScheduleConfig(kind="stop_after", options={"epochs": 3})]
    )
    assert [schedule.active(0, e) for e in range(5)] == [False, True, True, False, False]


@pytest.mark.parametrize(
    ("loss", "options", "match"),
    [
        ("regmixup", {"scaling": "half"}, r"scaling for 'regmixup' 'half'; known: code, paper"),
        ("decoupled", {"classes": "all"}, r"classes for 'decoupled' 'all'; known: both, larger, smaller"),
        ("bce", {"class_reduction": "max"}, r"class_reduction for 'bce' 'max'; known: mean, sum"),
    ],
)
def test_loss_option_values_are_refused_before_training(loss, options, match):
    from mixlab.engine.config import MixConfig

    with pytest.raises(ValueError, match=match):
        MixConfig(method="mixup", loss=loss, loss_options=options)


def test_rankmixup_runs_clean_and_mixed_in_separate_passes_regmixup_in_one():
    import torch

    from mixlab import MixedBatch
    from mixlab.engine.builders import build_objective
    from mixlab.engine.config import MixConfig

    calls = []

    class Counting(torch.nn.Linear):
        def forward(self, x):
            calls.append(x.shape[0])
            return super().forward(x)

    net, x, y = Counting(3, 2), torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    mb = MixedBatch(x.flip(0), y, y.flip(0), torch.full((4,), 0.7), torch.tensor([3, 2, 1, 0]))
    build_objective(MixConfig(method="mixup", loss="rankmixup"), "classification")(net, x, y, mb)
    assert calls == [4, 4]
    calls.clear()
    build_objective(MixConfig(method="mixup", loss="regmixup"), "classification")(net, x, y, mb)
    assert calls == [8]


def test_the_engine_tells_pixel_comparing_mixers_its_normalisation_scale():
    from mixlab.engine.builders import build_mixer
    from mixlab.engine.config import MixConfig

    assert build_mixer(MixConfig(method="puzzlemix"), None, input_std=[0.25]).input_std == (0.25,)
    given = MixConfig(method="puzzlemix", options={"input_std": 0.5})
    assert build_mixer(given, None, input_std=[0.25]).input_std == (0.5,)  # the user's value wins
    assert type(build_mixer(MixConfig(method="mixup"), None, input_std=[0.25])).__name__ == "Mixup"
