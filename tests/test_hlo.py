"""Guards for the CPU speed fixes, read from XLA's compiled HLO (nothing here is timed).

XLA:CPU hands a convolution to a library kernel (YNNPACK or Eigen) only in the NHWC/HWIO
form (`dim_labels=b01f_01io->b01f`). 3x3 convolutions on 2x2 and 1x1 maps (ResNet's layer3
and layer4 at 32x32) get rewritten into other forms that run in a generic loop, 20-60x
slower; `zoo.layers.Conv2d` computes those as a matmul instead. Under `zoo.jit` (every jitted
entry point of the zoo) convolutions run on Eigen, not YNNPACK, and the max-pool gradient is
slices and selects, not XLA:CPU's slow `select-and-scatter`.
See benchmarks/README.md for the timings behind each.
"""

import re

import jax
import jax.numpy as jnp
import optax
import pytest

import zoo
import zoo.layers._conv as conv_module

FAST_FORM = "b01f_01io->b01f"


def conv_forms(hlo: str) -> list[str]:
    """The `dim_labels` of every convolution left in compiled HLO text."""
    return re.findall(r" convolution\(.*?dim_labels=([^,\s]+)", hlo)


def resnet18_lowered(size: int, jit=zoo.jit) -> dict[str, jax.stages.Lowered]:
    """ResNet18's eval forward (under `jit`) and `zoo.make_train_step`'s step, lowered for a
    batch of 4 `size`x`size` images."""
    model = zoo.load("resnet18", framework="equinox", num_classes=10)
    x = jnp.ones((4, 3, size, size))
    labels = jnp.zeros((4,), jnp.int32)
    opt = optax.sgd(0.1, momentum=0.9)
    train = zoo.train_mode(model)
    step = zoo.make_train_step(opt, donate=False)
    return {
        "eval": jit(lambda m, x: m(x)[0]).lower(zoo.eval_mode(model), x),
        "train": step.lower(train, opt.init(zoo.trainable(train)), x, labels, jax.random.key(0)),
    }


def resnet18_hlo(size: int) -> dict[str, str]:
    """`resnet18_lowered`'s computations as XLA:CPU compiles them (HLO text)."""
    return {name: low.compile().as_text() for name, low in resnet18_lowered(size).items()}


def test_detector_sees_the_slow_form():
    """A raw 3x3 convolution on a 2x2 map, as XLA compiles it: not in the fast form. (If XLA
    ever learns to compile it well, this fails and the matmul lowering can go.)"""
    x, w = jnp.ones((4, 256, 2, 2)), jnp.ones((256, 256, 3, 3))
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1))))
    forms = conv_forms(conv.lower(x, w).compile().as_text())
    assert forms and FAST_FORM not in forms


@pytest.mark.parametrize("size", [32, 224])
def test_resnet18_convolutions_all_run_in_the_fast_form(size):
    for name, hlo in resnet18_hlo(size).items():
        forms = conv_forms(hlo)
        assert forms, name  # the big-map convolutions stay XLA convolutions
        assert set(forms) == {FAST_FORM}, (name, forms)


def test_without_the_matmul_lowering_the_32x32_model_has_slow_convolutions(monkeypatch):
    """The guard above can fail: with every convolution left to XLA, it does."""
    monkeypatch.setattr(conv_module, "lowers_to_matmul", lambda *args: False)
    forms = conv_forms(resnet18_hlo(32)["eval"])
    assert any(form != FAST_FORM for form in forms)


def ynnpack_convolutions(hlo: str) -> list[str]:
    """The YNNPACK fusions of compiled HLO text that compute a convolution."""
    return [
        line
        for line in hlo.splitlines()
        if "ynn_fusion" in line and 'conv_general_dilated"' in line and " fusion(" in line
    ]


def test_zoo_jit_keeps_convolutions_off_ynnpack():
    hlo = resnet18_hlo(64)
    for name in ("eval", "train"):
        assert conv_forms(hlo[name]), name
        assert not ynnpack_convolutions(hlo[name]), name
    # The detector can fail: under a plain jax.jit, XLA:CPU hands them to YNNPACK.
    plain = resnet18_lowered(64, jit=jax.jit)["eval"].compile()
    assert ynnpack_convolutions(plain.as_text())


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
