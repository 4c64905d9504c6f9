"""The schema of an architecture file's parts (docs/arch-format.md): the input, the optimizer and
every layer type, as strict pydantic models (an unknown key is an error); Architecture
(costmodel.model.arch) holds them."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PlainValidator
from pydantic_core import PydanticCustomError

PositiveInt = Annotated[int, Field(strict=True, gt=0, le=2**63 - 1)]  # sizes are counted in int64
NonNegativeInt = Annotated[int, Field(strict=True, ge=0, le=2**63 - 1)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]

DTYPES = ("float32", "float64")
LOSSES = ("mse", "softmax_ce")
DTYPE_BYTES = {"float32": 4, "float64": 8}
ACTIVATIONS = ("relu", "tanh", "sigmoid", "none")
#: the layer types of the file, as they tag a place in a message ("layers[2] (conv): ...")
LAYER_TYPES = ("conv", "full", "global_avg_pool", "residual")

Activation = Literal["relu", "tanh", "sigmoid", "none"]


def _padding(value: object) -> int | str:
    """A conv layer's padding: a non-negative integer, "same" or "valid" (ARCH_FORMAT.md)."""
    if isinstance(value, str):
        if value in ("same", "valid"):
            return value
        raise PydanticCustomError("literal_error",
                                  "Input should be a non-negative integer, 'same' or 'valid'")
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError("int_type", "Input should be an integer, 'same' or 'valid'")
    if value < 0:
        raise PydanticCustomError("greater_than_equal", "Input should be greater than or equal to 0")
    return value


Padding = Annotated[Union[int, str], PlainValidator(_padding)]


class _Strict(BaseModel):
    #: defer_build: a model's validator is built when it is first used (the whole Architecture's
    #: once, at its first validation), not one per class at import (a cold start's cost)
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)


class InputShape(_Strict):
    height: PositiveInt
    width: PositiveInt
    channels: PositiveInt


class Optimizer(_Strict):
    model_config = ConfigDict(allow_inf_nan=False)  # lr .inf trains on NaN weights
    lr: PositiveFloat = 0.01
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # at 1 or more the velocity never decays
    # simpleNN: Grad = dW/I + W/C. Default C = 600 ~ simpleNN's C (0.01) times l (60000):
    # with C = 0.01 in this per-batch form W/C would swamp the data term.
    C: PositiveFloat = 600.0


class ConvLayer(_Strict):
    type: Literal["conv"]
    filters: PositiveInt
    kernel: PositiveInt
    padding: Padding = 0
    stride: PositiveInt = 1
    pool: PositiveInt = 1
    activation: Activation = "relu"
    # extended vocabulary (ARCH_FORMAT.md, "Extended vocabulary")
    groups: PositiveInt = 1
    pool_stride: PositiveInt | None = None  # None: = pool
    pool_type: Literal["max", "avg"] = "max"
    pool_ceil: bool = False
    batch_norm: bool = False
    dropout: float = 0.0  # checked in [0, 1) by _propagate, with the place named


class FullLayer(_Strict):
    type: Literal["full"]
    units: PositiveInt
    # None means the default: relu for hidden layers; the last full layer is always linear.
    activation: Activation | None = None
    batch_norm: bool = False
    dropout: float = 0.0


class GlobalAvgPoolLayer(_Strict):
    type: Literal["global_avg_pool"]


class ResidualBlock(_Strict):
    """activation(F(X) + shortcut(X)), F the conv layers in order (no pooling inside)."""

    type: Literal["residual"]
    layers: list[ConvLayer] = Field(min_length=1)
    shortcut: Literal["identity", "projection", "auto"] = "auto"
    activation: Activation = "relu"


Layer = Annotated[Union[ConvLayer, FullLayer, GlobalAvgPoolLayer, ResidualBlock],
                  Field(discriminator="type")]
