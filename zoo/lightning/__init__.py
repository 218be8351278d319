"""Lightning integration: `ImageClassifier` fine-tunes any zoo model through its torch face,
with Lightning's automatic optimisation; in JAX mode each step's forward, loss and gradients
are one jitted XLA computation (`zoo.fused_cross_entropy`).

Needs the `lightning` extra (`pip install equizoo[lightning]`); `import zoo` does not import
this package. Its names load on first use, so a DataLoader worker that unpickles an
`ArrayDataset` imports the data helpers without Lightning (5 s of imports). `DataParallel`
and `make_data_parallel_step` are for pure-JAX training loops (a batch sharded over
`jax.devices()`).
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from ._data import (
        ArrayDataset as ArrayDataset,
        EpochShuffleSampler as EpochShuffleSampler,
        digits_arrays as digits_arrays,
        digits_preprocessing as digits_preprocessing,
        numpy_collate as numpy_collate,
        numpy_loader as numpy_loader,
        worker_context as worker_context,
    )
    from ._module import ImageClassifier as ImageClassifier, lr_factor as lr_factor
    from ._parallel import (
        DataParallel as DataParallel,
        eval_logits as eval_logits,
        make_data_parallel_step as make_data_parallel_step,
    )

_DATA = (
    "ArrayDataset",
    "EpochShuffleSampler",
    "digits_arrays",
    "digits_preprocessing",
    "numpy_collate",
    "numpy_loader",
    "worker_context",
)
__getattr__, __dir__ = lazy_attributes(
    __name__,
    globals(),
    {name: "._data" for name in _DATA}
    | {"ImageClassifier": "._module", "lr_factor": "._module"}
    | {name: "._parallel" for name in ("DataParallel", "eval_logits", "make_data_parallel_step")},
)
