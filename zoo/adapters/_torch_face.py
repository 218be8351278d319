"""The torch face: the architecture's own torch module tree (torchvision's `ResNet`, the CNN's
twin), whose forward and backward run the zoo's jitted JAX programs while the tree is as the
zoo built it.

What runs where (docs/guides/torch.md has the user's table):

- **Untouched** (no module replaced or reconfigured, no hook below the root): the whole model
  is one JAX program. Each submodule's own `.training` flag sets its layer's mode, and only
  the parameters that require grad get gradients.
- **A replaced classifier or stem** of the same kind (`m.fc = nn.Linear(512, 5)`, a
  grayscale `conv1`): adopted, the JAX program is rebuilt for the new shapes.
- **Other surgery, or hooks on submodules**: torchvision's own `forward` runs; each top-level
  child that is untouched inside (`layer1`, `features`) computes in JAX, called through
  torch so its hooks fire; replaced modules run their own forward. A top-level child with
  a change or hook deeper inside runs in torch, with a one-time warning.
- **Not expressible in JAX** (torch.func transforms, float64 without `jax_enable_x64`,
  global module hooks): the whole forward runs in torch, with a one-time warning.
- Tracing for deployment (`torch.jit.trace`, `torch.export`, ONNX) raises an error naming
  `zoo.to_torchvision`; torch.fx tracing (`create_feature_extractor`) traces torchvision's
  forward.

Memory: torch owns every parameter and buffer; JAX reads them through DLPack aliases, reused
only while they are true aliases of the same storage (a channels_last weight is copied each
call, never cached). The VJP's large residuals are saved with `ctx.save_for_backward`, so
torch frees them after `backward`, `retain_graph=True` keeps them and activation
checkpointing can drop and recompute them.
"""

import copy
import functools
import warnings
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
    to_state_dict,
    torch_to_jax as _to_jax,
)
from weights_convert._names import _is_array, _path_to_name

from .._compile import enable_compilation_cache, jit
from .._registry import get_model_info
from ..layers import (
    AdaptiveAvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Layer,
    Linear,
    MaxPool2d,
    NamedSequential,
    apply_layer,
)
from ..layers._activation import _Activation
from ..layers._norm import statistic_bits, statistic_value
from ..models._checks import check_image_batch

_SEGMENT_LAYERS = (
    tuple,
    NamedSequential,
    Layer,
    BatchNorm2d,
    Conv2d,
    MaxPool2d,
    AdaptiveAvgPool2d,
    Dropout,
    Linear,
    _Activation,
)
# Residuals smaller than this stay with the autograd node instead of being saved as tensors:
# converting each costs ~10 us, and they are a negligible part of the memory.
_SAVE_AT_LEAST = 1024
_VALUE_TYPES = (bool, int, float, str, tuple, type(None))


def _is_counter(name: str) -> bool:
    return name.endswith("num_batches_tracked")


def _has_mode(node: object) -> bool:
    return hasattr(node, "inference") and not isinstance(node, type)


# -- the JAX programs ------------------------------------------------------------------------


class _Program:
    """The jitted JAX functions for one Equinox (sub)model, over lists of arrays in
    state_dict order. `call="model"` calls the model (`(logits, model) = model(x, key)`);
    `call="layer"` calls one member of torchvision's tree on NCHW (or flat) input.

    The mode of each layer with an `inference` flag is a static argument (`modes`, one
    bool per `mode_layers` entry, True for train), so each submodule's own
    `.train()`/`.eval()` is honoured; `grad_mask` says which parameters get gradients.
    Programs are shared by every face of one configuration (`_program`)."""

    def __init__(self, template: Any, call: str, layouts: tuple[str, str] = ("NCHW", "NCHW")):
        dynamic, static = eqx.partition(template, _is_array)  # arrays or their shapes
        self.call, self.layouts = call, layouts
        self.treedef = jax.tree_util.tree_structure(dynamic)
        leaves = named_arrays(dynamic)
        self.names = list(leaves)
        self.param_idx = [i for i, n in enumerate(self.names) if not is_buffer_name(n)]
        self.buffer_idx = [
            i for i, n in enumerate(self.names) if is_buffer_name(n) and not _is_counter(n)
        ]
        self.counter_idx = [i for i, n in enumerate(self.names) if _is_counter(n)]
        # The statistics the model stores as bits (torch holds their floats).
        self.buffer_bits = [
            statistic_float_dtype(self.names[i], leaves[self.names[i]]) is not None
            for i in self.buffer_idx
        ]
        # The layers with a mode, by name (`layer1.0.bn1`), and the static part's leaves.
        flat, self._static_def = jax.tree_util.tree_flatten_with_path(static)
        self._static_leaves = [leaf for _, leaf in flat]
        self._mode_slots: list[list[int]] = []
        self.mode_layers: list[str] = []
        for i, (path, _) in enumerate(flat):
            name = _path_to_name(path)
            if name == "inference" or name.endswith(".inference"):
                layer = name.removesuffix("inference").removesuffix(".")
                if layer in self.mode_layers:
                    self._mode_slots[self.mode_layers.index(layer)].append(i)
                else:
                    self.mode_layers.append(layer)
                    self._mode_slots.append([i])
        # Which of those draw random numbers in train mode (dropout, stochastic depth; not
        # BatchNorm): only then does a call take a seed from torch's generator.
        draws = {}
        for path, node in jax.tree_util.tree_flatten_with_path(template, is_leaf=_has_mode)[0]:
            if _has_mode(node):
                draws[_path_to_name(path)] = not isinstance(node, BatchNorm2d)
        self.random_layers = [draws.get(layer, True) for layer in self.mode_layers]
        self._statics: dict[tuple[bool, ...], Any] = {}
        # A features-only model returns a list of maps (see `ZooModel.features_only`).
        self.many_outputs = getattr(template, "out_indices", None) is not None
        # `modes` and `dtype` (and `grad_mask`, `input_grad`) are static arguments.
        self.forward = jit(self._run)
        self.forward_vjp = jit(self._forward_vjp)
        self.backward = jit(_call_vjp)
        self.loss_and_grads = jit(self._loss_and_grads)

    def static(self, modes: tuple[bool, ...]) -> Any:
        """The static part with each layer's `inference` flag set from `modes`."""
        if modes not in self._statics:
            leaves = list(self._static_leaves)
            for slots, train in zip(self._mode_slots, modes, strict=True):
                for i in slots:
                    leaves[i] = not train
            self._statics[modes] = jax.tree_util.tree_unflatten(self._static_def, leaves)
        return self._statics[modes]

    def model(self, modes: tuple[bool, ...], leaves: list[Any]) -> Any:
        return eqx.combine(jax.tree_util.tree_unflatten(self.treedef, leaves), self.static(modes))

    def _model(self, modes, params, buffers, counters) -> Any:
        leaves: list[Any] = [None] * len(self.names)
        for i, p in zip(self.param_idx, params, strict=True):
            leaves[i] = p
        for i, b, bits in zip(self.buffer_idx, buffers, self.buffer_bits, strict=True):
            # torch's float buffer (of whatever dtype `.to()` gave it) as the bits it stores.
            leaves[i] = statistic_bits(b) if bits else b
        for j, i in enumerate(self.counter_idx):
            leaves[i] = counters[j]
        return self.model(modes, leaves)

    def _run(self, modes, dtype, params, buffers, counters, x, seed):
        model = self._model(modes, params, buffers, counters)
        if dtype is not None:  # torch.autocast: compute in its dtype, as torchvision would
            from .._load import cast_floats

            model, x = cast_floats(model, dtype), x.astype(dtype)
        train = any(modes)
        key = jax.random.key(seed) if train else None
        if self.call == "model":
            out, new_model = model(x, key=key)
        else:
            out, new_model = _apply_member(model, x, key, self.layouts)
        if not train:
            return out, jnp.zeros((0,), jnp.float32)
        leaves = jax.tree_util.tree_leaves(eqx.filter(new_model, eqx.is_array))
        # Bits become the statistics' floats; an integer buffer (Swin's, MaxViT's relative
        # position index) is no float's bits and stays as it is.
        new_buffers = [
            (statistic_value(leaves[i]) if bits else leaves[i]).reshape(-1)
            for i, bits in zip(self.buffer_idx, self.buffer_bits, strict=True)
        ]
        if not new_buffers:
            return out, jnp.zeros((0,), jnp.float32)
        # One flat array in the buffers' own dtype (float64 in a float64 face).
        return out, jnp.concatenate(new_buffers).astype(jnp.result_type(*new_buffers))

    def _forward_vjp(self, modes, dtype, grad_mask, input_grad, params, buffers, counters, x, seed):
        # Only the parameters that require grad are differentiated: XLA then computes no
        # weight gradient for the frozen ones (a frozen backbone's step is cheaper).
        wanted = [p for p, g in zip(params, grad_mask, strict=True) if g]

        def run(chosen, x):
            full = _with_chosen(params, grad_mask, chosen)
            return self._run(modes, dtype, full, buffers, counters, x, seed)

        if input_grad:
            out, vjp, new_buffers = jax.vjp(run, wanted, x, has_aux=True)
        else:
            out, vjp, new_buffers = jax.vjp(lambda c: run(c, x), wanted, has_aux=True)
        return out, new_buffers, vjp

    def _loss_and_grads(self, modes, dtype, grad_mask, params, buffers, counters, x, labels, seed):
        # Forward, torch's mean cross-entropy and the gradients of the parameters that
        # require grad, in one XLA computation (`zoo.fused_cross_entropy`).
        wanted = [p for p, g in zip(params, grad_mask, strict=True) if g]

        def loss_fn(chosen):
            full = _with_chosen(params, grad_mask, chosen)
            logits, new_buffers = self._run(modes, dtype, full, buffers, counters, x, seed)
            return _torch_cross_entropy(logits), (logits, new_buffers)

        def _torch_cross_entropy(logits):
            # F.cross_entropy: the mean over targets other than ignore_index (-100), in at
            # least float32 (as autocast computes it); the loss in the logits' dtype.
            wide = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
            valid = labels != -100
            picked = jnp.take_along_axis(
                jax.nn.log_softmax(wide, axis=-1), jnp.where(valid, labels, 0)[:, None], axis=-1
            )[:, 0]
            loss = -jnp.sum(jnp.where(valid, picked, 0)) / jnp.sum(valid)
            return loss if dtype is not None else loss.astype(logits.dtype)

        (loss, (logits, new_buffers)), grads = jax.value_and_grad(loss_fn, has_aux=True)(wanted)
        return loss, logits, new_buffers, grads


def _with_chosen(params: list, grad_mask: tuple[bool, ...], chosen: list) -> list:
    """`params` with the ones `grad_mask` selects replaced, in order, by `chosen` (the
    differentiated ones)."""
    it = iter(chosen)
    return [next(it) if g else p for p, g in zip(params, grad_mask, strict=True)]


def _runnable(node: Any) -> bool:
    """Whether `apply_layer` runs `node` and everything in it."""
    if isinstance(node, tuple):
        return all(_runnable(member) for member in node)
    if isinstance(node, NamedSequential):
        return all(_runnable(member) for member in node.tree_flatten()[0])
    return isinstance(node, _SEGMENT_LAYERS)


def _call_vjp(vjp: Any, cotangent: Any) -> Any:
    return vjp(cotangent)


def _apply_member(
    layer: Any, x: jax.Array, key: Any, layouts: tuple[str, str] = ("NCHW", "NCHW")
) -> tuple[Any, Any]:
    """One member of torchvision's tree on torch's layout: NCHW images, or flat features, or
    where `layouts` (the member's torch input and output layouts, from the model class's
    `torch_layouts`) says so, NHWC maps (torchvision's Swin passes NHWC between its
    top-level modules)."""
    image = x.ndim == 4 and layouts[0] == "NCHW"
    y, layer = apply_layer(
        layer, x.transpose(0, 2, 3, 1) if image else x, channels_last=True, key=key
    )
    return (y.transpose(0, 3, 1, 2) if y.ndim == 4 and layouts[1] == "NCHW" else y), layer


# Faces of one configuration share their programs (and so JAX's compiled executables).
_PROGRAMS: dict[tuple, _Program] = {}


def _program(
    recipe: "_Recipe", path: str, template: Any, layouts: tuple[str, str] = ("NCHW", "NCHW")
) -> _Program:
    key = (recipe.key, path)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = _Program(template, "model" if not path else "layer", layouts)
    return _PROGRAMS[key]


# -- what the face was built from ------------------------------------------------------------


class _Recipe:
    """What rebuilds a face's Equinox structure: the registry name and the options a
    state_dict does not pin down (after pickling, and when a new classifier is adopted)."""

    def __init__(self, name, num_classes, in_chans, options, out_indices):
        self.name, self.num_classes, self.in_chans = name, num_classes, in_chans
        self.options, self.out_indices = dict(options), out_indices
        self.key = (name, num_classes, in_chans, repr(sorted(self.options.items())), out_indices)

    @classmethod
    def of(cls, model: Any, name: str) -> "_Recipe":
        return cls(
            name,
            int(getattr(model, "num_classes", 0)),
            int(getattr(model, "in_chans", 3)),
            model.config_kwargs() if hasattr(model, "config_kwargs") else {},
            getattr(model, "out_indices", None),
        )

    def replace(self, num_classes: int, in_chans: int) -> "_Recipe":
        return _Recipe(self.name, num_classes, in_chans, self.options, self.out_indices)

    def template(self) -> Any:
        """The Equinox model's structure, with `ShapeDtypeStruct`s for arrays."""
        info = get_model_info(self.name)

        def build():
            model = info.builder(
                num_classes=self.num_classes,
                in_chans=self.in_chans,
                **self.options,
                key=jax.random.key(0),
            )
            return model if self.out_indices is None else model.features_only(self.out_indices)

        return eqx.filter_eval_shape(build)

    def torch_twin(self, names: Any = None) -> nn.Module:
        """The registered torch twin for this recipe; with `num_classes=0`, every module the
        Equinox model (whose array names are `names`) has no arrays for is an `nn.Identity`,
        as timm removes classifiers (GoogLeNet's auxiliary heads' too)."""
        info = get_model_info(self.name)
        if info.torch_builder is None:
            raise ValueError(
                f"{self.name!r} was registered without a torch_builder: it has no torch face "
                "(use framework='jax')"
            )
        twin = info.torch_builder(
            num_classes=max(self.num_classes, 1), in_chans=self.in_chans, **self.options
        )
        if self.num_classes == 0:  # timm's num_classes=0: the pooled features
            twin.set_submodule(info.classifier, nn.Identity())
            if names is not None:
                for key in list(twin.state_dict()):
                    if key not in names:
                        twin.set_submodule(key.rpartition(".")[0], nn.Identity())
        return twin


class _Record:
    """One module as the zoo built (or adopted) it: where it sits and what its forward
    depends on besides tensor values (see `_config`), in a form checked in microseconds."""

    __slots__ = (
        "attrs",
        "buffers",
        "children",
        "key",
        "kind",
        "methods",
        "module",
        "params",
        "parent",
    )

    def __init__(self, module: nn.Module, parent: nn.Module | None = None, key: str = ""):
        self.module, self.kind, self.parent, self.key = module, type(module), parent, key
        d = module.__dict__
        self.attrs = tuple((k, v) for k, v in d.items() if _plain_attribute(k, v))
        self.methods = _instance_methods(d)
        self.children = tuple(module._modules)
        self.params, self.buffers = _shapes(module._parameters), _shapes(module._buffers)

    def moved(self) -> bool:
        """Replaced or removed from its place."""
        return self.parent is not None and self.parent._modules.get(self.key) is not self.module

    def changed(self) -> bool:
        m = self.module
        d = m.__dict__
        return (
            type(m) is not self.kind
            or tuple(m._modules) != self.children
            or any(d.get(k, _MISSING) != v for k, v in self.attrs)
            or ((m._parameters or self.params) and _shapes(m._parameters) != self.params)
            or ((m._buffers or self.buffers) and _shapes(m._buffers) != self.buffers)
            or _instance_methods(d) != self.methods
        )

    def __reduce__(self):
        # A face's class is made at runtime: pickled as the twin class it is made from.
        face = issubclass(self.kind, TorchModel)
        kind = self.kind.__mro__[2] if face else self.kind
        state = tuple(getattr(self, k) for k in self.__slots__ if k != "kind")
        return _restore_record, (kind, face, state)


def _restore_record(kind: type, face: bool, state: tuple) -> _Record:
    record = _Record.__new__(_Record)
    for k, v in zip((k for k in _Record.__slots__ if k != "kind"), state, strict=True):
        setattr(record, k, v)
    record.kind = _face_class(kind) if face else kind
    return record


_MISSING = object()


def _plain_attribute(key: str, value: Any) -> bool:
    return not key.startswith("_") and key != "training" and isinstance(value, _VALUE_TYPES)


def _instance_methods(d: dict) -> tuple:
    """Functions stored on the instance (`block.forward = ...`): they replace the class's."""
    return tuple(k for k, v in d.items() if callable(v) and not isinstance(v, nn.Module))


def _shapes(tensors: dict) -> tuple:
    return tuple((k, None if v is None else v.shape) for k, v in tensors.items())


def _config(module: nn.Module) -> tuple:
    """What a forward depends on besides the tensors' values (as `_Record` keeps it): the
    class, the children, the parameters' and buffers' names and shapes, the plain attributes
    (a convolution's stride, a BatchNorm's momentum and eps, a dropout's p) and functions
    stored on the instance; not the mode."""
    r = _Record(module)
    return r.kind, r.children, r.params, r.buffers, r.attrs, r.methods


def _hooked(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    )


def _global_hooks() -> bool:
    from torch.nn.modules import module as m

    return bool(
        m._global_forward_hooks
        or m._global_forward_pre_hooks
        or m._global_backward_hooks
        or m._global_backward_pre_hooks
    )


class _Binding:
    """A program bound to one face: where its tensors live and whose modes it follows."""

    def __init__(self, face: nn.Module, prefix: str, program: _Program):
        self.program, self.prefix = program, prefix
        modules = dict(face.named_modules())
        full = [f"{prefix}.{n}" if prefix else n for n in program.names]
        # (owner module, attribute, is_parameter) per array, in program order.
        self.slots = []
        for name in full:
            owner, _, leaf = name.rpartition(".")
            self.slots.append((modules[owner], leaf, leaf in modules[owner]._parameters))

        def owner_of(layer: str) -> nn.Module:
            path = f"{prefix}.{layer}" if prefix and layer else (prefix or layer)
            while path not in modules:  # a layer torch has no module for: its parent's mode
                path = path.rpartition(".")[0]
            return modules[path]

        self.mode_owners = [owner_of(layer) for layer in program.mode_layers]
        self.counter_owners = [self.slots[i][0] for i in program.counter_idx]
        # index -> (tensor, its data pointer, shape, dtype, the JAX alias, strides)
        self.aliases: dict[int, tuple[Any, ...]] = {}
        self.zeros: tuple[jax.Array, jax.Array] | None = None

    def tensors(self) -> list[torch.Tensor]:
        return [
            owner._parameters[leaf] if is_param else owner._buffers[leaf]
            for owner, leaf, is_param in self.slots
        ]

    def modes(self) -> tuple[bool, ...]:
        return tuple(m.training for m in self.mode_owners)

    def alias(self, index: int, tensor: torch.Tensor) -> jax.Array:
        # Reuse a JAX view only while it is a true alias of this tensor's memory: a copy (a
        # channels_last or sliced tensor) would go stale after an in-place optimizer step.
        hit = self.aliases.get(index)
        if (
            hit is not None
            and hit[0] is tensor
            and tensor.data_ptr() == hit[1]
            and tensor.shape == hit[2]
            and tensor.dtype == hit[3]
            and tensor.stride() == hit[5]  # `p.data = p.data.t()`: same memory, other layout
        ):
            return hit[4]
        array = _to_jax(tensor)
        if _same_memory(tensor, array):
            self.aliases[index] = (
                tensor,
                tensor.data_ptr(),
                tensor.shape,
                tensor.dtype,
                array,
                tensor.stride(),
            )
        else:
            self.aliases.pop(index, None)
        return array

    def arguments(self, x: torch.Tensor, modes: tuple[bool, ...], tensors: Any = None):
        tensors = self.tensors() if tensors is None else tensors
        prog = self.program
        params = [self.alias(i, tensors[i]) for i in prog.param_idx]
        buffers = [self.alias(i, tensors[i]) for i in prog.buffer_idx]
        counters = [tensors[i] for i in prog.counter_idx]
        if self.zeros is None:
            self.zeros = jnp.zeros((len(counters),), jnp.int32), jnp.zeros((), jnp.uint32)
        if any(modes):
            counter_values = jnp.asarray([int(c) for c in counters], jnp.int32)
        else:  # eval mode reads no counter
            counter_values = self.zeros[0]
        if any(m and r for m, r in zip(modes, prog.random_layers, strict=True)):
            seed = jnp.asarray(int(torch.randint(0, 2**31 - 1, ())), jnp.uint32)
        else:  # nothing random runs: torch's generator is left as torchvision leaves it
            seed = self.zeros[1]
        param_tensors = [tensors[i] for i in prog.param_idx]
        targets = [tensors[i] for i in prog.buffer_idx], counters
        return (params, buffers, counter_values, _to_jax(x), seed), targets, param_tensors

    def write_buffers(self, targets, new_flat: jax.Array, modes: tuple[bool, ...]) -> None:
        if not any(modes):
            return
        buffers, counters = targets
        flat = torch.from_dlpack(new_flat)
        offset = 0
        with torch.no_grad():
            for b in buffers:
                n = b.numel()
                b.copy_(flat[offset : offset + n].view_as(b))
                offset += n
            for c, owner in zip(counters, self.counter_owners, strict=True):
                if owner.training:
                    c.add_(1)

    def dtype_problem(self, tensors: list, x: torch.Tensor, autocast: Any) -> str:
        """Why JAX cannot compute this call as torch would, from the dtypes: mixed float
        dtypes (torch raises or casts per op), or float64 without JAX's 64-bit mode."""
        dtypes = {t.dtype for t in tensors if t is not None and t.is_floating_point()}
        if autocast is None:
            dtypes.add(x.dtype)
        if len(dtypes) > 1:
            found = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
            return f"the input and weights mix dtypes ({found}), which torch's own code handles"
        if torch.float64 in dtypes and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
            return (
                "float64 needs JAX's 64-bit mode: call jax.config.update('jax_enable_x64', "
                "True) before computing, to run it in JAX"
            )
        return ""

    def __call__(self, face: "TorchModel", x: torch.Tensor) -> Any:
        dtype = _autocast_dtype(x)
        tensors = self.tensors()
        problem = self.dtype_problem(tensors, x, dtype)
        if problem:  # torch's own forward: torchvision's result, or torchvision's error
            face._warn_once(
                problem, f"{face.name}: {self.prefix or 'the model'} runs in torch: {problem}."
            )
            if not self.prefix:
                return face._torch_forward(x)
            module = face._modules[self.prefix]
            return type(module).forward(module, x)
        modes = self.modes()
        args, targets, params = self.arguments(x, modes, tensors)
        mask = tuple(p.requires_grad for p in params)
        if torch.is_grad_enabled() and (x.requires_grad or any(mask)):
            out = _JaxCall.apply(self, (modes, dtype, mask, args, targets), x, *params)
            return list(out) if self.program.many_outputs else out
        out, new_flat = self.program.forward(modes, dtype, *args)
        self.write_buffers(targets, new_flat, modes)
        return _to_torch(out)


def _same_memory(tensor: torch.Tensor, array: jax.Array) -> bool:
    try:
        return array.unsafe_buffer_pointer() == tensor.data_ptr()
    except Exception:  # not a single-device array
        return False


def _autocast_dtype(x: torch.Tensor) -> Any:
    device = x.device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return None
    return {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(
        torch.get_autocast_dtype(device)
    )


class _JaxCall(torch.autograd.Function):
    """Autograd glue: the parameters are inputs so their `.grad` fills as usual; the VJP's
    large residuals are saved tensors, freed, retained or recomputed as torch decides."""

    @staticmethod
    def forward(ctx, binding: _Binding, call: tuple, x: torch.Tensor, *params: torch.Tensor):
        modes, dtype, mask, args, targets = call
        input_grad = ctx.needs_input_grad[2]
        prog = binding.program
        out, new_flat, vjp = prog.forward_vjp(modes, dtype, mask, input_grad, *args)
        binding.write_buffers(targets, new_flat, modes)
        leaves, ctx.treedef = jax.tree_util.tree_flatten(vjp)
        saved, kept = [], []
        for leaf in leaves:
            big = getattr(leaf, "size", 0) >= _SAVE_AT_LEAST
            if big and not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.extended):
                saved.append(torch.from_dlpack(leaf))
                kept.append(None)
            else:
                kept.append(leaf)
        # The input is saved too, so a second backward without retain_graph gets torch's
        # own error even when no residual is large.
        ctx.save_for_backward(x.detach(), *saved)
        ctx.kept, ctx.prog, ctx.mask, ctx.input_grad = kept, prog, mask, input_grad
        out = _to_torch(out)
        return tuple(out) if isinstance(out, list) else out

    @staticmethod
    def backward(ctx, *grad_outputs: torch.Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "double backward (create_graph=True) through a zoo torch face is not supported: "
                "its backward is a compiled JAX function. For gradient penalties use the JAX "
                "face (zoo.load(..., framework='jax'), jax.grad of jax.grad), or the plain "
                "torch model, zoo.to_torchvision(face)."
            )
        saved = iter(ctx.saved_tensors[1:])
        leaves = [_to_jax(next(saved)) if k is None else k for k in ctx.kept]
        vjp = jax.tree_util.tree_unflatten(ctx.treedef, leaves)
        prog = ctx.prog
        if prog.many_outputs:
            cotangent = [_to_jax(g) for g in grad_outputs]
        else:
            cotangent = _to_jax(grad_outputs[0])
        grads = prog.backward(vjp, cotangent)
        it = iter(grads[0])
        param_grads = [torch.from_dlpack(next(it)) if g else None for g in ctx.mask]
        grad_x = torch.from_dlpack(grads[1]) if ctx.input_grad else None
        return (None, None, grad_x, *param_grads)


# -- the face --------------------------------------------------------------------------------


class _FaceState:
    """The zoo's bookkeeping on a face (pickled without its programs, rebuilt on use)."""

    def __init__(self, recipe: _Recipe, records: dict[str, _Record], first_conv, classifier):
        self.recipe, self.records = recipe, records
        self.first_conv, self.classifier = first_conv, classifier
        self.warned: set[str] = set()
        self.refused: tuple = ()  # the last changed tree `_settle` could not adopt
        self._reset()

    def _reset(self) -> None:
        self.bindings: dict[str, _Binding | None] = {}
        self.template_cache: Any = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("bindings")
        state.pop("template_cache")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def template(self) -> Any:
        if self.template_cache is None:
            self.template_cache = self.recipe.template()
        return self.template_cache

    def binding(self, face: nn.Module, path: str) -> "_Binding | None":
        """The program for the whole model (`path=""`) or one top-level child, bound to
        `face`; None where the child has no Equinox counterpart a program can run."""
        if path not in self.bindings:
            template = self.template()
            # The child's torch layouts (in, out), where they are not NCHW (Swin's NHWC).
            layouts = type(template).torch_layouts.get(path, ("NCHW", "NCHW"))
            if path:
                sub = getattr(template, path, None)
                module = face._modules[path]
                names = list(named_arrays(sub)) if _runnable(sub) else None
                if not names or names != list(module.state_dict()):
                    self.bindings[path] = None
                    return None
                template = sub
            program = _program(self.recipe, path, template, layouts)
            self.bindings[path] = _Binding(face, path, program)
        return self.bindings[path]


def _record(face: nn.Module) -> dict[str, _Record]:
    modules = dict(face.named_modules())
    records = {}
    for name, module in modules.items():
        parent, _, key = name.rpartition(".")
        records[name] = _Record(module, modules[parent] if name else None, key)
    return records


@functools.cache
def _face_class(base: type) -> type:
    """`TorchModel` over a twin class, named as it: `repr`, `type(m).__name__` and
    `isinstance(m, torchvision.models.ResNet)` are torchvision's."""
    return type(base.__name__, (TorchModel, base), {"__module__": __name__})


def _restore(base: type) -> "TorchModel":
    return nn.Module.__new__(_face_class(base))


class TorchModel(nn.Module):
    """`zoo.load(..., framework="torch")`: the architecture's torch module tree (torchvision's
    own `ResNet`, `nn.Conv2d`, `nn.BatchNorm2d`, ...) computing with the zoo's JAX programs.

    `TorchModel(model, name)` builds the twin (`info.torch_builder`), copies `model`'s arrays
    into it and returns it as an instance of a subclass of both the twin's class and
    `TorchModel`, in train mode as torchvision builds its models. What computes in JAX and
    what in torch after surgery, hooks or mode changes: the module docstring and
    docs/guides/torch.md.

    **Arguments:**

    - `model`: the Equinox model (a registered architecture; its arrays are copied).
    - `name`: its registry name.
    """

    _zoo: _FaceState

    def __new__(cls, model: Any = None, name: str = "", *args: Any, **kwargs: Any):
        if cls is not TorchModel:  # unpickling or a subclass of ours: plain construction
            return super().__new__(cls)
        if not name:
            raise ValueError("TorchModel(model, name=...) needs the registry name")
        return _build(model, name)

    def __init__(self, *args: Any, **kwargs: Any):
        pass  # built by `__new__` (the twin's own `__init__` has run)

    def __reduce_ex__(self, protocol: int):
        # The class is made at runtime: pickle (and deepcopy) rebuild it from the twin's.
        return _restore, (type(self).__mro__[2],), self.__dict__

    @property
    def name(self) -> str:
        return self._zoo.recipe.name

    @property
    def in_chans(self) -> int:
        return self._zoo.recipe.in_chans

    @property
    def num_classes(self) -> int:
        return self._zoo.recipe.num_classes

    @property
    def num_features(self) -> int:
        return int(getattr(self._zoo.template(), "num_features", 0))

    @property
    def feature_info(self) -> tuple:
        return tuple(getattr(self._zoo.template(), "selected_feature_info", ()))

    # -- export -----------------------------------------------------------------------------
    def to_equinox(self) -> Any:
        """The Equinox model holding this face's current parameters and buffers (copies), in
        the face's mode. Raises if the module tree was changed in a way an Equinox model
        of this architecture cannot hold (then `zoo.to_torchvision(face)` is the model)."""
        changed = self._changes()[0]
        if changed and self._settle(changed):
            changed = self._changes()[0]
        if changed:
            raise ValueError(
                f"{self.name}'s torch face was changed at {', '.join(sorted(changed)[:3])}; "
                "no Equinox model of this architecture holds that. zoo.to_torchvision(face) "
                "returns the torch model (replaced modules included); torch.save it."
            )
        binding = self._zoo.binding(self, "")
        prog = binding.program
        leaves = []
        bits = dict(zip(prog.buffer_idx, prog.buffer_bits, strict=True))
        for i, (name, tensor) in enumerate(zip(prog.names, binding.tensors(), strict=True)):
            # jnp.array copies; counters are int32 in the Equinox model; statistics bits.
            array = tensor.detach().cpu().numpy()
            if bits.get(i):
                array = array.view({8: "int64", 4: "int32"}[array.dtype.itemsize])
            leaves.append(jnp.array(array, dtype=jnp.int32 if _is_counter(name) else None))
        # Each layer in its module's own mode, as the face computes.
        return prog.model(binding.modes(), leaves)

    def to_torchvision(self) -> nn.Module:
        """A deep copy as the plain twin class (torchvision's `ResNet`), with every module
        the user put in it; it computes in torch, torchvision's forward (from a
        `features_only` face: its `feature_info` modules' outputs are the maps, e.g. through
        `torchvision.models.feature_extraction.create_feature_extractor`)."""
        twin = copy.deepcopy(self)
        twin.__dict__.pop("_zoo")
        twin.__class__ = type(self).__mro__[2]
        return twin

    # -- what changed since the zoo built the tree -------------------------------------------
    def _changes(self) -> tuple[set[str], set[str]]:
        """`(changed, hooked)`: the recorded modules replaced, removed or reconfigured (a
        module added shows as its parent's children changing), and those below the root
        with hooks. ~2 us a module (0.1 ms for a ResNet18)."""
        changed, hooked = set(), set()
        for name, rec in self._zoo.records.items():
            if rec.moved():
                changed.add(name)
                continue
            if rec.changed():
                changed.add(name)
            if name and _hooked(rec.module):
                hooked.add(name)
        return changed, hooked

    def _settle(self, changed: set[str]) -> bool:
        """Adopt a replaced classifier or stem of the same kind (`m.fc = nn.Linear(512, 5)`,
        a 1-channel `conv1`): the JAX program is rebuilt for the new shapes. True if
        adopted; a refused tree is remembered, so it is examined once, not every call."""
        st = self._zoo
        roots = sorted(n for n in changed if not n or n.rpartition(".")[0] not in changed)
        if not roots or not set(roots) <= {st.classifier, st.first_conv}:
            return False
        modules = [self.get_submodule(path) for path in roots]
        seen = tuple((p, id(m), _config(m)) for p, m in zip(roots, modules, strict=True))
        if seen == st.refused:
            return False
        st.refused = seen
        for path, new in zip(roots, modules, strict=True):
            if type(new) is not st.records[path].kind or not isinstance(new, nn.Linear | nn.Conv2d):
                return False
        head = self.get_submodule(st.classifier) if st.classifier in roots else None
        stem = self.get_submodule(st.first_conv) if st.first_conv in roots else None
        recipe = st.recipe.replace(
            st.recipe.num_classes
            if head is None
            else (head.out_features if isinstance(head, nn.Linear) else head.out_channels),
            st.recipe.in_chans if stem is None else stem.in_channels,
        )
        try:
            template = recipe.template()
        except (ValueError, TypeError):  # options the architecture refuses
            return False
        shapes = {n: tuple(a.shape) for n, a in named_arrays(template).items()}
        ours = {n: tuple(t.shape) for n, t in self.state_dict().items()}
        if shapes != ours:
            return False
        # Same configuration otherwise: the new modules' attributes must be those a fresh
        # build of the new shapes has (stride, padding, bias...).
        fresh = recipe.torch_twin(shapes)
        for path, new in zip(roots, modules, strict=True):
            if _config(fresh.get_submodule(path)) != _config(new):
                return False
        st.recipe, st.records = recipe, _record(self)
        st._reset()
        st.template_cache = template
        return True

    # -- compute ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Any:
        """Logits for an NCHW float batch (after `features_only`, the list of feature maps),
        as torchvision's forward computes them; in JAX where the tree allows (see the class
        docstring). An empty batch returns empty outputs and changes no buffer."""
        if torch.jit.is_tracing() or _exporting():
            raise RuntimeError(
                f"a zoo torch face ({self.name}) computes in JAX, which torch.jit.trace, "
                "torch.export and ONNX export cannot trace. Export the plain torch model: "
                "zoo.to_torchvision(face) (same modules and weights, identical outputs)."
            )
        if isinstance(x, torch.fx.Proxy):  # torch.fx (create_feature_extractor): torch's graph
            return self._torch_forward(x)
        if not isinstance(x, torch.Tensor):
            kind = f"{type(x).__module__}.{type(x).__qualname__}".removeprefix("builtins.")
            raise TypeError(
                f"{type(self).__name__}({self.name}) takes a torch.Tensor; got a {kind}. "
                "Convert it with torch.from_numpy(x) (or call the JAX face, "
                "zoo.load(..., framework='jax'), which takes NumPy and JAX arrays)."
            )
        reason = self._torch_only_reason(x)
        if reason:
            self._warn_once(reason, f"{self.name}: the whole forward runs in torch: {reason}.")
            return self._torch_forward(x)
        changed, hooked = self._changes()
        if changed and self._settle(changed):
            changed, hooked = self._changes()
        if not changed and not hooked:
            check_image_batch(x, self.in_chans, f"{type(self).__name__}({self.name})")
            if x.ndim == 4 and x.shape[0] == 0:
                return self._empty_output(x)
            return self._zoo.binding(self, "")(self, x)
        if "" in changed:
            self._warn_once(
                "root", f"{self.name}: the model's own attributes changed; it runs in torch."
            )
            return self._torch_forward(x)
        return self._torch_forward(x, self._segments(changed, hooked))

    def _whole_program(self, x: torch.Tensor) -> "tuple[_Binding | None, str]":
        """`(binding, "")` when `forward(x)` would compute as the one JAX program of the
        whole model (nothing replaced, reconfigured or hooked below the root, after adopting a
        replaced head or stem), else `(None, why not)`."""
        reason = self._torch_only_reason(x)
        if reason:
            return None, reason
        changed, hooked = self._changes()
        if changed and self._settle(changed):
            changed, hooked = self._changes()
        if changed or hooked:
            what = sorted(changed | hooked)
            shown = ", ".join(n or "the model itself" for n in what[:3])
            more = f" and {len(what) - 3} more" if len(what) > 3 else ""
            return None, f"modules were replaced, reconfigured or hooked ({shown}{more})"
        return self._zoo.binding(self, ""), ""

    def _torch_only_reason(self, x: torch.Tensor) -> str:
        if torch._C._are_functorch_transforms_active():
            return "torch.func transforms the module's own torch code"
        if _global_hooks():
            return "global module hooks are registered (they see every submodule)"
        return ""

    def _segments(self, changed: set[str], hooked: set[str]) -> list[str]:
        """The top-level children that compute in JAX within torchvision's forward."""
        dirty: dict[str, str] = {}
        if self._zoo.recipe.out_indices is not None:  # maps are collected by hooks inside
            for info in self.feature_info:
                top = info.module.partition(".")[0]
                if "." in info.module:
                    dirty.setdefault(top, f"the feature map {info.module} is taken inside it")
        for name in sorted(changed | hooked):
            top, _, rest = name.partition(".")
            if rest and top not in changed:
                what = "was changed" if name in changed else "has a hook"
                dirty.setdefault(top, f"{name} {what}")
        segments = []
        for top, child in self._modules.items():
            if top in changed:
                continue  # the user's module: its own forward
            has_arrays = next(iter(child.state_dict()), None) is not None
            if top in dirty:
                if has_arrays:
                    self._warn_once(
                        f"child:{top}",
                        f"{self.name}: {top} runs in torch, not JAX, because {dirty[top]} "
                        "(hooks and replacements inside a top-level module need torch's "
                        "forward there); its outputs are torchvision's.",
                    )
                continue
            if has_arrays and self._zoo.binding(self, top) is not None:
                segments.append(top)
            elif has_arrays:
                self._warn_once(
                    f"child:{top}",
                    f"{self.name}: {top} runs in torch, not JAX: the zoo computes it only as "
                    "part of the whole model. Its outputs are torchvision's.",
                )
        return segments

    def _torch_forward(self, x: Any, segments: list[str] = ()) -> Any:
        """torchvision's own forward, the `segments` (top-level children) computing in JAX
        through torch's module call, so their hooks fire. A features-only face collects
        its maps with forward hooks on the modules `feature_info` names."""
        base = type(self).__mro__[2]
        maps: list[Any] = []
        handles = []
        if self._zoo.recipe.out_indices is not None:
            to_map = type(self._zoo.template()).torch_feature_map  # a ViT's tokens: a grid
            for info in self.feature_info:
                module = self.get_submodule(info.module)
                handles.append(
                    module.register_forward_hook(
                        lambda m, a, out, info=info: maps.append(to_map(out, info))
                    )
                )
        for top in segments:
            child = self._modules[top]
            child.forward = functools.partial(self._zoo.binding(self, top), self)
        try:
            out = base.forward(self, x)
        finally:
            for top in segments:
                self._modules[top].__dict__.pop("forward", None)
            for h in handles:
                h.remove()
        return [m.clone() for m in maps] if handles else out

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._zoo.warned:
            self._zoo.warned.add(key)
            warnings.warn(message, ZooTorchFallbackWarning, stacklevel=3)

    def _empty_output(self, x: torch.Tensor) -> Any:
        # The outputs' shapes for one image, with zero rows: the models' flattening reshapes
        # cannot infer a dimension of an empty batch. Nothing runs and no buffer changes.
        binding = self._zoo.binding(self, "")
        modes = tuple(False for _ in binding.program.mode_layers)
        (params, buffers, counters, _, seed), _, _ = binding.arguments(x, modes)
        one = jax.ShapeDtypeStruct((1, *x.shape[1:]), _to_jax(x).dtype)
        run = functools.partial(binding.program._run, modes, None)
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


class ZooTorchFallbackWarning(UserWarning):
    """A torch face computes (part of) a forward in torch instead of JAX: the result is
    torchvision's, at torch's speed. Shown once per face and reason."""


def _exporting() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and getattr(compiler, "is_exporting", lambda: False)():
        return True
    return bool(getattr(torch.onnx, "is_in_onnx_export", lambda: False)())


def _build(model: Any, name: str) -> TorchModel:
    enable_compilation_cache()
    _keep_dynamo_out()
    info = get_model_info(name)
    recipe = _Recipe.of(model, name)
    state_dict = to_state_dict(model)
    twin = recipe.torch_twin(state_dict)
    twin.load_state_dict(state_dict, strict=True)
    twin.__class__ = _face_class(type(twin))
    state = _FaceState(recipe, _record(twin), info.first_conv, info.classifier)
    object.__setattr__(twin, "_zoo", state)
    # The twin's template is the model itself (abstract): no rebuild.
    state.template_cache = eqx.filter_eval_shape(lambda: model)
    return twin.train()


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
