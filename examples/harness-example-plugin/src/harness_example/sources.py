"""Where the example's methods come from (each component cites its paper)."""

from harness import Source

LMT = Source(
    title="Lipschitz-margin training: scalable certification of perturbation invariance for deep neural networks",
    authors="Tsuzuku, Sato, Sugiyama",
    venue="NeurIPS 2018",
    url="https://arxiv.org/abs/1802.04034",
)

FGSM = Source(
    title="Explaining and harnessing adversarial examples",
    authors="Goodfellow, Shlens, Szegedy",
    venue="ICLR 2015",
    url="https://arxiv.org/abs/1412.6572",
)
