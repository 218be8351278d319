"""Attributes a package imports on first use, so `import zoo` does not import torch.

JAX users of the zoo never touch its torch face; importing torch (and torchvision) costs
~1.1 s on a warm disk and several seconds on a cold one (benchmarks/README.md).
"""

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(
    package: str, namespace: dict[str, Any], sources: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module's `__getattr__` and `__dir__` (PEP 562) serving `sources` lazily.

    **Arguments:**

    - `package`: the module's `__name__`.
    - `namespace`: its `globals()`; a loaded attribute is stored there, so later lookups
      are plain ones.
    - `sources`: `{attribute: relative module}` (`{"TorchModel": "._torch_face"}`); an
      attribute named like its module (`{"hub": ".hub"}`) is the submodule itself.

    **Returns:** `(__getattr__, __dir__)`.
    """

    def __getattr__(name: str) -> Any:
        if name not in sources:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(sources[name], package)
        value = module if module.__name__ == f"{package}.{name}" else getattr(module, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *sources})

    return __getattr__, __dir__
