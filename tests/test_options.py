from dataclasses import dataclass
from typing import Literal

import pytest

from harness.errors import UsageError
from harness.options import epochs_field, parse_options, scale_epochs


@dataclass(frozen=True)
class Opts:
    epochs: int = 10
    warmup: float = epochs_field(2.0)
    lr: float = 0.1
    flip: bool = False
    mode: Literal["zeros", "edge"] = "zeros"
    betas: tuple[float, float] = (0.9, 0.99)
    limit: int | None = None


def test_values_are_converted_to_the_declared_types():
    o = parse_options(Opts, {"epochs": "5", "lr": "8/255", "flip": "yes", "mode": "edge", "betas": "0.5,0.6", "limit": "none"}, "t")
    assert o == Opts(epochs=5, lr=8 / 255, flip=True, mode="edge", betas=(0.5, 0.6), limit=None)


def test_unknown_option_names_the_closest_and_all():
    with pytest.raises(UsageError) as exc:
        parse_options(Opts, {"lrr": 1}, "trainer 'x'")
    message = str(exc.value)
    assert "'lrr'" in message and "did you mean 'lr'" in message and "epochs" in message and "\n" not in message


@pytest.mark.parametrize(
    "values, fragment",
    [({"epochs": "ten"}, "integer"), ({"epochs": 2.5}, "integer"), ({"flip": "maybe"}, "true or false"),
     ({"mode": "reflect"}, "'zeros'"), ({"betas": "1,2,3"}, "2 values"), ({"lr": "fast"}, "number")],
)
def test_ill_typed_values_are_rejected(values, fragment):
    with pytest.raises(UsageError, match=fragment):
        parse_options(Opts, values, "t")


def test_epoch_fields_scale_with_the_total():
    o = scale_epochs(Opts(epochs=10, warmup=2.0), 5)
    assert o.epochs == 5 and o.warmup == pytest.approx(1.0) and o.lr == 0.1
    assert scale_epochs(o, 5) is o
