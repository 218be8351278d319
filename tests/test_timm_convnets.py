"""timm interop of DenseNet, Inception v3 and VGG beyond the registry tests (which export
every registered layout and load timm's state_dict back; RegNet's maps are tested in
tests/test_regnet.py): the options each layout maps or refuses, Inception v3's auxiliary
classifier and `transform_input`, and VGG's timm checkpoints, whose head equals
torchvision's only up to a 7x7 feature map (hence no `layout="timm"` for VGG)."""

import json

import pytest
import torch
import torchvision
from conftest import max_abs_diff, randomize_batchnorm

import weights_convert as wc
import zoo
from zoo.models._vgg import timm_vgg_to_torchvision, torchvision_vgg_to_timm

timm = pytest.importorskip("timm")

# torchvision warns that Inception's default initialisation will change.
pytestmark = pytest.mark.filterwarnings("ignore:The default weight initialization:FutureWarning")


def test_densenet_layout_maps_the_dropout_to_timms_per_layer_dropout():
    """torchvision's `drop_rate` (after each dense layer) is timm's `proj_drop_rate`; timm's
    `drop_rate` (before the classifier, which torchvision has not) stays 0."""
    info = zoo.get_model_info("densenet121")
    architecture, _, args = info.timm_layout({}, {"drop_rate": 0.2, "memory_efficient": True})
    assert (architecture, args) == (
        "densenet121",
        {"proj_drop_rate": 0.2, "memory_efficient": True},
    )
    assert info.timm_layout({}, {"drop_rate": 0.0, "memory_efficient": False})[2] == {}
    with torch.device("meta"):
        theirs = timm.create_model(architecture, **args)
    assert theirs.features.denseblock4.denselayer16.drop_rate == 0.2
    assert theirs.head_drop.p == 0.0


def _pixels(size: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, size, size, generator=gen, dtype=torch.float64)


def _normalise(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    mean, std = (torch.tensor(v, dtype=pixels.dtype).reshape(1, 3, 1, 1) for v in (mean, std))
    return (pixels - mean) / std


def test_inception_v3_timm_layout(tmp_path):
    """`transform_input=True` (torchvision's pretrained default) is refused. The recipe the
    error gives, the same weights with `transform_input=False` and mean = std = 0.5 recorded,
    is what timm reads with torchvision's logits from the same pixels (float64), its
    auxiliary classifier included (timm's `aux_logits=True`, loaded completely though timm
    loads such a checkpoint non-strictly); the export loads back into the zoo bit for bit,
    and a timm checkpoint without `AuxLogits` builds the model without one."""
    torch.manual_seed(0)
    kwargs = {"num_classes": 6, "aux_logits": True, "dropout": 0.3, "init_weights": False}
    reference = torchvision.models.inception_v3(transform_input=True, **kwargs)
    reference = randomize_batchnorm(reference, 0).double().eval()
    state = {
        k: v.float() if v.is_floating_point() else v for k, v in reference.state_dict().items()
    }
    name, info = "inception_v3", zoo.get_model_info("inception_v3")
    with pytest.raises(ValueError, match="transform_input=True has no timm layout"):
        info.timm_layout(state, {"aux_logits": True, "transform_input": True, "dropout": 0.3})

    # init_weights=False (in kwargs): the cheaper initialisation, overwritten by the weights.
    model = zoo.load(name, framework="equinox", weights=state, transform_input=False, **kwargs)
    half = {"mean": [0.5] * 3, "std": [0.5] * 3}
    folder = zoo.save_pretrained(
        model, tmp_path / name, name=name, layout="timm", pretrained_cfg=half
    )
    config = json.loads((folder / "config.json").read_text())
    assert config["model_args"] == {"aux_logits": True, "drop_rate": 0.3}
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).double().eval()
    timm_state = theirs.state_dict()
    assert list(timm_state) == list(state)
    assert all(torch.equal(timm_state[k].to(state[k].dtype), state[k]) for k in state)

    pixels = _pixels(75)
    cfg = theirs.pretrained_cfg
    with torch.no_grad():
        expected = reference(_normalise(pixels, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
        # timm's `forward` runs the auxiliary head in eval mode too, which needs 299x299:
        # its main path at 75x75, the auxiliary head on a 17x17 map.
        x = theirs.forward_postaux(
            theirs.forward_preaux(_normalise(pixels, cfg["mean"], cfg["std"]))
        )
        assert float(expected.abs().max()) > 0.1
        assert max_abs_diff(theirs.forward_head(x), expected) <= 1e-10
        mixed_6e = torch.randn(2, 768, 17, 17, dtype=torch.float64)
        aux = reference.AuxLogits(mixed_6e)
        assert max_abs_diff(theirs.AuxLogits(mixed_6e), aux) <= 1e-10

    back = wc.to_state_dict(
        zoo.load(f"local-dir:{folder}", framework="equinox", init_weights=False)
    )
    assert list(back) == list(state) and all(torch.equal(back[k], state[k]) for k in state)

    no_aux = {k: v for k, v in timm_state.items() if not k.startswith("AuxLogits.")}
    assert info.checkpoint_adapter(no_aux, options := {}) is no_aux
    assert options == {"aux_logits": False}  # zoo.load builds it without AuxLogits
    assert info.checkpoint_adapter(no_aux, options := {"aux_logits": True}) is no_aux
    assert options == {"aux_logits": True}  # asked for: the strict load names the missing keys
    assert info.checkpoint_adapter(state, options := {}) is state and options == {}


def _random_vgg11_state(theirs: torch.nn.Module) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, value in theirs.state_dict().items():
        noise = torch.randn(value.shape, generator=gen)
        state[key] = noise / value[0].numel() ** 0.5 if value.ndim > 1 else 0.1 * noise
    return state


def test_vgg_timm_checkpoints_load_exactly_and_timms_head_is_torchvisions_up_to_7x7():
    """A timm VGG state_dict loads into torchvision's names (the 7x7 `fc1` as the first
    `Linear`) bit for bit, and back. timm's network then gives torchvision's logits where
    the last map is at most 7x7 (65x33: a 2x1 map, pooled up to 7x7 on both sides) and
    others at 257x33 (an 8x1 map, pooled to 8x7, which timm's `fc1` slides over): so no
    timm layout."""
    with torch.device("meta"):
        theirs = timm.create_model("vgg11", num_classes=6).eval()
        reference = torchvision.models.vgg11(num_classes=6).eval()
    timm_state = _random_vgg11_state(theirs)
    theirs.load_state_dict(timm_state, assign=True)
    converted = timm_vgg_to_torchvision(timm_state)
    assert converted["classifier.0.weight"].shape == (4096, 512 * 7 * 7)
    reference.load_state_dict(converted, strict=True, assign=True)
    assert list(converted) == list(reference.state_dict())
    again = torchvision_vgg_to_timm(converted)
    assert list(again) == list(timm_state)
    assert all(torch.equal(again[k], timm_state[k]) for k in timm_state)
    with pytest.raises(ValueError, match=r"no place for pre_logits\.fc3\.weight"):
        timm_vgg_to_torchvision({"pre_logits.fc3.weight": None})

    info = zoo.get_model_info("vgg11")
    adapted = info.checkpoint_adapter(timm_state, {})  # what zoo.load does with it
    assert list(adapted) == list(converted)
    assert all(torch.equal(adapted[k], converted[k]) for k in converted)
    assert info.checkpoint_adapter(converted, {}) is converted  # torchvision's pass as they are
    assert info.timm_layout is None  # save_pretrained(..., layout="timm") refuses it

    with torch.no_grad():
        for size, agree in (((65, 33), True), ((257, 33), False)):
            x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
            expected = reference(x)
            scale, diff = float(expected.abs().max()), max_abs_diff(theirs(x), expected)
            assert scale > 0.1  # measured: 8e-7 and 1e-2 of it
            assert (diff <= 1e-5 * scale) if agree else (diff >= 1e-3 * scale), (size, diff)
