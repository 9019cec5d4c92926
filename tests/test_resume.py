"""Every built-in trainer resumes exactly: stopped after an epoch or mid-epoch, then resumed in a new
trainer, model and generator, it ends with the weights of a run that never stopped (CPU, bit for bit).

The configurations are tiny (``tiny``'s 600 images, 5 steps an epoch, 3 epochs) but keep what
carries state across steps: augmentation drawn from the run's generator, v2's logit scale, the p and
eps schedules, CRM's warm-started power iteration (l2) and row-sum estimator with refreshes (l_inf),
the hybrid's CROWN-IBP β.
"""

from __future__ import annotations

import pytest

from harness import ThreatModel
from harness.testing import check_resumes, make_catalog
from harness_plugins.crm.model import CRMNetModel, CRMNetOptions
from harness_plugins.crm.trainer import CRMOptions, CRMTrainer
from harness_plugins.linf_mlp.model import LinfDistNetMLPModel, LinfDistNetMLPOptions
from harness_plugins.linf_mlp.trainer import LinfMLPOptions, LinfMLPTrainer
from harness_plugins.linf_v1.trainer import LinfV1Options, LinfV1Trainer
from harness_plugins.linf_v2.trainer import LinfV2Options, LinfV2Trainer
from harness_plugins.lpdist.models import LinfDistNetModel, LinfDistNetOptions

RELAXATION = {"epochs": 3, "p_start_epoch": 1, "p_end_epoch": 2, "batch_size": 128, "crop_padding": 1, "flip": True}
DIST_NET = LinfDistNetModel(LinfDistNetOptions(depth=3, width=16))
CRM_NET = CRMNetModel(CRMNetOptions(arch="4c3f", channel_scale=0.125))
CRM = {
    "epochs": 3, "batch_size": 128, "lr": 3e-3, "lr_decay_epoch": 1, "lr_min": 1e-4, "robust_start_epoch": 1, "r0": 0.5,
    "power_iterations": 2, "linf_rows": 2, "linf_refresh": 3, "degrees": 10.0, "translate": 0.25, "flip": True,
}

CASES = {
    "linf_v2": (lambda: LinfV2Trainer(LinfV2Options(**RELAXATION)), DIST_NET, ThreatModel("inf", 0.1)),
    "linf_v1": (lambda: LinfV1Trainer(LinfV1Options(**RELAXATION, eps_warmup_epochs=1.5)), DIST_NET, ThreatModel("inf", 0.1)),
    "linf_mlp": (
        lambda: LinfMLPTrainer(LinfMLPOptions(**RELAXATION, eps_warmup_epochs=2, bound="crown-ibp")),
        LinfDistNetMLPModel(LinfDistNetMLPOptions(depth=2, width=16, hidden=16)),
        ThreatModel("inf", 0.1),
    ),
    "crm l2": (lambda: CRMTrainer(CRMOptions(**CRM)), CRM_NET, ThreatModel("2", 0.5)),
    "crm linf": (lambda: CRMTrainer(CRMOptions(**CRM)), CRM_NET, ThreatModel("inf", 0.1)),
}


def test_every_built_in_trainer_is_resumable_and_tested_here():
    trainers = make_catalog().sorted_entries("trainer")
    assert {entry.key for entry in trainers} == {case.split()[0] for case in CASES}
    assert all(entry.component.resumable() for entry in trainers)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_stopped_run_resumed_ends_with_the_uninterrupted_weights(case, tmp_path):
    trainer, model, threat = CASES[case]
    # 5 steps an epoch (CRM: 540 of the 600 images): after epoch 1, and in the middle of epoch 2
    check_resumes(trainer, model, threat, tmp_path, stops=[5, 7])
