"""Running a torch `nn.Sequential`'s members in order, threading buffers and randomness.

A zoo model holds a torch `nn.Sequential` as a tuple of layers (`features.3.block.1.0`: the
tuple's indices are torch's), and `run_sequential` calls them in turn with one calling
convention. Layers with buffers or randomness inside (BatchNorm, dropout, the blocks built of
them) return themselves updated beside their output; those updates come back in the tuple.
An `nn.Sequential(OrderedDict(...))` whose names are not indices (RegNet's `block1-0`) is a
`NamedSequential`.
"""

import abc
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Self

import equinox as eqx
import jax
from jaxtyping import Array, PRNGKeyArray

from ._activation import _Activation
from ._conv import Conv2d
from ._dropout import Dropout
from ._linear import Linear
from ._norm import BatchNorm2d
from ._pool import AdaptiveAvgPool2d, MaxPool2d


class Layer(eqx.Module):
    """A layer with the sequential calling convention: `y, layer = layer(x, channels_last=,
    key=)`, the layer returned with its updated buffers (itself if it has none).

    Blocks (an inverted residual, a squeeze-excitation, a ConvNeXt block) subclass it, so
    `run_sequential` calls them like BatchNorm.
    """

    @abc.abstractmethod
    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        """**Arguments:** `x`, NCHW (NHWC with `channels_last=True`; 2-D where the layer is a
        classifier's); `key`, needed in train mode where there is randomness.

        **Returns:** `(y, layer)`."""


def apply_layer(
    layer: Any, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
) -> tuple[Array, Any]:
    """Call one member of a sequential with its own convention.

    **Returns:** `(y, layer)`, the layer carrying its updated buffers.
    """
    if isinstance(layer, tuple):
        return run_sequential(layer, x, channels_last=channels_last, key=key)
    if isinstance(layer, NamedSequential):
        return layer(x, channels_last=channels_last, key=key)
    if isinstance(layer, Layer):
        return layer(x, channels_last=channels_last, key=key)
    if isinstance(layer, BatchNorm2d):
        return layer(x, channels_last=channels_last)
    if isinstance(layer, (Conv2d, MaxPool2d, AdaptiveAvgPool2d)):
        return layer(x, channels_last=channels_last), layer
    if isinstance(layer, Dropout):
        return layer(x, key=key), layer
    if isinstance(layer, (Linear, _Activation)):
        return layer(x), layer
    raise TypeError(
        f"run_sequential cannot call a {type(layer).__name__}: subclass zoo.layers.Layer "
        "(`y, layer = layer(x, channels_last=..., key=...)`) to put it in a sequential"
    )


def split_keys(key: PRNGKeyArray | None, n: int) -> list[PRNGKeyArray | None]:
    """`n` keys split from `key`, or `n` `None`s without one (eval mode needs none)."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def run_sequential(
    layers: Sequence[Any],
    x: Array,
    *,
    channels_last: bool = False,
    key: PRNGKeyArray | None = None,
) -> tuple[Array, tuple[Any, ...]]:
    """`torch.nn.Sequential`'s forward over `layers` (a tuple, nested for nested sequentials).

    **Arguments:**

    - `layers`: the members, in order.
    - `x`: the input (NCHW, NHWC with `channels_last=True`).
    - `key`: split so each member gets its own (only dropout and stochastic depth use them).

    **Returns:** `(y, layers)`, the members carrying their updated buffers.
    """
    keys = split_keys(key, len(layers))
    new = []
    for layer, k in zip(layers, keys, strict=True):
        x, layer = apply_layer(layer, x, channels_last=channels_last, key=k)
        new.append(layer)
    return x, tuple(new)


@jax.tree_util.register_pytree_with_keys_class
class NamedSequential:
    """torch's `nn.Sequential(OrderedDict(...))`: members in order under names that need not
    be identifiers (torchvision's RegNet names its blocks `block1-0`). A pytree whose key path
    entries are the names, so the zoo's state_dict names are torch's; `seq.block1`,
    `getattr(seq, "block1-0")`, `seq["block1-0"]` and `seq[0]` read a member.

    **Arguments:**

    - `members`: `(name, layer)` pairs, in torch's registration order.

    A call `seq(x, channels_last=, key=)` runs the members in turn (as `run_sequential`) and
    returns `(y, seq)`, the members carrying their updated buffers.
    """

    __slots__ = ("_layers", "_names")

    def __init__(self, members: Iterable[tuple[str, Any]]):
        members = tuple(members)
        names = tuple(name for name, _ in members)
        if len(set(names)) != len(names) or any(not n or "." in n for n in names):
            raise ValueError(f"NamedSequential: names must be unique, non-empty, dot-free: {names}")
        object.__setattr__(self, "_names", names)
        object.__setattr__(self, "_layers", tuple(layer for _, layer in members))

    # -- pytree ------------------------------------------------------------------------------
    def tree_flatten_with_keys(self) -> tuple[list, tuple[str, ...]]:
        keys = [jax.tree_util.GetAttrKey(n) for n in self._names]
        return list(zip(keys, self._layers, strict=True)), self._names

    def tree_flatten(self) -> tuple[tuple, tuple[str, ...]]:
        return self._layers, self._names

    @classmethod
    def tree_unflatten(cls, names: tuple[str, ...], layers: Iterable[Any]) -> "NamedSequential":
        new = object.__new__(cls)  # no checks: JAX unflattens with placeholders too
        object.__setattr__(new, "_names", names)
        object.__setattr__(new, "_layers", tuple(layers))
        return new

    # -- access ------------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """The members' names, in order."""
        return self._names

    def items(self) -> Iterator[tuple[str, Any]]:
        """`(name, layer)` pairs, in order."""
        return zip(self._names, self._layers, strict=True)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # slots not yet set (copy, pickle): no recursion
            raise AttributeError(name)
        try:
            return self._layers[self._names.index(name)]
        except ValueError:
            raise AttributeError(f"NamedSequential has no member {name!r}") from None

    def __getitem__(self, index: int | str) -> Any:
        return getattr(self, index) if isinstance(index, str) else self._layers[index]

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("NamedSequential is immutable: use eqx.tree_at")

    def __reduce__(self) -> tuple:  # copy, deepcopy, pickle: rebuilt from its members
        return type(self), (tuple(self.items()),)

    def __len__(self) -> int:
        return len(self._layers)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._layers)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n!r}: {type(layer).__name__}" for n, layer in self.items())
        return f"NamedSequential({{{inner}}})"

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, "NamedSequential"]:
        keys = split_keys(key, len(self))
        new = []
        for layer, k in zip(self._layers, keys, strict=True):
            x, layer = apply_layer(layer, x, channels_last=channels_last, key=k)
            new.append(layer)
        return x, NamedSequential(zip(self._names, new, strict=True))
