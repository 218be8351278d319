"""Guards for the CPU speed fixes, read from XLA's compiled HLO (nothing here is timed).

XLA:CPU hands a convolution to a library kernel (YNNPACK or Eigen) only in the NHWC/HWIO
form (`dim_labels=b01f_01io->b01f`). 3x3 convolutions on 2x2 and 1x1 maps (ResNet's layer3
and layer4 at 32x32) get rewritten into other forms that run in a generic loop, 20-60x
slower; `zoo.layers.Conv2d` computes those as a matmul instead. Under `zoo.jit` (every jitted
entry point of the zoo) convolutions run on Eigen, not YNNPACK, and the max-pool gradient is
slices and selects, not XLA:CPU's slow `select-and-scatter`. `zoo.fusion_barrier` after every
ResNet block keeps XLA:CPU from recomputing earlier blocks inside the backward's transposes.
See benchmarks/README.md for the timings behind each.
"""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
import zoo.adapters._jax_face as face_module
import zoo.layers._conv as conv_module
import zoo.models._resnet as resnet_module

FAST_FORM = "b01f_01io->b01f"


def conv_forms(hlo: str) -> list[str]:
    """The `dim_labels` of every convolution left in compiled HLO text."""
    return re.findall(r" convolution\(.*?dim_labels=([^,\s]+)", hlo)


def resnet18_lowered(
    size: int, jit=zoo.jit, parts: tuple[str, ...] = ("eval", "train")
) -> dict[str, jax.stages.Lowered]:
    """ResNet18's eval forward (under `jit`) and `zoo.make_train_step`'s step (the `parts`
    asked for), lowered for a batch of 4 `size`x`size` images."""
    model = zoo.load("resnet18", framework="equinox", num_classes=10)
    x = jnp.ones((4, 3, size, size))
    lowered = {}
    if "eval" in parts:
        lowered["eval"] = jit(lambda m, x: m(x)[0]).lower(zoo.eval_mode(model), x)
    if "train" in parts:
        labels = jnp.zeros((4,), jnp.int32)
        opt = optax.sgd(0.1, momentum=0.9)
        train = zoo.train_mode(model)
        step = zoo.make_train_step(opt, donate=False)
        opt_state = opt.init(zoo.trainable(train))
        lowered["train"] = step.lower(train, opt_state, x, labels, jax.random.key(0))
    return lowered


def resnet18_hlo(size: int, parts: tuple[str, ...] = ("eval", "train")) -> dict[str, str]:
    """`resnet18_lowered`'s computations as XLA:CPU compiles them (HLO text). Each compile
    of a train step costs seconds: a test reads every guard from one compile, and each
    detector compiles only the part it needs."""
    return {
        name: low.compile().as_text() for name, low in resnet18_lowered(size, parts=parts).items()
    }


def test_detector_sees_the_slow_form():
    """A raw 3x3 convolution on a 2x2 map, as XLA compiles it: not in the fast form. (If XLA
    ever learns to compile it well, this fails and the matmul lowering can go.)"""
    x, w = jnp.ones((4, 256, 2, 2)), jnp.ones((256, 256, 3, 3))
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1))))
    forms = conv_forms(conv.lower(x, w).compile().as_text())
    assert forms and FAST_FORM not in forms


@pytest.mark.parametrize("size", [32, 224])
def test_resnet18_compiles_with_every_cpu_fix(size):
    """Eval and train: every convolution in the fast NHWC/HWIO form and none on YNNPACK,
    one fusion-barrier conditional per block (and one more per block for the gradient),
    and (224x224, where it mattered) no weight-gradient transpose recomputing more than one
    block's two branches (the residual's BatchNorm and the shortcut's). Without the barrier
    XLA:CPU fused earlier blocks into them, which made single transposes cost up to 200 ms
    at 224x224 batch 32 (benchmarks/README.md)."""
    hlo = resnet18_hlo(size)
    for name, text in hlo.items():
        forms = conv_forms(text)
        assert forms, name  # the big-map convolutions stay XLA convolutions
        assert set(forms) == {FAST_FORM}, (name, forms)
        assert not ynnpack_convolutions(text), name
    assert (conditionals(hlo["eval"]), conditionals(hlo["train"])) == (8, 16)
    if size == 224:
        reads = transposes_reading_convolutions(hlo["train"])
        assert reads and max(reads) <= 2, reads


def test_without_the_matmul_lowering_the_32x32_model_has_slow_convolutions(monkeypatch):
    """The fast-form guard can fail: with every convolution left to XLA, it does."""
    monkeypatch.setattr(conv_module, "lowers_to_matmul", lambda *args: False)
    forms = conv_forms(resnet18_hlo(32, parts=("eval",))["eval"])
    assert any(form != FAST_FORM for form in forms)


def ynnpack_convolutions(hlo: str) -> list[str]:
    """The YNNPACK fusions of compiled HLO text that compute a convolution."""
    return [
        line
        for line in hlo.splitlines()
        if "ynn_fusion" in line and 'conv_general_dilated"' in line and " fusion(" in line
    ]


def test_under_a_plain_jit_convolutions_run_on_ynnpack():
    """The YNNPACK guard can fail: under a plain jax.jit (not `zoo.jit`), XLA:CPU hands the
    convolutions to YNNPACK."""
    plain = resnet18_lowered(64, jit=eqx.filter_jit, parts=("eval",))["eval"]
    assert ynnpack_convolutions(plain.lowered.compile().as_text())


def test_train_step_has_no_select_and_scatter():
    """Checked in the StableHLO that XLA receives (XLA:CPU may rewrite it to a `scatter`)."""
    assert "select_and_scatter" not in resnet18_lowered(64)["train"].as_text()
    # The detector can fail: the gradient of a plain reduce_window max is one.
    pool = jax.grad(
        lambda x: jax.lax.reduce_window(
            x, -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 2, 2), "SAME"
        ).sum()
    )
    assert "select_and_scatter" in jax.jit(pool).lower(jnp.ones((1, 1, 8, 8))).as_text()


def test_zoo_jit_is_a_plain_jit_where_the_option_is_unknown(monkeypatch):
    """An older jaxlib rejects unknown compile options; zoo.jit then compiles without them."""
    import zoo._compile as compile_module

    monkeypatch.setattr(compile_module, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": "x"})
    compile_module._cpu_options_apply.cache_clear()
    try:
        assert float(zoo.jit(lambda x: x + 1)(jnp.ones(()))) == 2.0
        assert not compile_module._cpu_options_apply()
    finally:
        compile_module._cpu_options_apply.cache_clear()


def test_fusion_barrier_is_the_identity():
    x = jnp.array([[1.5, -0.0, jnp.nan], [jnp.inf, -jnp.inf, 3e-39]])
    for fn in (zoo.fusion_barrier, jax.jit(zoo.fusion_barrier)):
        np.testing.assert_array_equal(
            np.asarray(fn(x)).view(np.uint32), np.asarray(x).view(np.uint32)
        )
    ints, empty = jnp.arange(6).reshape(2, 3), jnp.zeros((0, 3))
    np.testing.assert_array_equal(jax.jit(zoo.fusion_barrier)(ints), ints)
    assert jax.jit(zoo.fusion_barrier)(empty).shape == (0, 3)

    y = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
    grad = jax.jit(jax.grad(lambda v: jnp.sum(jnp.sin(zoo.fusion_barrier(v)) * v)))(y)
    np.testing.assert_allclose(grad, jnp.cos(y) * y + jnp.sin(y), rtol=1e-6)
    _, tangent = jax.jvp(lambda v: zoo.fusion_barrier(v) ** 2, (y,), (jnp.ones_like(y),))
    np.testing.assert_allclose(tangent, 2 * y, rtol=1e-6)
    np.testing.assert_array_equal(jax.jit(jax.vmap(zoo.fusion_barrier))(y), y)


def conditionals(hlo: str) -> int:
    return len(re.findall(r" conditional\(", hlo))


def test_fusion_barrier_is_compiled_on_cpu_only():
    """On the CPU the barrier is a conditional in the compiled HLO (ResNet18's count is
    checked in `test_resnet18_compiles_with_every_cpu_fix`); lowered for a GPU it is the
    identity."""
    double = jax.jit(lambda v: zoo.fusion_barrier(jnp.sin(v)) * 2)
    x = jnp.ones((4, 4))
    assert conditionals(double.lower(x).compile().as_text()) == 1
    # Lowering for another platform needs no such device; the conditional's predicate is
    # the only comparison in this function.
    assert "stablehlo.compare" in double.trace(x).lower(lowering_platforms=("cpu",)).as_text()
    assert "stablehlo.compare" not in double.trace(x).lower(lowering_platforms=("cuda",)).as_text()


def transposes_reading_convolutions(hlo: str) -> list[int]:
    """For each transpose fusion of a 4-D activation in compiled HLO text: how many
    convolution (or YNNPACK dot) results it reads, i.e. how many convolutions' BatchNorms
    it recomputes."""
    transpose = re.compile(
        r"\s*%transpose\S*fusion\S* = f32\[\d+,\d+,\d+,\d+\]\S* fusion\((.*?)\), kind"
    )
    counts = []
    for line in hlo.splitlines():
        if match := transpose.match(line):
            counts.append(len(re.findall(r"%(?:convolution|ynn_fusion)[.\d]*", match.group(1))))
    return counts


def test_without_the_barrier_weight_gradient_transposes_recompute_earlier_blocks(monkeypatch):
    """The transpose guard of `test_resnet18_compiles_with_every_cpu_fix` can fail: without
    the barrier, XLA:CPU fuses earlier blocks into the weight-gradient transposes."""
    monkeypatch.setattr(resnet_module, "fusion_barrier", lambda x: x)
    train = resnet18_hlo(224, parts=("train",))["train"]
    assert max(transposes_reading_convolutions(train)) > 2


def test_jax_face_reads_its_hwio_kernels_without_copying_them():
    """The JAX face's eval call takes the conv weights already in HWIO: its compiled forward
    holds no op that writes an array of a kernel's HWIO shape (the plain forward, reading
    torch's OIHW weights, has one per 3x3 and 7x7 convolution)."""
    face = zoo.load("resnet18", num_classes=10)
    x = jnp.ones((1, 3, 224, 224))
    kernels = face_module._hwio_kernels(face.model)
    hwio = {k.shape for k in kernels if k.shape[0] > 1}
    assert hwio == {
        (7, 7, 3, 64),
        (3, 3, 64, 64),
        (3, 3, 64, 128),
        (3, 3, 128, 128),
        (3, 3, 128, 256),
        (3, 3, 256, 256),
        (3, 3, 256, 512),
        (3, 3, 512, 512),
    }

    def written_kernels(hlo: str) -> set[tuple[int, ...]]:
        shapes = re.findall(
            r"= f32\[(\d+),(\d+),(\d+),(\d+)\]\{[\d,]+\} (?:fusion|copy|transpose)", hlo
        )
        return {tuple(map(int, s)) for s in shapes} & hwio

    plain = zoo.jit(zoo.forward).lower(zoo.eval_mode(face.model), x).compile().as_text()
    assert written_kernels(plain) == hwio  # the detector sees the per-call transposes
    compiled = face_module._eval_logits_hwio.lower(kernels, face.model, x).compile().as_text()
    assert written_kernels(compiled) == set()
