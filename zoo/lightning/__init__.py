"""Lightning integration: `ImageClassifier` fine-tunes any zoo model, with torch (automatic
optimisation) or one jitted JAX step per batch (manual optimisation, data-parallel over
`jax.devices()`).

Needs the `lightning` extra (`pip install equizoo[lightning]`); `import zoo` does not import
this package.
"""

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
