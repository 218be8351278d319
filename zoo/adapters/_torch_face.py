"""The torch face: an `nn.Module` whose forward and backward are jitted JAX computations.

Design (what keeps the per-call cost flat):

- Torch owns the memory. Each parameter and buffer is an ordinary `nn.Parameter`/buffer under
  torchvision's name; JAX reads it through a DLPack alias made once and reused while the
  tensor's storage stays the same (checked by data pointer each call, so `.to()`,
  `load_state_dict(assign=True)` or a deepcopy simply re-alias).
- A forward under `torch.no_grad()` (or with nothing requiring grad) runs the plain jitted
  forward: no VJP is built.
- With grad, the jitted forward also returns the VJP closure (`jax.vjp`'s result is a pytree
  of residuals), and the backward runs it jitted.
- In train mode the new BatchNorm statistics come back as one flat array (one conversion)
  and are copied into the buffers in place; `num_batches_tracked` is incremented in torch.
"""

import copy
import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import torch
from torch import nn

# torch_to_jax: zero-copy where DLPack allows, one contiguous copy otherwise (stride-0
# expanded grads, channels_last or sliced inputs, unaligned views): never an error.
from weights_convert import (
    is_buffer_name,
    named_arrays,
    statistic_float_dtype,
    torch_to_jax as _to_jax,
)

from .._compile import jit
from .._modes import eval_mode, train_mode
from ..layers._norm import statistic_bits, statistic_value
from ..models._checks import check_image_batch


def _is_counter(name: str) -> bool:
    return name.endswith("num_batches_tracked")


class _Node(nn.Module):
    """A named container mirroring torchvision's submodules (`face.layer1[0].conv1`): it holds
    parameters and buffers only; the computation is the whole model's, in JAX."""

    def __getitem__(self, index: int) -> nn.Module:
        return self._modules[str(index)]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class _Program:
    """The jitted JAX functions for one architecture, over lists of arrays in state_dict
    order. Shared (not copied) by deep copies of the face."""

    def __init__(self, model: Any):
        dynamic, self.static = eqx.partition(model, eqx.is_array)
        self.treedef = jax.tree_util.tree_structure(dynamic)
        self.names = list(named_arrays(dynamic))
        self.param_idx = [i for i, n in enumerate(self.names) if not is_buffer_name(n)]
        self.buffer_idx = [
            i for i, n in enumerate(self.names) if is_buffer_name(n) and not _is_counter(n)
        ]
        self.counter_idx = [i for i, n in enumerate(self.names) if _is_counter(n)]
        # The statistics the model stores as bits (torch holds their floats): their integer
        # dtype in the template, or None.
        leaves = named_arrays(dynamic)
        self.buffer_bits = [
            leaves[self.names[i]].dtype
            if statistic_float_dtype(self.names[i], leaves[self.names[i]]) is not None
            else None
            for i in self.buffer_idx
        ]
        # A features-only model returns a list of maps (see `ZooModel.features_only`).
        self.many_outputs = getattr(model, "out_indices", None) is not None
        self.forward = jit(self._run)  # `train` and `input_grad` are static (Python bools)
        self.forward_vjp = jit(self._forward_vjp)
        self.backward = jit(lambda vjp, g: vjp(g))

    def _model(self, train: bool, params, buffers, counters) -> Any:
        leaves: list[Any] = [None] * len(self.names)
        for i, p in zip(self.param_idx, params, strict=True):
            leaves[i] = p
        for i, b, bits in zip(self.buffer_idx, buffers, self.buffer_bits, strict=True):
            # torch's float buffer (of whatever dtype `.to()` gave it) as the bits it stores.
            leaves[i] = b if bits is None else statistic_bits(b)
        for j, i in enumerate(self.counter_idx):
            leaves[i] = counters[j]
        model = eqx.combine(jax.tree_util.tree_unflatten(self.treedef, leaves), self.static)
        return train_mode(model) if train else eval_mode(model)

    def _run(self, train: bool, params, buffers, counters, x, seed):
        model = self._model(train, params, buffers, counters)
        logits, new_model = model(x, key=jax.random.key(seed) if train else None)
        if not train:
            return logits, jnp.zeros((0,), jnp.float32)
        leaves = jax.tree_util.tree_leaves(eqx.filter(new_model, eqx.is_array))
        new_buffers = [statistic_value(leaves[i]).reshape(-1) for i in self.buffer_idx]
        if not new_buffers:
            return logits, jnp.zeros((0,))
        # One flat array in the buffers' own dtype (float64 in a float64 face).
        return logits, jnp.concatenate(new_buffers).astype(jnp.result_type(*new_buffers))

    def _forward_vjp(self, train: bool, input_grad: bool, params, buffers, counters, x, seed):
        if input_grad:
            logits, vjp, new_buffers = jax.vjp(
                lambda p, x: self._run(train, p, buffers, counters, x, seed),
                params,
                x,
                has_aux=True,
            )
        else:
            logits, vjp, new_buffers = jax.vjp(
                lambda p: self._run(train, p, buffers, counters, x, seed), params, has_aux=True
            )
        return logits, new_buffers, vjp


class _JaxFunction(torch.autograd.Function):
    """Autograd glue: the parameters are inputs so their `.grad` fills as usual."""

    @staticmethod
    def forward(ctx, face: "TorchModel", x: torch.Tensor, *params: torch.Tensor):
        input_grad = ctx.needs_input_grad[1]
        out, vjp = face._forward_vjp(x, input_grad)
        ctx.face, ctx.vjp, ctx.input_grad = face, vjp, input_grad
        return tuple(out) if isinstance(out, list) else out

    @staticmethod
    def backward(ctx, *grad_outputs: torch.Tensor):
        many = ctx.face._program.many_outputs
        cotangent = [_to_jax(g) for g in grad_outputs] if many else _to_jax(grad_outputs[0])
        grads = ctx.face._program.backward(ctx.vjp, cotangent)
        ctx.vjp = None  # free the residuals, as torch frees saved tensors
        param_grads = grads[0]
        grad_x = torch.from_dlpack(grads[1]) if ctx.input_grad else None
        needs = ctx.needs_input_grad[2:]
        return (
            None,
            grad_x,
            *(
                torch.from_dlpack(g) if need else None
                for g, need in zip(param_grads, needs, strict=True)
            ),
        )


class TorchModel(nn.Module):
    """`zoo.load(..., framework="torch")`: a `torch.nn.Module` computing with JAX.

    Its `state_dict()` keys are torchvision's, parameters are real `nn.Parameter`s and the
    BatchNorm statistics real buffers; `.train()`/`.eval()` switch the JAX model's mode (it
    starts in eval mode, like a loaded pretrained model). Forward and backward run jitted JAX
    code on the tensors' own memory (DLPack, no copies).

    **Arguments:**

    - `model`: the Equinox model (its arrays are copied once into torch-owned tensors).
    - `name`: the registry name (used by `zoo.to_torchvision` and exports).
    """

    def __init__(self, model: Any, name: str = ""):
        super().__init__()
        _keep_dynamo_out()
        self.name = name
        # The model contract's facts (`zoo.models.ZooModel`), fixed at construction.
        self.in_chans = int(getattr(model, "in_chans", 3))
        self.num_classes = int(getattr(model, "num_classes", 0))
        self.num_features = int(getattr(model, "num_features", 0))
        self.feature_info = tuple(getattr(model, "selected_feature_info", ()))
        self._program = _Program(model)
        for path, array in named_arrays(model).items():
            *parents, leaf = path.split(".")
            owner: nn.Module = self
            for part in parents:
                if part not in owner._modules:
                    owner.add_module(part, _Node())
                owner = owner._modules[part]
            tensor = torch.from_dlpack(array).clone()
            float_dtype = statistic_float_dtype(path, array)
            if float_dtype is not None:  # stored as bits: torch's buffer holds the floats
                tensor = tensor.view(torch.float64 if float_dtype.itemsize == 8 else torch.float32)
            if _is_counter(leaf):
                owner.register_buffer(leaf, tensor.long())
            elif is_buffer_name(path):
                owner.register_buffer(leaf, tensor)
            else:
                owner.register_parameter(leaf, nn.Parameter(tensor))
        self._aliases: dict[int, tuple[int, torch.dtype, jax.Array]] = {}
        self.eval()

    # -- pickling / deepcopy: JAX aliases and jitted functions are rebuilt, not copied ------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_aliases"] = {}
        return state

    def __deepcopy__(self, memo: dict) -> "TorchModel":
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for k, v in self.__getstate__().items():
            # The program holds only static structure and jitted functions: share it.
            object.__setattr__(new, k, v if k == "_program" else copy.deepcopy(v, memo))
        return new

    # -- export -----------------------------------------------------------------------------
    def to_equinox(self) -> Any:
        """The Equinox model holding this face's current parameters and buffers.

        The arrays are copies: training the face afterwards (an optimizer step writes the
        tensors in place) does not change the returned model, and vice versa. The model is
        in the face's mode (`train_mode` if `self.training`, else `eval_mode`).

        **Returns:** the Equinox model (same class and static configuration as the one the
        face was built from), e.g. for `zoo.JaxModel`, `jax.jit` or an optax loop.
        """
        prog = self._program
        leaves = []
        bits = dict(zip(prog.buffer_idx, prog.buffer_bits, strict=True))
        for i, (name, tensor) in enumerate(zip(prog.names, self._tensors(), strict=True)):
            # jnp.array copies (jnp.asarray of a NumPy view may alias the tensor's memory on
            # CPU); the counters are int32 in the Equinox model, int64 in torch; the
            # statistics are stored as their bits.
            array = tensor.detach().cpu().numpy()
            if bits.get(i) is not None:
                array = array.view(bits[i])
            leaves.append(jnp.array(array, dtype=jnp.int32 if _is_counter(name) else None))
        model = eqx.combine(jax.tree_util.tree_unflatten(prog.treedef, leaves), prog.static)
        return train_mode(model) if self.training else eval_mode(model)

    # -- memory -----------------------------------------------------------------------------
    def _tensors(self) -> list[torch.Tensor]:
        found = dict(self.named_parameters()) | dict(self.named_buffers())
        return [found[n] for n in self._program.names]

    def _alias(self, index: int, tensor: torch.Tensor) -> jax.Array:
        # Reuse the DLPack alias while the tensor still lives at the same address.
        hit = self._aliases.get(index)
        ptr = tensor.data_ptr()
        if hit is None or hit[0] != ptr or hit[1] != tensor.dtype:
            hit = (ptr, tensor.dtype, _to_jax(tensor))
            self._aliases[index] = hit
        return hit[2]

    def _arguments(self, x: torch.Tensor):
        check_image_batch(x, self.in_chans, f"TorchModel({self.name})")
        tensors = self._tensors()
        prog = self._program
        params = [self._alias(i, tensors[i]) for i in prog.param_idx]
        buffers = [self._alias(i, tensors[i]) for i in prog.buffer_idx]
        counters = [tensors[i] for i in prog.counter_idx]
        if self.training:
            counter_values = jnp.asarray([int(c) for c in counters], jnp.int32)
            seed = jnp.asarray(int(torch.randint(0, 2**31 - 1, ())), jnp.uint32)
        else:
            counter_values = jnp.zeros((len(counters),), jnp.int32)
            seed = jnp.zeros((), jnp.uint32)
        targets = [tensors[i] for i in prog.buffer_idx], counters
        return (params, buffers, counter_values, _to_jax(x), seed), targets

    def _write_buffers(self, targets, new_flat: jax.Array) -> None:
        if not self.training:
            return
        buffers, counters = targets
        flat = torch.from_dlpack(new_flat)
        offset = 0
        with torch.no_grad():
            for b in buffers:
                n = b.numel()
                b.copy_(flat[offset : offset + n].view_as(b))
                offset += n
            for c in counters:
                c.add_(1)

    # -- compute ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for an NCHW float batch (after `features_only`, the list of feature maps);
        differentiable w.r.t. the parameters and `x`. `x` must be a `torch.Tensor` (a NumPy
        array is refused with the fix: `torch.from_numpy`). An empty batch returns empty
        outputs (`(0, num_classes)`, as torchvision), contributes no gradient and changes no
        buffer."""
        if not isinstance(x, torch.Tensor):
            kind = f"{type(x).__module__}.{type(x).__qualname__}".removeprefix("builtins.")
            raise TypeError(
                f"TorchModel({self.name}) takes a torch.Tensor; got a {kind}. Convert it with "
                "torch.from_numpy(x) (or call the JAX face, zoo.load(..., framework='jax'), "
                "which takes NumPy and JAX arrays)."
            )
        if x.ndim == 4 and x.shape[0] == 0:
            return self._empty_output(x)
        params = [p for p in self.parameters()]
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            out = _JaxFunction.apply(self, x, *params)
            return list(out) if self._program.many_outputs else out
        args, targets = self._arguments(x)
        out, new_flat = self._program.forward(self.training, *args)
        self._write_buffers(targets, new_flat)
        return _to_torch(out)

    def _empty_output(self, x: torch.Tensor) -> Any:
        # The outputs' shapes for one image, with zero rows: the models' flattening reshapes
        # cannot infer a dimension of an empty batch. Nothing runs and no buffer changes.
        (params, buffers, counters, _, seed), _ = self._arguments(x)
        one = jax.ShapeDtypeStruct((1, *x.shape[1:]), _to_jax(x).dtype)
        run = functools.partial(self._program._run, False)
        out, _ = jax.eval_shape(run, params, buffers, counters, one, seed)
        outs = _to_torch(
            jax.tree_util.tree_map(lambda o: jnp.zeros((0, *o.shape[1:]), o.dtype), out)
        )
        if torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters())
        ):
            # So that a training step's backward runs; zero images contribute no gradient.
            outs = (
                [o.requires_grad_() for o in outs]
                if isinstance(outs, list)
                else outs.requires_grad_()
            )
        return outs

    def _forward_vjp(self, x: torch.Tensor, input_grad: bool):
        args, targets = self._arguments(x)
        out, new_flat, vjp = self._program.forward_vjp(self.training, input_grad, *args)
        self._write_buffers(targets, new_flat)
        return _to_torch(out), vjp


def _to_torch(out: Any) -> Any:
    """The face's output as torch: a tensor, or a list of them (feature maps)."""
    return [torch.from_dlpack(o) for o in out] if isinstance(out, list) else torch.from_dlpack(out)


def _keep_dynamo_out() -> None:
    """Wrap `TorchModel.forward` in `torch.compiler.disable`, once: `torch.compile` must not
    trace into its JAX calls. Done when the first torch face is built rather than at class
    definition, because `torch.compiler.disable` imports `torch._dynamo` (~1.2 s), which
    `import zoo` and JAX-only users need not pay."""
    if not getattr(TorchModel.forward, "_zoo_dynamo_disabled", False):
        forward = torch.compiler.disable(TorchModel.forward)
        forward._zoo_dynamo_disabled = True  # type: ignore[attr-defined]
        TorchModel.forward = forward  # type: ignore[method-assign]
