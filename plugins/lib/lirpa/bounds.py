"""Margin bounds of a conventional network through auto_LiRPA, shared by certifiers and trainers.

:func:`bounds_for` keeps one :class:`LiRPABounds` per module (built on first
use, kept while the module lives) so that the ``lirpa`` plugin's certifiers and
the ``linf_mlp`` trainer share it; :func:`conventional` says whether a module
is built only from layers auto_LiRPA can bound.

``LiRPABounds(module, example).margins(lower, upper, labels, method)`` gives
lower bounds of ``z_y − z_j`` for every input in the l_inf box
``[lower, upper]``. The specification matrix ``C`` (rows ``e_y − e_j``) lets
auto_LiRPA fold the last linear layer into the specification ("elision"),
which is tighter than bounding the logits and subtracting. The bounds are
differentiable w.r.t. the module's parameters (``BoundedModule`` shares the
module's ``nn.Parameter`` objects), so IBP and CROWN-IBP training use the same
code as certification.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import math
import weakref
from types import ModuleType

import torch
from torch import Tensor, nn

from harness import HarnessError
from harness_plugins.lib.lirpa.compat import import_auto_lirpa

#: Our method names → auto_LiRPA's.
METHODS: dict[str, str] = {"ibp": "IBP", "crown-ibp": "CROWN-IBP", "crown": "CROWN"}

#: How convolutions are bounded. "patches" (auto_LiRPA's default) keeps CROWN's linear maps
#: as convolution patches: on a CRM 4C3F it is ~5x faster than "matrix", which builds dense
#: identity matrices per conv node and runs out of memory at full width. But auto_LiRPA 0.3's
#: patches mode fails (AssertionError) when an operation such as a division (in-model
#: normalisation) comes before a convolution; such modules get "matrix".
PATCHES = {"conv_mode": "patches"}
BOUND_OPTS = {"conv_mode": "matrix"}

logger = logging.getLogger(__name__)


def margin_matrix(labels: Tensor, num_classes: int) -> Tensor:
    """``C`` of shape B×K×K with ``C[b, j] = e_{y_b} − e_j`` (the label's row is all zero)."""
    eye = torch.eye(num_classes, device=labels.device)
    return eye[labels].unsqueeze(1) - eye.unsqueeze(0)


class LiRPABounds:
    """``module`` wrapped once in an auto_LiRPA ``BoundedModule`` (traced on ``example``).

    The wrapper follows later changes to the module's parameter *values* and
    train/eval mode, not to its structure, device or buffer objects: build a
    new one if the module is replaced or moved. Building it and bounding leave
    the module's modes, statistics and ``requires_grad`` flags as they were.
    """

    def __init__(self, module: nn.Module, example: Tensor) -> None:
        self._lirpa = import_auto_lirpa()
        self._module = weakref.ref(module)
        self._example = example[:2].detach()
        self._build(PATCHES)
        self.l2_native = _l2_native(self.bounded, self._lirpa)
        if not self.l2_native:  # something other than a linear map touches the input first
            self._build(BOUND_OPTS)
        self.device = example.device
        self.num_classes = int(self.bounded.final_shape[-1])

    def _build(self, options: dict[str, str]) -> None:
        module = self._module()
        modes = [(m, m.training) for m in module.modules()]
        # auto_LiRPA prints when it switches the module's mode to trace it (dropout, batch norm).
        with contextlib.redirect_stdout(io.StringIO()) as said:
            self.bounded = self._lirpa.BoundedModule(module, self._example, bound_opts=dict(options))
        if said.getvalue().strip():
            logger.debug("auto_LiRPA: %s", " ".join(said.getvalue().split()))
        for m, training in modes:  # it leaves the module in the mode it traced in
            m.training = training
        self.conv_mode = options["conv_mode"]
        self._parameter_nodes = [n for n in self.bounded.modules() if isinstance(n, self._lirpa.operators.BoundParams)]

    def _lower(self, center: Tensor, perturbation: object, labels: Tensor, method: str) -> Tensor:
        if method not in METHODS:
            raise ValueError(f"unknown bound method {method!r}; valid: {', '.join(METHODS)}")
        module = self._module()
        if module is None:
            raise RuntimeError("the module these bounds were built for no longer exists")
        self.bounded.train(module.training)
        for node in self._parameter_nodes:
            # Its forward sets requires_grad_(training) on the module's own parameter, which in eval
            # mode would freeze it for good; this keeps each parameter's setting, in either mode.
            node.training = node.param.requires_grad
        x = self._lirpa.BoundedTensor(center, perturbation)
        spec = margin_matrix(labels, self.num_classes).to(center.dtype)
        # Only the lower bound of the last node; IBP computes both anyway, CROWN halves its last pass.
        try:
            lower, _ = self.bounded.compute_bounds(x=(x,), C=spec, method=METHODS[method], bound_upper=False)
        except AssertionError:
            if self.conv_mode == "matrix":
                raise
            logger.debug("auto_LiRPA's patches mode failed on %s; bounding convolutions as matrices", type(module).__name__)
            self._build(BOUND_OPTS)
            return self._lower(center, perturbation, labels, method)
        # The label's row of C is zero, so its bound is exactly 0; make it so despite rounding.
        return lower.scatter(1, labels[:, None], 0.0)

    def margins(self, lower: Tensor, upper: Tensor, labels: Tensor, method: str, center: Tensor | None = None) -> Tensor:
        """Lower bounds (B×K) of ``z_y − z_j`` over the box ``[lower, upper]``; 0 at ``j = y``.

        :param method: a key of :data:`METHODS`.
        :param center: the point whose forward pass auto_LiRPA records; ``(lower + upper) / 2`` by default.
        """
        center = (lower + upper) / 2 if center is None else center
        perturbation = self._lirpa.PerturbationLpNorm(norm=math.inf, x_L=lower, x_U=upper)
        return self._lower(center, perturbation, labels, method)

    def margins_l2(self, center: Tensor, eps: float, labels: Tensor, method: str) -> Tensor:
        """Lower bounds (B×K) of ``z_y − z_j`` over the l2 ball of radius ``eps`` around ``center``.

        auto_LiRPA 0.3 carries an l2 ball only into a linear or convolutional
        layer; any other operation on the input (in-model normalisation, say)
        turns it into a single point, which would be unsound. Such modules are
        bounded over the ball's enclosing box ``center ± eps`` instead: sound, looser.
        """
        if not self.l2_native:
            return self.margins(center - eps, center + eps, labels, method, center=center)
        perturbation = self._lirpa.PerturbationLpNorm(norm=2.0, eps=eps)
        return self._lower(center, perturbation, labels, method)


def _l2_native(bounded: nn.Module, lirpa: ModuleType) -> bool:
    """Whether the input reaches only linear and convolutional layers, through flattening at most."""
    ops = lirpa.operators
    nodes = [node for node in bounded._modules.values() if type(node) is ops.BoundInput]
    while nodes:
        node = nodes.pop()
        for name in node.output_name:
            user = bounded[name]
            if type(user) is ops.BoundFlatten:
                nodes.append(user)
            elif type(user) not in (ops.BoundLinear, ops.BoundConv) or user.inputs[0] is not node:
                return False
    return True


#: Leaf layers that auto_LiRPA 0.3 bounds with all three methods on torch 2.13 (tests/lirpa checks each).
LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv2d, nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Flatten, nn.Identity, nn.AvgPool2d,
)
#: Leaf layers it bounds only in eval mode (in training they use batch statistics or random masks).
EVAL_LAYERS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout)

_BOUNDS: weakref.WeakKeyDictionary[nn.Module, LiRPABounds] = weakref.WeakKeyDictionary()


def conventional(module: nn.Module) -> bool:
    """Whether ``module`` is built only from layers auto_LiRPA bounds, in their current mode (see :func:`unbounded_parts`)."""
    return not unbounded_parts(module)


def unbounded_parts(module: nn.Module) -> list[str]:
    """What in ``module`` auto_LiRPA cannot bound, one phrase each; empty for a conventional network.

    Every leaf module must be exactly one of :data:`LAYERS` or, in eval mode,
    :data:`EVAL_LAYERS` (batch norm with running statistics), and every
    parameter must belong to such a leaf. Buffers elsewhere (normalisation
    constants used in ``forward``) are fine: the trace reads them.
    """
    leaves = [m for m in module.modules() if next(m.children(), None) is None]
    parts = sorted({type(layer).__name__ + (" in training mode" if type(layer) in EVAL_LAYERS else "")
                    for layer in leaves if not _supported(layer)})
    owned = {id(p) for layer in leaves for p in layer.parameters(recurse=False)}
    if not all(id(p) in owned for p in module.parameters()):
        parts.append(f"parameters held by {type(module).__name__} itself, outside its layers")
    return parts


def _supported(layer: nn.Module) -> bool:
    if type(layer) in EVAL_LAYERS:
        # Batch norm without running statistics normalises by the batch's even in eval mode.
        return not layer.training and getattr(layer, "track_running_stats", True)
    return type(layer) in LAYERS


def auto_lirpa_installed() -> bool:
    return importlib.util.find_spec("auto_LiRPA") is not None


def bounds_for(module: nn.Module, example: Tensor) -> LiRPABounds:
    """The cached :class:`LiRPABounds` of ``module``, built on first use (per device)."""
    bounds = _BOUNDS.get(module)
    if bounds is None or bounds.device != example.device:
        try:
            bounds = LiRPABounds(module, example[:2].detach())
        except HarnessError:
            raise
        except Exception as e:  # auto_LiRPA's tracing raises whatever its operators raise
            reason = " ".join(str(e).split()) or type(e).__name__
            raise HarnessError(f"auto_LiRPA cannot bound {type(module).__name__}: {reason}") from e
        _BOUNDS[module] = bounds
    return bounds
