"""timm's `convnext_tiny` weights in torchvision's names (`timm_convnext_to_torchvision`):
the same logits from timm, torchvision and the zoo. Every parameter is randomised (layer
scales and LayerNorm affines included: at their 1e-6 and (1, 0) inits a swapped or
misplaced block would hardly change the logits)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from conftest import eval_logits

import weights_convert as wc
import zoo
from zoo.models._convnext import timm_convnext_to_torchvision

timm = pytest.importorskip("timm")


def _randomised_timm_convnext_tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("convnext_tiny", pretrained=False, num_classes=10)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif p.ndim == 1 and "norm" in name:  # LayerNorm affines, (1, 0) at init
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + name.endswith("weight"))
    return model.eval()


def test_timm_convnext_tiny_gives_torchvisions_and_the_zoos_logits():
    theirs = _randomised_timm_convnext_tiny()
    converted = timm_convnext_to_torchvision(theirs.state_dict())
    assert converted["features.1.0.layer_scale"].shape == (96, 1, 1)
    reference = torchvision.models.convnext_tiny(num_classes=10).eval()
    reference.load_state_dict(converted, strict=True)
    assert list(converted) == list(reference.state_dict())  # torchvision's order too

    x = torch.randn(2, 3, 65, 47, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        timm64 = theirs.double()(x.double()).numpy()
        tv64 = reference.double()(x.double()).numpy()
        timm32 = theirs.float()(x).numpy()
    assert float(np.abs(timm64).max()) > 1.0  # the blocks matter: logits far from zero
    assert float(np.abs(tv64 - timm64).max()) <= 1e-10  # the same function

    model = zoo.load("convnext_tiny", framework="equinox", weights=converted)
    # The zoo's arrays in torch's state_dict order (`layer_scale` before `block`): the
    # torch face pairs its parameters' gradients by that order.
    assert list(wc.named_arrays(model)) == list(converted)
    ours = np.asarray(eval_logits(model, jnp.asarray(x.numpy())))
    timm_error = float(np.abs(timm32 - timm64).max())
    assert float(np.abs(ours - timm64).max()) <= max(1e-5, 2 * timm_error)


def test_a_key_torchvision_has_no_place_for_is_refused():
    state = {
        "stem.0.weight": torch.zeros(96, 3, 4, 4),
        "stages.0.blocks.0.mlp.grn.weight": torch.zeros(384),
    }
    with pytest.raises(ValueError, match=r"no place for stages\.0\.blocks\.0\.mlp\.grn"):
        timm_convnext_to_torchvision(state)
