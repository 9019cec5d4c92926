"""The schedules against the formulas they reproduce.

Two references for each schedule:

* the authors' code, transcribed (``create_schedule`` of the v1 and v2 ``main.py``,
  CRM's ``ExponentialLRWithStopping`` as the notes describe it): the values agree to
  rounding, at every mini-batch of a small schedule, edge cases included;
* the harness code the schedules replaced (commit 3655b16: ``harness.train.cosine_lr``,
  v2's ``Schedule``, ``V1Schedule``, crm's ``learning_rate`` and linf_mlp's β), frozen
  here: the values are bitwise equal, since trained weights must not change.
"""

from __future__ import annotations

import math

import pytest

from harness.schedules import (
    V2_INF_THRESHOLD,
    cosine_annealing,
    exponential_lr_with_stopping,
    geometric,
    linear,
    p_relaxation,
    ramp,
)

# -- the authors' code, transcribed -------------------------------------------------------------------


def v2_code(epochs, batches, *, lr, p_start, p_end, lam0, lam_end, eps_train=1.0):
    """``create_schedule`` of the v2 ``main.py`` (no ``--decays``, linear eps): (lr, p, λ, eps) per batch."""
    eps_start, eps_end, e_p_start, e_p_end, total = epochs
    speed_p = math.log(p_end / p_start)

    def num_batches(epoch, minibatch=0):
        return epoch * batches + minibatch

    def cal_ratio(epoch, start, end, minibatch):
        if end <= start:
            return 1
        return min(max(num_batches(epoch - start, minibatch) / num_batches(end - start), 0), 1)

    def schedule(epoch, minibatch):
        ratio = cal_ratio(epoch, 0, total, minibatch)
        lr_now = 0.5 * lr * (1 + math.cos(ratio * math.pi))
        ratio = cal_ratio(epoch, e_p_start, e_p_end, minibatch)
        p = math.inf if ratio >= 1 and p_end >= 100 else p_start * math.exp(speed_p * ratio)
        eps = eps_train * cal_ratio(epoch, eps_start, eps_end, minibatch)
        lam = lam0 * (lam_end / lam0) ** ratio  # MixtureLoss.update(ratio)
        return lr_now, p, lam, eps

    return schedule


def v1_code(epochs, batches, *, lr, p_start, p_end, eps_train=1.0):
    """``create_schedule`` of the v1 ``main.py``: (lr, p, eps) per batch."""
    epoch0, epoch1, epoch2, epoch3, total = epochs
    speed = math.log(p_end / p_start)

    def num_batches(epoch, minibatch=0):
        return epoch * batches + minibatch

    def schedule(epoch, minibatch):
        ratio = max(num_batches(epoch - epoch1, minibatch) / num_batches(total - epoch1), 0)
        lr_now = 0.5 * lr * (1 + math.cos(ratio * math.pi))
        ratio = min(max(num_batches(epoch - epoch1, minibatch) / num_batches(epoch3 - epoch1), 0), 1)
        p = math.inf if ratio >= 1 else p_start * math.exp(speed * ratio)
        if epoch2 > 0:
            ratio = min(max(num_batches(epoch - epoch0, minibatch) / num_batches(epoch2), 0), 1)
        else:
            ratio = 1.0
        return lr_now, p, eps_train * ratio

    return schedule


def crm_code(lr, lr_min, decay_epoch, epochs):
    """``ExponentialLRWithStopping``: lr per epoch, multiplied by γ after every epoch from the decay epoch on."""
    gamma = (lr_min / lr) ** (1 / (epochs - decay_epoch))
    lrs, current = [], lr
    for epoch in range(epochs):
        if epoch >= decay_epoch:
            current *= gamma
        lrs.append(current)
    return lrs


def same(a: float, b: float) -> bool:
    return a == b or (math.isinf(a) and math.isinf(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


# -- the harness code that the schedules replaced (3655b16), frozen --------------------------------


def old_cosine_lr(base, progress):
    return base * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def old_v2(o, t):
    """v2's ``Schedule``: (lr, p, λ)."""
    span = o["p_end_epoch"] - o["p_start_epoch"]
    if span <= 0:
        r = 0.0 if t < o["p_start_epoch"] else 1.0
    else:
        r = min(max((t - o["p_start_epoch"]) / span, 0.0), 1.0)
    if t >= o["p_end_epoch"]:
        p = math.inf if o["p_end"] >= 100 else o["p_end"]
    else:
        p = o["p_start"] * (o["p_end"] / o["p_start"]) ** r
    lam = o["lam0"] * (o["lam_end"] / o["lam0"]) ** r
    return old_cosine_lr(o["lr"], t / o["epochs"]), p, lam


def old_v1(o, t):
    """``V1Schedule``: (lr, p, eps fraction)."""
    s, e = o["p_start_epoch"], o["p_end_epoch"]
    if t < s:
        p = o["p_start"]
    elif t >= e:
        p = math.inf
    else:
        p = o["p_start"] * (o["p_end"] / o["p_start"]) ** ((t - s) / (e - s))
    if t < s:
        lr = o["lr"]
    else:
        span = o["epochs"] - s
        lr = old_cosine_lr(o["lr"], (t - s) / span if span > 0 else 1.0)
    w = o["eps_warmup_epochs"]
    eps = 1.0 if w <= 0 else min(max(t / w, 0.0), 1.0)
    return lr, p, eps


def old_beta(o, t):
    w = o["eps_warmup_epochs"]
    r = min(t / w, 1.0) if w > 0 else 1.0
    return o["crown_beta_start"] + (o["crown_beta_end"] - o["crown_beta_start"]) * r


def old_crm_lr(o, epoch):
    decay = math.ceil(o["lr_decay_epoch"])
    if epoch < decay or o["epochs"] <= decay:
        return o["lr"]
    gamma = (o["lr_min"] / o["lr"]) ** (1 / (o["epochs"] - decay))
    return o["lr"] * gamma ** (min(epoch, o["epochs"] - 1) - decay + 1)


def steps(epochs: int, batches: int):
    """Every mini-batch ``(epoch, index, t)`` of a run, as the scaffold steps it."""
    return [(e, i, e + i / batches) for e in range(epochs) for i in range(batches)]


# -- the new schedules -------------------------------------------------------------------------


def new_v2(o, t):
    s, e = o["p_start_epoch"], o["p_end_epoch"]
    lr = cosine_annealing(t, o["lr"], o["epochs"])
    return lr, p_relaxation(t, s, e, o["p_start"], o["p_end"]), geometric(o["lam0"], o["lam_end"], ramp(t, s, e))


def new_v1(o, t):
    s, e = o["p_start_epoch"], o["p_end_epoch"]
    lr = cosine_annealing(t, o["lr"], o["epochs"], start=s)
    p = p_relaxation(t, s, e, o["p_start"], o["p_end"], inf_threshold=0.0)
    return lr, p, ramp(t, 0.0, o["eps_warmup_epochs"])


V2_CASES = [
    # the MNIST quick preset, and that preset scaled to 5 epochs (epochs_field: floats)
    dict(epochs=15, p_start_epoch=3, p_end_epoch=12, p_start=8.0, p_end=1000.0, lam0=0.05, lam_end=2e-4, lr=0.03),
    dict(epochs=5, p_start_epoch=1.0, p_end_epoch=4.0, p_start=8.0, p_end=1000.0, lam0=0.05, lam_end=2e-4, lr=0.03),
    dict(epochs=7, p_start_epoch=7 * 25 / 450, p_end_epoch=7 * 400 / 450, p_start=8.0, p_end=1000.0, lam0=0.1, lam_end=5e-4, lr=0.03),
    # a relaxation that ends below p = 100 does not switch to ∞
    dict(epochs=6, p_start_epoch=1, p_end_epoch=4, p_start=8.0, p_end=50.0, lam0=0.05, lam_end=2e-4, lr=0.03),
]


@pytest.mark.parametrize("o", V2_CASES)
def test_v2_schedule_is_bitwise_the_replaced_code_and_matches_the_authors(o):
    batches = 7
    code = v2_code((0, 0, o["p_start_epoch"], o["p_end_epoch"], o["epochs"]), batches, lr=o["lr"], p_start=o["p_start"],
                   p_end=o["p_end"], lam0=o["lam0"], lam_end=o["lam_end"])
    for epoch, index, t in steps(o["epochs"], batches):
        new = new_v2(o, t)
        assert new == old_v2(o, t), (t, new, old_v2(o, t))
        lr, p, lam, _ = code(epoch, index)
        assert same(new[0], lr) and same(new[1], p) and same(new[2], lam), (t, new, (lr, p, lam))


V1_CASES = [
    dict(epochs=15, p_start_epoch=2, p_end_epoch=13, p_start=8.0, p_end=1000.0, lr=0.02, eps_warmup_epochs=0),
    dict(epochs=15, p_start_epoch=2, p_end_epoch=13, p_start=8.0, p_end=1000.0, lr=0.02, eps_warmup_epochs=8),
    dict(epochs=5, p_start_epoch=5 * 2 / 15, p_end_epoch=5 * 13 / 15, p_start=8.0, p_end=1000.0, lr=0.02, eps_warmup_epochs=5 * 8 / 15),
    dict(epochs=8, p_start_epoch=1, p_end_epoch=7, p_start=8.0, p_end=50.0, lr=0.04, eps_warmup_epochs=8),  # ∞ even below 100
    dict(epochs=6, p_start_epoch=6, p_end_epoch=6, p_start=8.0, p_end=1000.0, lr=0.02, eps_warmup_epochs=0),  # no cosine phase
]


@pytest.mark.parametrize("o", V1_CASES)
def test_v1_schedule_is_bitwise_the_replaced_code_and_matches_the_authors(o):
    batches = 7
    code = v1_code((0, o["p_start_epoch"], o["eps_warmup_epochs"], o["p_end_epoch"], o["epochs"]), batches, lr=o["lr"],
                   p_start=o["p_start"], p_end=o["p_end"])
    for epoch, index, t in steps(o["epochs"], batches):
        new = new_v1(o, t)
        if o["p_start_epoch"] < o["p_end_epoch"]:  # else the code divides by zero (see the last test)
            assert new == old_v1(o, t), (t, new, old_v1(o, t))
            lr, p, eps = code(epoch, index)
            assert same(new[0], lr) and same(new[1], p) and same(new[2], eps), (t, new, (lr, p, eps))


def test_the_crown_ibp_beta_is_bitwise_the_replaced_code():
    for w in (0, 2.5, 8):
        o = dict(eps_warmup_epochs=w, crown_beta_start=1.0, crown_beta_end=0.0)
        for _, _, t in steps(10, 7):
            assert linear(1.0, 0.0, ramp(t, 0.0, w)) == old_beta(o, t)
        o = dict(eps_warmup_epochs=w, crown_beta_start=0.3, crown_beta_end=0.9)
        for _, _, t in steps(10, 7):
            assert linear(0.3, 0.9, ramp(t, 0.0, w)) == old_beta(o, t)


@pytest.mark.parametrize(
    "o",
    [
        dict(epochs=400, lr=1e-3, lr_decay_epoch=25, lr_min=1e-6),  # MNIST
        dict(epochs=12, lr=1e-3, lr_decay_epoch=8, lr_min=1e-4),  # quick
        dict(epochs=6, lr=1e-3, lr_decay_epoch=4.0, lr_min=1e-4),  # quick at --epochs 6
        dict(epochs=300, lr=1e-4, lr_decay_epoch=100, lr_min=1e-7),  # TinyImageNet
    ],
)
def test_crm_lr_is_bitwise_the_replaced_code_and_matches_the_code(o):
    lrs = [exponential_lr_with_stopping(e, o["lr"], o["lr_min"], o["lr_decay_epoch"], o["epochs"]) for e in range(o["epochs"])]
    assert lrs == [old_crm_lr(o, e) for e in range(o["epochs"])]
    assert lrs == pytest.approx(crm_code(o["lr"], o["lr_min"], math.ceil(o["lr_decay_epoch"]), o["epochs"]), rel=1e-9)
    assert lrs[-1] == pytest.approx(o["lr_min"], rel=1e-9)
    # constant within an epoch: every mini-batch of epoch e gets epoch e's lr
    assert all(exponential_lr_with_stopping(t, o["lr"], o["lr_min"], o["lr_decay_epoch"], o["epochs"]) == lrs[e] for e, _, t in steps(o["epochs"], 3))


def test_crm_lr_edge_cases():
    # decay from epoch 0; no decay when the decay epoch is the last; past the end it stays at lr_min
    assert exponential_lr_with_stopping(0, 1e-3, 1e-5, 0, 2) == pytest.approx(1e-4)
    assert exponential_lr_with_stopping(5, 1e-3, 1e-5, 6, 6) == 1e-3
    assert exponential_lr_with_stopping(9, 1e-3, 1e-5, 2, 4) == exponential_lr_with_stopping(3, 1e-3, 1e-5, 2, 4)
    assert exponential_lr_with_stopping(2, 1e-3, 1e-5, 1.2, 4) == exponential_lr_with_stopping(2, 1e-3, 1e-5, 2, 4)  # rounded up


def test_cosine_annealing_is_bitwise_the_old_cosine_lr():
    for epochs in (1, 7, 15, 450):
        for _, _, t in steps(epochs, 9):
            assert cosine_annealing(t, 0.03, epochs) == old_cosine_lr(0.03, t / epochs)
    assert cosine_annealing(0, 0.03, 10) == 0.03 and cosine_annealing(10, 0.03, 10) == 0 and cosine_annealing(12, 0.03, 10) == 0
    assert cosine_annealing(5, 0.03, 10) == pytest.approx(0.015)


def test_constant_then_cosine():
    assert cosine_annealing(1.99, 0.02, 10, start=2) == 0.02 and cosine_annealing(2, 0.02, 10, start=2) == 0.02
    assert cosine_annealing(6, 0.02, 10, start=2) == pytest.approx(0.01) and cosine_annealing(10, 0.02, 10, start=2) == 0
    assert cosine_annealing(3, 0.02, 3, start=3) == 0  # an empty annealing: 0 from its start


def test_ramp():
    assert [ramp(t, 1, 3) for t in (0, 1, 2, 3, 4)] == [0, 0, 0.5, 1, 1]
    assert ramp(0, 0, 0) == 1 and ramp(0, 2, 2) == 1 and ramp(5, 3, 1) == 1  # empty: at its end from the start


def test_geometric_and_linear():
    assert geometric(8, 1000, 0.0) == 8 and geometric(8, 1000, 0.5) == pytest.approx(math.sqrt(8000)) and geometric(8, 1000, 1) == pytest.approx(1000)
    assert linear(1.0, 0.0, 0.25) == 0.75 and linear(0.2, 0.6, 1.0) == pytest.approx(0.6)


def test_p_relaxation_phases():
    assert p_relaxation(0, 2, 12, 8, 1000) == 8 and p_relaxation(1.99, 2, 12, 8, 1000) == 8
    assert p_relaxation(7, 2, 12, 8, 1000) == pytest.approx(math.sqrt(8000))
    assert p_relaxation(11.999, 2, 12, 8, 1000) == pytest.approx(1000, rel=1e-3)
    assert p_relaxation(12, 2, 12, 8, 1000) == math.inf
    # v2 switches to ∞ only from p_end = 100; v1 always
    assert p_relaxation(12, 2, 12, 8, 99.0) == 99.0 and p_relaxation(12, 2, 12, 8, V2_INF_THRESHOLD) == math.inf
    assert p_relaxation(12, 2, 12, 8, 50.0, inf_threshold=0.0) == math.inf


@pytest.mark.parametrize("at", [0, 3, 10])
def test_an_empty_relaxation_is_at_its_end_from_the_first_step_as_the_v2_code(at):
    o = dict(epochs=10, p_start_epoch=at, p_end_epoch=at, p_start=8.0, p_end=1000.0, lam0=0.05, lam_end=2e-4, lr=0.03)
    code = v2_code((0, 0, at, at, 10), 5, lr=0.03, p_start=8.0, p_end=1000.0, lam0=0.05, lam_end=2e-4)
    for epoch, index, t in steps(10, 5):
        lr, p, lam = new_v2(o, t)
        assert p == math.inf and lam == 2e-4
        assert (lr, p, lam) == pytest.approx(code(epoch, index)[:3], rel=1e-12)
    # below p = 100 the v2 code stays at p_end from the first step
    assert p_relaxation(0, at, at, 8.0, 50.0) == 50.0


def test_an_empty_v1_relaxation_divides_by_zero_in_the_code_and_is_infinite_here():
    code = v1_code((0, 3, 0, 3, 10), 5, lr=0.02, p_start=8.0, p_end=1000.0)
    with pytest.raises(ZeroDivisionError):
        code(0, 0)
    o = dict(epochs=10, p_start_epoch=3, p_end_epoch=3, p_start=8.0, p_end=1000.0, lr=0.02, eps_warmup_epochs=0)
    for _, _, t in steps(10, 5):
        lr, p, _ = new_v1(o, t)
        assert p == math.inf
        assert lr == old_v1(o, t)[0]  # the lr is still constant until e1, then cosine
