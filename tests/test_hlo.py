"""Guards for the CPU speed fixes, read from XLA's compiled HLO (nothing here is timed).

XLA:CPU hands a convolution to a library kernel (YNNPACK or Eigen) only in the NHWC/HWIO
form (`dim_labels=b01f_01io->b01f`). 3x3 convolutions on 2x2 and 1x1 maps (ResNet's layer3
and layer4 at 32x32) get rewritten into other forms that run in a generic loop, 20-60x
slower; `zoo.layers.Conv2d` computes those as a matmul instead.
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


def resnet18_hlo(size: int) -> dict[str, str]:
    model = zoo.load("resnet18", framework="equinox", num_classes=10)
    x = jnp.ones((4, 3, size, size))
    labels = jnp.zeros((4,), jnp.int32)
    opt = optax.sgd(0.1, momentum=0.9)
    train = zoo.train_mode(model)
    step = zoo.make_train_step(opt, donate=False)
    eval_fn = jax.jit(lambda m, x: m(x)[0])
    return {
        "eval": eval_fn.lower(zoo.eval_mode(model), x).compile().as_text(),
        "train": step.lower(train, opt.init(zoo.trainable(train)), x, labels, jax.random.key(0))
        .compile()
        .as_text(),
    }


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
