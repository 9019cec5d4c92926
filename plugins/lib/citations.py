"""The papers and code the built-in components reproduce, cited once.

Every component's ``source`` is one of these, so a paper is named the same
way wherever the harness shows it (``harness plugins``, the leaderboard's
sources, the docs).
"""

from __future__ import annotations

from harness import Source

#: Zhang, Cai, Lu, He, Wang (ICML 2021): the l_inf-dist net, its hinge-loss recipe and the + MLP hybrid.
LINF_DIST_NET = Source(
    title="Towards certifying l-infinity robustness using neural networks with l-inf-dist neurons",
    authors="Zhang, Cai, Lu, He, Wang",
    venue="ICML 2021",
    url="https://arxiv.org/abs/2102.05363",
    code="github.com/zbh2047/L_inf-dist-net",
)

#: Zhang, Jiang, He, Wang (ICLR 2022): the l_inf-dist net v2 (clipped hinge + scaled cross-entropy).
LINF_DIST_NET_V2 = Source(
    title="Boosting the certified robustness of L-infinity distance nets",
    authors="Zhang, Jiang, He, Wang",
    venue="ICLR 2022",
    url="https://arxiv.org/abs/2110.06850",
    code="github.com/zbh2047/L_inf-dist-net-v2",
)

#: Fazlyab, Entesari, Roy, Chellappa (NeurIPS 2023): LipLT and CRM.
CRM_LIPLT = Source(
    title="Certified robustness via dynamic margin maximization and improved Lipschitz regularization",
    authors="Fazlyab, Entesari, Roy, Chellappa",
    venue="NeurIPS 2023",
    url="https://arxiv.org/abs/2310.00116",
    code="https://github.com/o4lc/CRM-LipLT",
)

#: The auto_LiRPA release the ``lirpa`` certifiers and the hybrid's training run on.
AUTO_LIRPA_CODE = "auto_LiRPA 0.3 (https://github.com/Verified-Intelligence/auto_LiRPA)"
_AUTO_LIRPA_PAPER = "Xu et al., Automatic perturbation analysis for scalable certified robustness and beyond (NeurIPS 2020)"

#: Xu et al. (NeurIPS 2020): auto_LiRPA, whose IBP the ``ibp`` certifier runs.
AUTO_LIRPA = Source(
    title="Automatic perturbation analysis for scalable certified robustness and beyond",
    authors="Xu et al.",
    venue="NeurIPS 2020",
    url="https://arxiv.org/abs/2002.12920",
    code=AUTO_LIRPA_CODE,
)

#: Zhang et al. (ICLR 2020): CROWN-IBP.
CROWN_IBP = Source(
    title="Towards stable and efficient training of verifiably robust neural networks",
    authors="Zhang et al.",
    venue="ICLR 2020",
    url="https://arxiv.org/abs/1906.06316",
    code=f"{AUTO_LIRPA_CODE}; {_AUTO_LIRPA_PAPER}",
)

#: Zhang et al. (NeurIPS 2018): CROWN.
CROWN = Source(
    title="Efficient neural network robustness certification with general activation functions",
    authors="Zhang et al.",
    venue="NeurIPS 2018",
    url="https://arxiv.org/abs/1811.00866",
    code=f"{AUTO_LIRPA_CODE}; {_AUTO_LIRPA_PAPER}",
)

#: Gowal et al. (2018): interval bound propagation.
IBP = Source(
    title="On the effectiveness of interval bound propagation for training verifiably robust models",
    authors="Gowal et al.",
    venue="arXiv 2018",
)

#: Tsuzuku, Sato, Sugiyama (NeurIPS 2018): certification by the logit margin and a Lipschitz bound.
LIPSCHITZ_MARGIN = Source(
    title="Lipschitz-margin training: scalable certification of perturbation invariance for deep neural networks",
    authors="Tsuzuku, Sato, Sugiyama",
    venue="NeurIPS 2018",
)

#: Madry et al. (ICLR 2018): projected gradient descent, as torchattacks implements it.
PGD = Source(
    title="Towards deep learning models resistant to adversarial attacks",
    authors="Madry et al.",
    venue="ICLR 2018",
    code="torchattacks.PGD (Harry24k/adversarial-attacks-pytorch 3.5.1)",
)

#: Croce & Hein (ICML 2020): AutoAttack, the ensemble RobustBench evaluates with, as the pyautoattack package runs it.
AUTOATTACK = Source(
    title="Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks",
    authors="Croce, Hein",
    venue="ICML 2020",
    url="https://arxiv.org/abs/2003.01690",
    code="pyautoattack 0.2.0 (the official AutoAttack, github.com/fra31/auto-attack)",
)
