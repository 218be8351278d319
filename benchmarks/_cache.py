"""Worker: time to first logits of a fresh process using JAX's persistent compilation cache.

The parent passes `BENCH_T0` (its `time.time()` just before starting this process), so the
time includes interpreter start and imports. Prints one `BENCH_RESULT` JSON line.
"""

import os
import time

T_START = time.time()

from benchmarks._common import pin_threads  # noqa: E402

THREADS = pin_threads()

import argparse  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import zoo  # noqa: E402
from benchmarks._common import emit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--model", default="resnet18", choices=zoo.list_models())
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)  # train-mode BN needs 2
    args = parser.parse_args()
    t0 = float(os.environ.get("BENCH_T0", T_START))
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    # Cache every computation, however fast it compiled or small it is.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    t_imported = time.time()
    # The user's path: zoo.load (registry, build, JAX face) to the first logits.
    face = zoo.load(args.model, num_classes=10)
    x = jnp.asarray(np.zeros((args.batch, 3, args.size, args.size), np.float32))
    t = time.time()
    face(x).block_until_ready()
    t_logits = time.time()
    model = face.model
    optimizer = optax.sgd(0.01, momentum=0.9)
    train = zoo.train_mode(model)
    step = zoo.make_train_step(optimizer)
    labels = jnp.zeros((args.batch,), jnp.int32)
    t_step = time.time()
    out = step(train, optimizer.init(zoo.trainable(train)), x, labels, jax.random.key(0))
    jax.block_until_ready(out[2])
    emit(
        {
            "to_first_logits_s": t_logits - t0,
            "imports_s": t_imported - t0,
            "load_s": t - t_imported,
            "first_forward_call_s": t_logits - t,
            "first_train_step_call_s": time.time() - t_step,
            "model": args.model,
            "batch": args.batch,
            "size": args.size,
        }
    )


if __name__ == "__main__":
    main()
