"""Schedules: when and how strongly to mix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mixlab
from mixlab.errors import MixlabError, MixlabTypeError, MixlabValueError, UnknownNameError
from mixlab.schedules import (
    All,
    Alternate,
    Always,
    Probability,
    Ramp,
    Schedule,
    ScheduledMixer,
    StopAfter,
    WarmUp,
)

# (id, schedule factory, step, epoch, expected active, expected strength)
TABLE = [
    ("always-0", Always, 0, 0, True, 1.0),
    ("always-late", Always, 12345, 99, True, 1.0),
    ("warmup2-e0", lambda: WarmUp(2), 100, 0, False, 1.0),
    ("warmup2-e1", lambda: WarmUp(2), 0, 1, False, 1.0),
    ("warmup2-e2", lambda: WarmUp(2), 0, 2, True, 1.0),
    ("warmup2-e7", lambda: WarmUp(2), 0, 7, True, 1.0),
    ("warmup0-e0", lambda: WarmUp(0), 0, 0, True, 1.0),
    ("stop2-e0", lambda: StopAfter(2), 0, 0, True, 1.0),
    ("stop2-e1", lambda: StopAfter(2), 500, 1, True, 1.0),
    ("stop2-e2", lambda: StopAfter(2), 0, 2, False, 1.0),
    ("stop2-e9", lambda: StopAfter(2), 0, 9, False, 1.0),
    ("stop0-e0", lambda: StopAfter(0), 0, 0, False, 1.0),
    # Alternate by step: the epoch is ignored
    ("alt1-s0", lambda: Alternate(1), 0, 3, True, 1.0),
    ("alt1-s1", lambda: Alternate(1), 1, 3, False, 1.0),
    ("alt1-s2", lambda: Alternate(1), 2, 0, True, 1.0),
    ("alt1-s7", lambda: Alternate(1), 7, 0, False, 1.0),
    ("alt2-s1", lambda: Alternate(2, unit="step"), 1, 0, True, 1.0),
    ("alt2-s2", lambda: Alternate(2, unit="step"), 2, 0, False, 1.0),
    ("alt2-s3", lambda: Alternate(2, unit="step"), 3, 0, False, 1.0),
    ("alt2-s4", lambda: Alternate(2, unit="step"), 4, 0, True, 1.0),
    ("alt1-clean-s0", lambda: Alternate(1, start_mixed=False), 0, 0, False, 1.0),
    ("alt1-clean-s1", lambda: Alternate(1, start_mixed=False), 1, 0, True, 1.0),
    ("alt2-clean-s2", lambda: Alternate(2, start_mixed=False), 2, 0, True, 1.0),
    ("alt2-clean-s5", lambda: Alternate(2, start_mixed=False), 5, 0, False, 1.0),
    # Alternate by epoch: the step is ignored
    ("alt1e-e0", lambda: Alternate(1, unit="epoch"), 7, 0, True, 1.0),
    ("alt1e-e1", lambda: Alternate(1, unit="epoch"), 0, 1, False, 1.0),
    ("alt1e-e1-s2", lambda: Alternate(1, unit="epoch"), 2, 1, False, 1.0),
    ("alt3e-clean-e2", lambda: Alternate(3, unit="epoch", start_mixed=False), 0, 2, False, 1.0),
    ("alt3e-clean-e3", lambda: Alternate(3, unit="epoch", start_mixed=False), 0, 3, True, 1.0),
    ("alt3e-clean-e5", lambda: Alternate(3, unit="epoch", start_mixed=False), 1, 5, True, 1.0),
    ("alt3e-clean-e6", lambda: Alternate(3, unit="epoch", start_mixed=False), 1, 6, False, 1.0),
    # Ramp of alpha, by epoch from 2 to 6 (0 -> 1): inactive while the multiplier is 0
    ("ramp-before", lambda: Ramp(0.0, 1.0, begin=2, end=6), 0, 0, False, 0.0),
    ("ramp-begin", lambda: Ramp(0.0, 1.0, begin=2, end=6), 40, 2, False, 0.0),
    ("ramp-quarter", lambda: Ramp(0.0, 1.0, begin=2, end=6), 0, 3, True, 0.25),
    ("ramp-middle", lambda: Ramp(0.0, 1.0, begin=2, end=6), 0, 4, True, 0.5),
    ("ramp-end", lambda: Ramp(0.0, 1.0, begin=2, end=6), 0, 6, True, 1.0),
    ("ramp-after", lambda: Ramp(0.0, 1.0, begin=2, end=6), 0, 50, True, 1.0),
    # Ramp of alpha, by step, decreasing 1.0 -> 0.2 over steps 0..100
    ("rampdown-begin", lambda: Ramp(1.0, 0.2, begin=0, end=100, unit="step"), 0, 9, True, 1.0),
    ("rampdown-middle", lambda: Ramp(1.0, 0.2, begin=0, end=100, unit="step"), 50, 0, True, 0.6),
    ("rampdown-end", lambda: Ramp(1.0, 0.2, begin=0, end=100, unit="step"), 100, 0, True, 0.2),
    ("rampdown-after", lambda: Ramp(1.0, 0.2, begin=0, end=100, unit="step"), 1000, 0, True, 0.2),
    ("rampup-2-4", lambda: Ramp(2.0, 4.0, begin=0, end=4), 0, 1, True, 2.5),
    # Ramp of p from 0 to 1 over steps 10..20: 0 never mixes, 1 always does; strength stays 1
    ("rampp-before", lambda: Ramp(0.0, 1.0, begin=10, end=20, unit="step", target="p"), 3, 0, False, 1.0),
    ("rampp-begin", lambda: Ramp(0.0, 1.0, begin=10, end=20, unit="step", target="p"), 10, 0, False, 1.0),
    ("rampp-end", lambda: Ramp(0.0, 1.0, begin=10, end=20, unit="step", target="p"), 20, 0, True, 1.0),
    ("rampp-after", lambda: Ramp(0.0, 1.0, begin=10, end=20, unit="step", target="p"), 77, 0, True, 1.0),
    # All / &: active when all parts are; strengths multiply
    ("and-e0", lambda: WarmUp(1) & StopAfter(3), 0, 0, False, 1.0),
    ("and-e1", lambda: WarmUp(1) & StopAfter(3), 0, 1, True, 1.0),
    ("and-e2", lambda: WarmUp(1) & StopAfter(3), 0, 2, True, 1.0),
    ("and-e3", lambda: WarmUp(1) & StopAfter(3), 0, 3, False, 1.0),
    ("all3-e1", lambda: All(WarmUp(1), StopAfter(4), Alternate(1, unit="epoch")), 0, 1, False, 1.0),
    ("all3-e2", lambda: All(WarmUp(1), StopAfter(4), Alternate(1, unit="epoch")), 0, 2, True, 1.0),
    ("all3-e3", lambda: All(WarmUp(1), StopAfter(4), Alternate(1, unit="epoch")), 0, 3, False, 1.0),
    ("all3-e4", lambda: All(WarmUp(1), StopAfter(4), Alternate(1, unit="epoch")), 0, 4, False, 1.0),
    ("chain-e2", lambda: WarmUp(1) & StopAfter(4) & Alternate(1, unit="epoch"), 0, 2, True, 1.0),
    ("chain-e3", lambda: WarmUp(1) & StopAfter(4) & Alternate(1, unit="epoch"), 0, 3, False, 1.0),
    ("ramps-e0", lambda: Ramp(0.0, 1.0, 0, 4) & Ramp(1.0, 3.0, 0, 4), 0, 0, False, 0.0),
    ("ramps-e1", lambda: Ramp(0.0, 1.0, 0, 4) & Ramp(1.0, 3.0, 0, 4), 0, 1, True, 0.375),
    ("ramps-e2", lambda: Ramp(0.0, 1.0, 0, 4) & Ramp(1.0, 3.0, 0, 4), 0, 2, True, 1.0),
    ("ramps-e9", lambda: Ramp(0.0, 1.0, 0, 4) & Ramp(1.0, 3.0, 0, 4), 0, 9, True, 3.0),
    # strength is reported even while another part keeps the schedule off
    ("warm-ramp-e1", lambda: WarmUp(3) & Ramp(0.5, 1.5, 0, 2), 0, 1, False, 1.0),
    ("warm-ramp-e3", lambda: WarmUp(3) & Ramp(0.5, 1.5, 0, 2), 0, 3, True, 1.5),
]


@pytest.mark.parametrize(
    ("make", "step", "epoch", "active", "strength"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_schedule_table(make, step, epoch, active, strength):
    schedule = make()
    assert isinstance(schedule, Schedule)
    assert schedule.active(step, epoch) is active
    assert schedule.strength(step, epoch) == pytest.approx(strength, abs=1e-12)


def test_and_builds_all():
    a, b = WarmUp(1), StopAfter(2)
    both = a & b
    assert isinstance(both, All)
    assert both.parts == (a, b)


def test_and_with_a_non_schedule_is_a_type_error():
    with pytest.raises(TypeError):
        _ = Always() & 3


def test_all_needs_schedules():
    for parts in ((), (WarmUp(1), "always")):
        with pytest.raises(MixlabTypeError):
            All(*parts)


def test_ramp_value_is_linear_between_begin_and_end():
    r = Ramp(0.2, 1.0, begin=10, end=30, unit="step")
    for step in range(0, 40):
        frac = min(max((step - 10) / 20, 0.0), 1.0)
        assert r.value(step, 0) == pytest.approx(0.2 + 0.8 * frac)
        assert r.strength(step, 0) == pytest.approx(0.2 + 0.8 * frac)


# ---------------------------------------------------------------- Probability


def test_probability_zero_never_one_always():
    never, always = Probability(0.0, seed=3), Probability(1.0, seed=3)
    assert not any(never.active(s, s // 100) for s in range(2000))
    assert all(always.active(s, s // 100) for s in range(2000))


@pytest.mark.parametrize("seed", [0, 7])
def test_probability_frequency_is_binomial(seed):
    s = Probability(0.3, seed=seed)
    hits = sum(s.active(step, 0) for step in range(2000))
    # mean 600, sd sqrt(2000 * 0.3 * 0.7) ~ 20.5; allow 5 sd
    assert abs(hits - 600) < 5 * (2000 * 0.3 * 0.7) ** 0.5
    assert s.strength(5, 0) == 1.0


def test_probability_is_reproducible_from_seed_and_step():
    a, b = Probability(0.5, seed=11), Probability(0.5, seed=11)
    first = [a.active(step, 0) for step in range(200)]
    assert first == [a.active(step, 0) for step in range(200)]  # asked twice
    assert first == [b.active(step, 0) for step in range(200)]  # a fresh instance (a resumed run)
    # out of order gives the same answers: depends on the step only
    assert [a.active(step, 0) for step in reversed(range(200))] == first[::-1]
    # epoch does not matter, the seed does
    assert first == [a.active(step, 5) for step in range(200)]
    assert first != [Probability(0.5, seed=12).active(step, 0) for step in range(200)]
    assert 60 < sum(first) < 140


def test_probability_leaves_global_random_state_alone():
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    s = Probability(0.5, seed=1)
    for step in range(50):
        s.active(step, 0)
    Ramp(0.0, 1.0, 0, 10, unit="step", target="p").active(3, 0)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]


def test_probability_ramp_mixes_at_the_ramped_rate():
    r = Ramp(0.0, 1.0, begin=0, end=2, unit="epoch", target="p", seed=4)
    # epoch 1: value 0.5
    hits = sum(r.active(step, 1) for step in range(2000))
    assert abs(hits - 1000) < 5 * (2000 * 0.25) ** 0.5
    assert r.strength(0, 1) == 1.0
    # by step: the mean of the ramped values over 0..3999 is ~0.5
    r = Ramp(0.0, 1.0, begin=0, end=4000, unit="step", target="p", seed=2)
    first = sum(r.active(step, 0) for step in range(2000))
    second = sum(r.active(step, 0) for step in range(2000, 4000))
    assert abs(first - 500) < 100 and abs(second - 1500) < 100


# ---------------------------------------------------------------- ScheduledMixer


def _data(n: int = 8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_scheduled_mixer_inactive_returns_the_batch_unmixed():
    x, y = _data()
    x0 = x.clone()
    sm = ScheduledMixer(mixlab.Mixup(alpha=1.0, lam_mode="sample"), WarmUp(2))
    mb = sm(x, y, torch.Generator().manual_seed(1), step=10, epoch=1)
    assert torch.equal(mb.lam, torch.ones(8))
    assert torch.equal(mb.inputs, x0)
    assert torch.equal(mb.perm, torch.arange(8))
    assert torch.equal(mb.target_a, y) and torch.equal(mb.target_b, y)
    assert torch.equal(x, x0)


def test_scheduled_mixer_active_mixes():
    x, y = _data()
    sm = ScheduledMixer(mixlab.Mixup(alpha=1.0, lam_mode="sample"), WarmUp(2))
    mb = sm(x, y, torch.Generator().manual_seed(1), step=10, epoch=2)
    assert (mb.lam < 1).all()
    assert not torch.equal(mb.inputs, x)
    lam = mb.lam.view(-1, 1)
    torch.testing.assert_close(mb.inputs, lam * x + (1 - lam) * x[mb.perm])


class _Spy:
    """A mixer stand-in that records what ScheduledMixer passes to it."""

    def __init__(self, mixer):
        self.mixer, self.calls = mixer, []

    def check(self, x, y):
        self.mixer.check(x, y)

    def __call__(self, x, y, generator=None, *, alpha_scale=1.0, context=None):
        self.calls.append(alpha_scale)
        return self.mixer(x, y, generator, alpha_scale=alpha_scale, context=context)


def test_scheduled_mixer_passes_the_ramp_strength_as_alpha_scale():
    x, y = _data()
    spy = _Spy(mixlab.Mixup(alpha=1.0))
    sm = ScheduledMixer(spy, Ramp(0.0, 2.0, begin=0, end=4) & WarmUp(1))
    sm(x, y, torch.Generator().manual_seed(0), step=0, epoch=0)  # warm-up: not called
    for epoch in (1, 2, 3, 8):
        sm(x, y, torch.Generator().manual_seed(0), step=0, epoch=epoch)
    assert spy.calls == pytest.approx([0.5, 1.0, 1.5, 2.0])


def test_scheduled_mixer_output_equals_mixer_with_scaled_alpha():
    x, y = _data(16)
    mixer = mixlab.Mixup(alpha=1.0, lam_mode="sample")
    sm = ScheduledMixer(mixer, Ramp(0.1, 4.0, begin=0, end=10, unit="step"))
    for step in (0, 5, 20):
        got = sm(x, y, torch.Generator().manual_seed(9), step=step, epoch=0)
        scale = 0.1 + 3.9 * min(step / 10, 1.0)
        ref = mixer(x, y, torch.Generator().manual_seed(9), alpha_scale=scale)
        assert torch.equal(got.lam, ref.lam) and torch.equal(got.perm, ref.perm)
        assert torch.equal(got.inputs, ref.inputs)


def test_scheduled_mixer_alpha_scale_changes_the_lambda_distribution():
    n = 2000
    x, y = torch.zeros(n, 1), torch.zeros(n, dtype=torch.long)
    sm = ScheduledMixer(mixlab.Mixup(alpha=1.0, lam_mode="sample"), Ramp(0.02, 20.0, begin=0, end=1))
    spread_small = (sm(x, y, torch.Generator().manual_seed(0), step=0, epoch=0).lam - 0.5).abs().mean()
    spread_large = (sm(x, y, torch.Generator().manual_seed(0), step=0, epoch=1).lam - 0.5).abs().mean()
    # Beta(0.02, 0.02) piles up at 0 and 1 (mean |lam - 0.5| ~ 0.49); Beta(20, 20) at 0.5 (~ 0.06)
    assert spread_small > 0.45
    assert spread_large < 0.1


def test_scheduled_mixer_validates_even_when_inactive():
    sm = ScheduledMixer(mixlab.Mixup(), StopAfter(1))
    x = torch.zeros(4, 3, dtype=torch.uint8)
    with pytest.raises(MixlabTypeError, match="uint8"):
        sm(x, torch.arange(4), step=0, epoch=5)


def test_scheduled_mixer_needs_a_schedule():
    with pytest.raises(MixlabTypeError, match="str"):
        ScheduledMixer(mixlab.Mixup(), "always")


# ---------------------------------------------------------------- bad input

BAD = [
    ("warmup-negative", lambda: WarmUp(-1), MixlabValueError, "-1"),
    ("warmup-float", lambda: WarmUp(1.5), MixlabValueError, "1.5"),
    ("stop-negative", lambda: StopAfter(-3), MixlabValueError, "-3"),
    ("alternate-zero", lambda: Alternate(every=0), MixlabValueError, "got 0"),
    ("alternate-unit", lambda: Alternate(1, unit="hour"), UnknownNameError, "hour"),
    ("ramp-end-eq-begin", lambda: Ramp(0.0, 1.0, begin=5, end=5), MixlabValueError, "end=5"),
    ("ramp-end-before-begin", lambda: Ramp(0.0, 1.0, begin=5, end=3), MixlabValueError, "end=3"),
    ("ramp-unit", lambda: Ramp(0.0, 1.0, unit="minute"), UnknownNameError, "minute"),
    ("ramp-target", lambda: Ramp(0.0, 1.0, target="beta"), UnknownNameError, "beta"),
    ("ramp-p-above-1", lambda: Ramp(0.0, 1.5, target="p"), MixlabValueError, "1.5"),
    ("ramp-alpha-negative", lambda: Ramp(-0.5, 1.0), MixlabValueError, "-0.5"),
    ("ramp-begin-negative", lambda: Ramp(0.0, 1.0, begin=-2, end=3), MixlabValueError, "-2"),
    ("probability-above-1", lambda: Probability(1.5), MixlabValueError, "1.5"),
    ("probability-negative", lambda: Probability(-0.1), MixlabValueError, "-0.1"),
    ("probability-nan", lambda: Probability(float("nan")), MixlabValueError, "nan"),
    ("probability-seed", lambda: Probability(0.5, seed=-4), MixlabValueError, "-4"),
]


@pytest.mark.parametrize(("make", "kind", "shown"), [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_schedule_arguments(make, kind, shown):
    with pytest.raises(kind) as info:
        make()
    assert isinstance(info.value, MixlabError)
    assert isinstance(info.value, ValueError)
    assert shown in str(info.value), str(info.value)


def test_unseeded_probability_schedules_are_independent():
    both = Probability(0.5) & Probability(0.5)
    rate = sum(both.active(step, 0) for step in range(4000)) / 4000
    assert abs(rate - 0.25) < 0.03


def test_scheduled_mixer_passes_the_engine_hooks_to_the_mixer_it_wraps():
    import mixlab
    from mixlab.schedules import ScheduledMixer, StopAfter

    calls = []

    class Recording(mixlab.Mixup):
        def start_training(self, total_steps):
            calls.append(("start", total_steps))

        def after_step(self):
            calls.append(("after",))

        def state_dict(self):
            return {"steps": 3}

    inner = Recording()
    scheduled = ScheduledMixer(inner, StopAfter(1))
    scheduled.start_training(40)
    scheduled.after_step()
    assert calls == [("start", 40), ("after",)]
    assert scheduled.state_dict() == {"steps": 3} and scheduled.num_sources == 2
    assert scheduled.active(0, 0) and not scheduled.active(10, 1)
    assert scheduled.needs == inner.needs and scheduled.trainable_parameters() == []
    composed = mixlab.create_mixer("random_choice", mixers=[inner, "cutmix"])
    composed.start_training(7)
    assert calls[-1] == ("start", 7)
