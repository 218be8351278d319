"""Swin's timm layout beyond the registry tests (which export `swin_t` to timm at 224x224
and check every variant's keys and shapes on the meta device): V1 and V2 at a tiny
configuration through the real export, `timm.create_model("local-dir:...")` and the
checkpoint adapter in float64 (V2's `q_bias`/`v_bias` and the buffers timm does not save),
Microsoft's original checkpoint keys, timm's options (dropouts, stochastic depth), what
timm refuses, and the keys the maps refuse."""

import copy

import numpy as np
import pytest
import torch
from conftest import max_abs_diff
from test_swin import _TINY, _pair
from torchvision.models import swin_transformer as tv

import weights_convert as wc
import zoo
import zoo._registry
from zoo.models._swin import SwinTransformer, timm_swin_to_torchvision, torchvision_swin_to_timm

timm = pytest.importorskip("timm")

# Sizes at which every stage's map is a whole number of windows (V1: 14x14 and 7x7 maps for
# 7-pixel windows, V2: 16x16 and 8x8 for 8): timm computes torchvision's function there, and
# stage 1's second block is shifted (its -100 mask runs).
_SIZE = {False: 56, True: 64}


@pytest.fixture(params=[False, True], ids=["v1", "v2"])
def tiny(request):
    """`(v2, name)`: the tiny configuration registered with `swin_t`'s (`swin_v2_t`'s) timm
    hooks, timm's model resized to it; removed after the test."""
    v2 = request.param
    window = [8, 8] if v2 else [7, 7]
    blocks = {"block": tv.SwinTransformerBlockV2, "downsample_layer": tv.PatchMergingV2}
    real = zoo.get_model_info("swin_v2_t" if v2 else "swin_t")
    size = _SIZE[v2]

    def torch_builder(in_chans: int = 3, **kwargs):
        assert in_chans == 3
        return tv.SwinTransformer(
            [4, 4], window_size=window, **_TINY, **(blocks if v2 else {}), **kwargs
        )

    def builder(*, key=None, **kwargs):
        return SwinTransformer([4, 4], window_size=window, v2=v2, key=key, **_TINY, **kwargs)

    def layout(state_dict, kwargs):
        architecture, state, args = real.timm_layout(state_dict, kwargs)
        tiny_args = {"embed_dim": 16, "depths": (2, 1), "num_heads": (1, 2)}
        return architecture, state, args | tiny_args | {"img_size": size}

    name = "swin_timm_tiny_test"
    zoo.register_model(
        name,
        builder,
        torch_builder=torch_builder,
        model_class=SwinTransformer,
        timm_layout=layout,
        checkpoint_adapter=real.checkpoint_adapter,
        input_size=(3, size, size),
        overwrite=True,
    )
    yield v2, name
    zoo._registry._REGISTRY.pop(name)


def test_timm_reads_the_export_and_its_state_dict_loads_back(tiny, tmp_path):
    """Export (`layout="timm"`) -> timm (strict) gives torchvision's float64 logits, and
    timm's state_dict -> `zoo.load` gives torchvision's state_dict (V2: with the key's third
    of `qkv.bias` zero, as torchvision uses it) and logits."""
    v2, name = tiny
    reference, model = _pair(v2)
    folder = zoo.save_pretrained(zoo.JaxModel(model, name=name), tmp_path / "m", layout="timm")
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).double().eval()
    x = torch.randn(2, 3, _SIZE[v2], _SIZE[v2], generator=torch.Generator().manual_seed(1))
    reference = reference.double()
    with torch.no_grad():
        expected = reference(x.double())
        assert float(expected.abs().max()) > 0.1
        assert max_abs_diff(theirs(x.double()), expected) <= 1e-10
        with pytest.raises(AssertionError, match="doesn't match model"):
            theirs(x[:, :, :-4].double())  # one size only: no other is computed silently

    timm_state = {k: v.float() for k, v in theirs.state_dict().items()}
    back = wc.to_state_dict(zoo.load(name, framework="equinox", weights=timm_state))
    ours = {k: v.float() for k, v in reference.state_dict().items()}
    if v2:  # torchvision's randomised key biases, which it zeroes before use
        for key in [k for k in ours if k.endswith("qkv.bias")]:
            third = ours[key].shape[0] // 3
            ours[key] = ours[key].clone()
            ours[key][third : 2 * third] = 0
    assert list(back) == list(ours)
    assert all(torch.equal(back[k], ours[k].to(back[k].dtype)) for k in ours)
    native = copy.deepcopy(reference)
    native.load_state_dict(back)  # strict, torchvision's own model
    with torch.no_grad():
        assert max_abs_diff(native.double()(x.double()), expected) <= 1e-10


def _timm_keys(v2: bool, microsoft: bool = False) -> dict[str, torch.Tensor]:
    """A tiny timm state_dict (random), or as Microsoft's checkpoints hold it: merging at
    the end of the stage before, classifier `head`, the buffers saved."""
    cls = timm.models.swin_transformer_v2.SwinTransformerV2 if v2 else timm.models.SwinTransformer
    torch.manual_seed(0)
    model = cls(img_size=_SIZE[v2], window_size=8 if v2 else 7, num_classes=10, **_TINY)
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    if not microsoft:
        return state
    out = {}
    for key, value in state.items():
        if ".downsample." in key:
            stage = int(key.split(".")[1])
            key = key.replace(f"layers.{stage}.", f"layers.{stage - 1}.")
        out[key.replace("head.fc.", "head.")] = value
        if key.endswith("attn.proj.bias"):  # Microsoft's persistent buffers
            out[key.replace("attn.proj.bias", "attn.relative_position_index")] = torch.zeros(1)
            out[key.replace("attn.proj.bias", "attn_mask")] = torch.zeros(1)
    return out


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_microsoft_checkpoints_load_as_timms_do(v2):
    """Microsoft's original keys (what timm's `checkpoint_filter_fn` converts) give the same
    torchvision state_dict as timm's, which torchvision's model loads strictly; the maps
    invert each other on it."""
    window = (8, 8) if v2 else (7, 7)
    timm_state = _timm_keys(v2)
    ours = timm_swin_to_torchvision(timm_state, window_size=window)
    microsoft = timm_swin_to_torchvision(_timm_keys(v2, microsoft=True), window_size=window)
    assert list(microsoft) == list(ours)
    assert all(torch.equal(microsoft[k], ours[k]) for k in ours)
    blocks = {"block": tv.SwinTransformerBlockV2, "downsample_layer": tv.PatchMergingV2}
    native = tv.SwinTransformer(
        [4, 4], window_size=list(window), num_classes=10, **_TINY, **(blocks if v2 else {})
    )
    assert list(native.state_dict()) == list(ours)
    native.load_state_dict(ours)  # strict: torchvision's keys, shapes and buffers
    again = torchvision_swin_to_timm(ours, v2=v2)
    assert again.keys() == timm_state.keys()
    assert all(torch.equal(again[k], timm_state[k]) for k in timm_state)


def test_timm_options_match_torchvisions_dropouts_and_stochastic_depth():
    """torchvision's `dropout`, `attention_dropout` and `stochastic_depth_prob` land on the
    same layers in timm's model, block by block (built on the meta device)."""
    options = {"dropout": 0.1, "attention_dropout": 0.2, "stochastic_depth_prob": 0.3}
    for name in ("swin_t", "swin_v2_t"):
        info = zoo.get_model_info(name)
        architecture, _, args = info.timm_layout({}, options | {"mlp_ratio": 4.0})
        assert args["img_size"] == (256 if name == "swin_v2_t" else 224)
        with torch.device("meta"):
            ours = info.torch_builder(**options)
            theirs = timm.create_model(architecture, **args)
        blocks = [b for stage in ours.features[1::2] for b in stage]
        timm_blocks = [b for stage in theirs.layers for b in stage.blocks]
        assert len(blocks) == len(timm_blocks)
        for block, timm_block in zip(blocks, timm_blocks, strict=True):
            rate = getattr(timm_block.drop_path1, "drop_prob", 0.0)  # Identity at rate 0
            assert rate == pytest.approx(block.stochastic_depth.p)
            assert timm_block.attn.attn_drop.p == block.attn.attention_dropout == 0.2
            assert timm_block.attn.proj_drop.p == block.attn.dropout == 0.1
            assert timm_block.mlp.drop1.p == block.mlp[2].p == 0.1
            assert timm_block.mlp.drop2.p == block.mlp[4].p == 0.1
        assert theirs.head.drop.p == 0.0  # torchvision has no dropout before its head
        # torchvision's defaults (timm's own drop_path_rate is 0.1)
        assert info.timm_layout({}, {})[2] == {"img_size": args["img_size"], "drop_path_rate": 0.2}


def test_what_the_maps_and_the_layout_refuse():
    """Keys without a place, a V2 checkpoint without its window, a bias table of another
    window (timm's `swin_base_patch4_window12_384` into `swin_b`), options timm lacks."""
    with pytest.raises(ValueError, match=r"no place for features\.1\.0\.attn\.extra"):
        torchvision_swin_to_timm({"features.1.0.attn.extra": np.zeros(3)})
    with pytest.raises(ValueError, match=r"no place for head\.norm\.weight"):
        timm_swin_to_torchvision({"head.norm.weight": np.zeros(3)})
    v2_state = _timm_keys(True)
    with pytest.raises(ValueError, match="pass window_size"):
        timm_swin_to_torchvision(v2_state)
    with pytest.raises(ValueError, match="v_bias come together"):
        timm_swin_to_torchvision(
            {k: v for k, v in v2_state.items() if not k.endswith("v_bias")}, window_size=(8, 8)
        )
    table = {"layers.0.blocks.0.attn.relative_position_bias_table": np.zeros((23 * 23, 4))}
    with pytest.raises(ValueError, match="529 rows"):
        zoo.get_model_info("swin_b").checkpoint_adapter({"patch_embed.proj.weight": 0} | table, {})
    with pytest.raises(ValueError, match="layout='torchvision'"):
        zoo.get_model_info("swin_t").timm_layout({}, {"window_size": [8, 8]})
    # key by key, as the export renames first_conv and classifier
    assert list(torchvision_swin_to_timm({"head.weight": 0})) == ["head.fc.weight"]
    assert list(torchvision_swin_to_timm({"features.0.0.weight": 0})) == ["patch_embed.proj.weight"]
