"""Checkpoints load where torch would load them: other float dtypes, counters left out,
wrapper prefixes, checkpoint dicts in memory as from a file, and never a silent partial load."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from conftest import randomize_batchnorm

import weights_convert as wc
import zoo
from zoo._sources import canonical_state_dict, read_weights_file


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return randomize_batchnorm(torchvision.models.resnet18(num_classes=10)).eval()


def template():
    return zoo.models.resnet18(num_classes=10)


def _floats_to(state_dict, dtype):
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_state_dict_is_cast_on_load_like_torch(dtype, reference):
    half = _floats_to(reference.state_dict(), dtype)
    model, report = wc.load_state_dict(template(), half)  # strict
    floats = [k for k, v in half.items() if v.is_floating_point()]
    assert report.ok and len(floats) == 102
    assert report.cast == dict.fromkeys(floats, (str(dtype), "torch.float32"))
    assert f"cast to float32: 102 keys from {dtype}" in str(report)
    loaded = wc.to_state_dict(model)
    for key in floats:
        assert loaded[key].dtype == torch.float32, key
        assert torch.equal(loaded[key], half[key].float()), key  # upcasting is exact
    # torch upcasts on load too: both models hold the same float32 values.
    twin = torchvision.models.resnet18(num_classes=10)
    twin.load_state_dict(half, strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = twin.eval()(x).numpy()
    logits = zoo.eval_mode(model)(jnp.asarray(x.numpy()))[0]
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5, rtol=0)


def test_float64_is_cast_and_checked_for_overflow_after_the_cast(reference):
    sd = _floats_to(reference.state_dict(), torch.float64)
    _, report = wc.load_state_dict(template(), sd)
    assert set(report.cast.values()) == {("torch.float64", "torch.float32")}
    sd["fc.bias"] = sd["fc.bias"].clone()
    sd["fc.bias"][0] = 1e300  # finite in float64, inf in float32
    with pytest.raises(wc.ConversionError, match=r"non-finite values .* 'fc\.bias'"):
        wc.load_state_dict(template(), sd)


def test_uncast_tensors_still_cross_without_a_copy(reference):
    sd = dict(reference.state_dict())
    sd["fc.weight"] = sd["fc.weight"].to(torch.bfloat16)
    model, report = wc.load_state_dict(template(), sd, copy=False)
    assert list(report.cast) == ["fc.weight"]
    arrays = wc.named_arrays(model)
    assert arrays["conv1.weight"].unsafe_buffer_pointer() == sd["conv1.weight"].data_ptr()
    assert arrays["fc.weight"].dtype == jnp.float32


@pytest.mark.parametrize(
    "key, value",
    [
        ("bn1.num_batches_tracked", torch.tensor(3.0)),  # a float for the integer counter
        ("fc.bias", torch.zeros(10, dtype=torch.int64)),  # an integer for a float weight
    ],
)
def test_float_integer_crossings_are_still_dtype_mismatches(key, value, reference):
    sd = dict(reference.state_dict(), **{key: value})
    with pytest.raises(wc.ConversionError, match=rf"dtype mismatch for '{key}'"):
        wc.load_state_dict(template(), sd)


def test_missing_batchnorm_counters_keep_the_models_own(reference):
    sd = {k: v for k, v in reference.state_dict().items() if "num_batches_tracked" not in k}
    reference.load_state_dict(sd, strict=True)  # torch accepts it, too
    blank = template()
    model, report = wc.load_state_dict(blank, sd)  # strict
    counters = [k for k in wc.named_arrays(blank) if k.endswith(".num_batches_tracked")]
    assert report.ok and report.filled == counters and len(counters) == 20
    assert not report.problems() and not report.missing_keys
    assert "num_batches_tracked: 20 keys" in str(report)
    assert int(model.bn1.num_batches_tracked) == int(blank.bn1.num_batches_tracked)
    assert torch.equal(wc.to_state_dict(model)["bn1.running_var"], sd["bn1.running_var"])


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod.", "model."])
def test_wrapper_prefixes_are_stripped(prefix, reference):
    sd = reference.state_dict()
    wrapped = {prefix + k: v for k, v in sd.items()}
    assert list(wc.strip_prefixes(wrapped)) == list(sd)
    _, report = wc.load_state_dict(template(), wrapped)
    assert report.ok


def test_prefix_is_kept_unless_every_key_has_it_and_the_model_has_none():
    partial = {"module.conv1.weight": 1, "fc.weight": 2}
    assert wc.strip_prefixes(partial) == partial
    both = {"model.encoder.weight": 1, "model.head.weight": 2}
    assert wc.strip_prefixes(both, names=["model.encoder.weight", "model.head.weight"]) == both
    # A wrapper around a model whose own attribute is `model`: only the wrapper goes.
    ddp = {"module.model.weight": 1}
    assert wc.strip_prefixes(ddp, names=["model.weight"]) == {"model.weight": 1}
    assert wc.strip_prefixes(ddp) == {"weight": 1}
    assert wc.strip_prefixes({}) == {}


def test_lightning_checkpoint_in_memory_loads_as_from_a_file(reference, tmp_path):
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in reference.state_dict().items()},
        "epoch": 3,
        "global_step": 1200,
        "optimizer_states": [],
    }
    in_memory = canonical_state_dict(checkpoint, "a dict")
    path = tmp_path / "epoch=3-step=1200.ckpt"
    torch.save(checkpoint, path)
    from_file = read_weights_file(path)
    assert list(in_memory) == list(from_file) == list(reference.state_dict())
    assert all(torch.equal(in_memory[k], from_file[k]) for k in in_memory)
    _, report = wc.load_state_dict(template(), in_memory)
    assert report.ok


def test_canonical_state_dict_keeps_numpy_values_and_names_what_is_wrong():
    arrays = {"module.w": np.ones(3, np.float32), "module.b": jnp.zeros(2)}
    out = canonical_state_dict({"model": arrays}, "here")
    assert list(out) == ["w", "b"] and out["w"] is arrays["module.w"]
    with pytest.raises(zoo.WeightsError, match=r"here holds no state_dict.*'epoch' is a int"):
        canonical_state_dict({"w": torch.ones(1), "epoch": 3}, "here")


def test_non_strict_partial_load_warns_once(reference):
    sd = dict(reference.state_dict())
    del sd["fc.bias"]
    with pytest.warns(UserWarning, match=r"^load_state_dict\(strict=False\): 1 missing") as w:
        model, report = wc.load_state_dict(template(), sd, strict=False)
    assert len(w) == 1 and "missing key 'fc.bias'" in str(w[0].message)
    assert report.missing_keys == ["fc.bias"]
    assert torch.equal(wc.to_state_dict(model)["fc.weight"], sd["fc.weight"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wc.load_state_dict(template(), sd, strict=False, warn=False)


def test_non_strict_warning_summarises_many_problems(reference):
    sd = {f"extra.{i}": torch.zeros(1) for i in range(30)}
    with pytest.warns(UserWarning) as w:
        wc.load_state_dict(template(), sd, strict=False)
    message = str(w[0].message)
    assert len(w) == 1 and "102 missing, 30 unexpected" in message
    assert "... and 127 more" in message and message.count("\n") < 12


def test_non_strict_fitting_load_warns_nothing(reference):
    half = _floats_to(reference.state_dict(), torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, report = wc.load_state_dict(template(), half, strict=False)
    assert report.ok and report.cast


def test_cast_arrays_do_not_alias_the_source_even_with_copy_false(reference):
    # The cast tensor is the model's own copy, even with copy=False: no tie to the source.
    half = _floats_to(reference.state_dict(), torch.bfloat16)
    model, _ = wc.load_state_dict(template(), half, copy=False)
    before = np.asarray(model.conv1.weight).copy()
    half["conv1.weight"].mul_(2)
    np.testing.assert_array_equal(np.asarray(model.conv1.weight), before)
