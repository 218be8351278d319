"""The weight converter: names, round trips, strictness, adaptation and memory sharing."""

import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from conftest import randomize_batchnorm

import weights_convert as wc
import zoo


@pytest.fixture(scope="module")
def tv_resnet18():
    torch.manual_seed(0)
    return randomize_batchnorm(torchvision.models.resnet18())


def test_attribute_paths_are_torchvision_state_dict_keys_in_order(tv_resnet18):
    for name in ["resnet18", "resnet50", "resnext50_32x4d"]:
        ours = list(wc.named_arrays(getattr(zoo.models, name)()))
        theirs = list(getattr(torchvision.models, name)().state_dict())
        assert ours == theirs, name
    assert list(wc.named_arrays(zoo.models.SmallCNN())) == list(
        zoo.models.SmallCNNTorch().state_dict()
    )


def test_round_trip_is_bit_exact_and_loads_strictly_into_torchvision(tv_resnet18):
    source = tv_resnet18.state_dict()
    model, report = wc.load_state_dict(zoo.models.resnet18(), source)
    assert report.ok
    exported = wc.to_state_dict(model)
    assert list(exported) == list(source)
    for key, tensor in source.items():
        assert exported[key].dtype == tensor.dtype, key
        assert torch.equal(exported[key], tensor), key
    fresh = torchvision.models.resnet18()
    fresh.load_state_dict(exported, strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in source.items())


def test_missing_key_is_named(tv_resnet18):
    sd = dict(tv_resnet18.state_dict())
    del sd["layer3.1.bn2.running_var"]
    with pytest.raises(wc.ConversionError, match=r"missing key 'layer3\.1\.bn2\.running_var'"):
        wc.load_state_dict(zoo.models.resnet18(), sd)


def test_unexpected_key_is_named(tv_resnet18):
    sd = dict(tv_resnet18.state_dict(), **{"head.extra.weight": torch.zeros(3)})
    with pytest.raises(wc.ConversionError, match=r"unexpected key 'head\.extra\.weight'"):
        wc.load_state_dict(zoo.models.resnet18(), sd)


def test_wrong_shape_names_key_and_expected_shape(tv_resnet18):
    sd = dict(tv_resnet18.state_dict())
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(
        wc.ConversionError,
        match=r"shape mismatch for 'layer1\.0\.conv1\.weight': expected \(64, 64, 3, 3\), "
        r"got \(64, 64, 1, 1\)",
    ):
        wc.load_state_dict(zoo.models.resnet18(), sd)


def test_wrong_dtype_is_named(tv_resnet18):
    sd = dict(tv_resnet18.state_dict())
    sd["fc.bias"] = sd["fc.bias"].long()  # float to float is cast (test_checkpoints.py)
    with pytest.raises(wc.ConversionError, match=r"dtype mismatch for 'fc\.bias'.*float32"):
        wc.load_state_dict(zoo.models.resnet18(), sd)


def test_non_finite_weights_are_refused(tv_resnet18):
    sd = dict(tv_resnet18.state_dict())
    sd["bn1.weight"] = sd["bn1.weight"].clone()
    sd["bn1.weight"][3] = float("nan")
    with pytest.raises(wc.ConversionError, match=r"non-finite values .* 'bn1\.weight'"):
        wc.load_state_dict(zoo.models.resnet18(), sd)


def test_non_strict_returns_the_report_and_loads_what_fits(tv_resnet18):
    sd = dict(tv_resnet18.state_dict())
    del sd["fc.bias"]
    sd["bogus"] = torch.ones(1)
    template = zoo.models.resnet18(key=jax.random.key(5))
    with pytest.warns(UserWarning, match="1 missing, 1 unexpected"):  # never silent
        model, report = wc.load_state_dict(template, sd, strict=False)
    assert report.missing_keys == ["fc.bias"] and report.unexpected_keys == ["bogus"]
    assert not report.ok
    assert bool(jnp.all(model.fc.bias == template.fc.bias))  # kept at init
    assert torch.equal(wc.to_state_dict(model)["fc.weight"], sd["fc.weight"])


def test_other_num_classes_reinitialises_the_head_only_when_asked(tv_resnet18):
    sd = tv_resnet18.state_dict()
    template = zoo.models.resnet18(num_classes=10)
    with pytest.raises(wc.ConversionError, match="adapt=True"):
        wc.load_state_dict(template, sd)
    model, report = wc.load_state_dict(template, sd, adapt=True)
    assert report.reinitialized == ["fc.weight", "fc.bias"]
    assert model.fc.weight.shape == (10, 512)
    assert bool(jnp.all(model.fc.weight == template.fc.weight))
    assert torch.equal(
        wc.to_state_dict(model)["layer4.1.conv2.weight"], sd["layer4.1.conv2.weight"]
    )


@pytest.mark.parametrize("in_chans", [1, 2, 5])
def test_other_in_chans_adapts_the_first_conv_like_timm(in_chans, tv_resnet18):
    from timm.models import adapt_input_conv as timm_adapt

    sd = tv_resnet18.state_dict()
    model, report = wc.load_state_dict(zoo.models.resnet18(in_chans=in_chans), sd, adapt=True)
    assert report.adapted == ["conv1.weight"]
    expected = timm_adapt(in_chans, sd["conv1.weight"].clone())
    assert torch.equal(wc.to_state_dict(model)["conv1.weight"], expected)


def test_data_parallel_prefix_is_stripped(tv_resnet18):
    sd = {f"module.{k}": v for k, v in tv_resnet18.state_dict().items()}
    _, report = wc.load_state_dict(zoo.models.resnet18(), sd)
    assert report.ok


def test_copy_false_shares_memory_and_default_copies(tv_resnet18):
    sd = tv_resnet18.state_dict()
    shared, _ = wc.load_state_dict(zoo.models.resnet18(), sd, copy=False)
    copied, _ = wc.load_state_dict(zoo.models.resnet18(), sd)
    assert (
        shared.layer1[0].conv1.weight.unsafe_buffer_pointer()
        == sd["layer1.0.conv1.weight"].data_ptr()
    )
    assert (
        copied.layer1[0].conv1.weight.unsafe_buffer_pointer()
        != sd["layer1.0.conv1.weight"].data_ptr()
    )
    exported = wc.to_state_dict(shared, copy=False)
    assert exported["fc.weight"].data_ptr() == sd["fc.weight"].data_ptr()


def test_copy_false_aliases_every_float_array_and_copy_true_none(tv_resnet18):
    sd = tv_resnet18.state_dict()
    for copy, expected in ((False, 102), (True, 0)):
        model, _ = wc.load_state_dict(zoo.models.resnet18(), sd, copy=copy)
        arrays = wc.named_arrays(model)
        aliased = sum(arrays[k].unsafe_buffer_pointer() == v.data_ptr() for k, v in sd.items())
        assert aliased == expected, copy  # the 20 int64 counters are always cast to int32


def test_tensors_to_jax_handles_every_layout_and_outlives_the_tensor():
    contiguous = torch.randn(64, 32)
    kept = contiguous.clone()
    transposed = torch.randn(8, 5).t()
    half = torch.randn(4, 3, dtype=torch.bfloat16)  # NumPy cannot view it: DLPack path
    counter = torch.tensor(7)
    arrays = wc.tensors_to_jax(
        [contiguous, transposed, half, counter], [None, None, None, torch.int32]
    )
    assert arrays[0].unsafe_buffer_pointer() == contiguous.data_ptr()
    np.testing.assert_array_equal(np.asarray(arrays[1]), transposed.numpy())
    assert arrays[2].dtype == jnp.bfloat16
    assert torch.equal(torch.from_dlpack(arrays[2]), half)
    assert arrays[3].dtype == jnp.int32 and int(arrays[3]) == 7
    assert all(a.committed and a.devices() == {jax.devices("cpu")[0]} for a in arrays)
    # The JAX array keeps the shared memory alive after torch lets go of it.
    del contiguous
    gc.collect()
    _ = [torch.randn(64, 32) for _ in range(50)]
    np.testing.assert_array_equal(np.asarray(arrays[0]), kept.numpy())


def test_split_params_buffers_separates_batchnorm_state():
    params, buffers, _ = wc.split_params_buffers(zoo.models.resnet18())
    assert all(not wc.is_buffer_name(k) for k in wc.named_arrays(params))
    assert set(wc.named_arrays(buffers)) == {
        k for k in torchvision.models.resnet18().state_dict() if wc.is_buffer_name(k)
    }
