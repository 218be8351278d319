"""A JAX-native training loop: the zoo's small CNN on scikit-learn's handwritten digits with
optax, one jitted step per batch, and a held-out accuracy at the end.

The digits (1,797 real 8x8 grayscale scans, bundled with scikit-learn: no download) are
upsampled bilinearly to 32x32, the CNN's native size, standardised and split 80/20.

    python examples/jax_training_loop.py                # 32x32, 6 epochs (~1 min on 2 cores)
    python examples/jax_training_loop.py --quick        # 16x16, 1 epoch (also ZOO_EXAMPLE_QUICK=1)
"""

import argparse
import os
import time

import numpy as np

# jax, optax, scikit-learn and zoo are imported where they are used, so `--help` answers at
# once instead of after seconds of imports.


def digits(size: int, seed: int = 0):
    """`(x_train, y_train, x_test, y_test)`: NCHW float32 images at `size`x`size`, int labels."""
    import jax
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = data.images.astype(np.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    images = np.asarray(jax.image.resize(images, (len(images), 1, size, size), method="bilinear"))
    x_train, x_test, y_train, y_test = train_test_split(
        images, data.target, test_size=0.2, random_state=seed, stratify=data.target
    )
    mean, std = x_train.mean(), x_train.std()
    return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test


def accuracy(face, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    """Eval-mode accuracy of a `zoo.JaxModel`, in fixed-size batches (the last one padded: no
    recompilation)."""
    import jax.numpy as jnp

    correct = 0
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        padded = np.zeros((batch, *x.shape[1:]), x.dtype)
        padded[: len(chunk)] = chunk
        predictions = np.asarray(jnp.argmax(face(padded), axis=-1))[: len(chunk)]
        correct += int((predictions == y[i : i + batch]).sum())
    return correct / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (the tests' run)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import jax
    import jax.numpy as jnp
    import optax

    import zoo

    quick = args.quick or os.environ.get("ZOO_EXAMPLE_QUICK") == "1"
    size = 16 if quick else 32
    epochs = args.epochs or (1 if quick else 6)

    x_train, y_train, x_test, y_test = digits(size, args.seed)
    steps_per_epoch = len(x_train) // args.batch_size  # drop the last partial batch
    total = steps_per_epoch * epochs
    print(
        f"digits {size}x{size}: {len(x_train)} train, {len(x_test)} held out; "
        f"{epochs} epoch(s) of {steps_per_epoch} steps"
    )

    key = jax.random.key(args.seed)
    key, init_key = jax.random.split(key)
    face = zoo.load("cnn", framework="jax", num_classes=10, in_chans=1, key=init_key)
    schedule = optax.cosine_decay_schedule(args.lr, total)
    optimizer = optax.chain(
        optax.add_decayed_weights(5e-4), optax.sgd(schedule, momentum=0.9, nesterov=True)
    )
    step = zoo.make_train_step(optimizer)  # forward, grads, BatchNorm, optax: one XLA program
    model = zoo.train_mode(face.model)
    opt_state = optimizer.init(zoo.trainable(model))
    print(f"held-out accuracy before training: {accuracy(face, x_test, y_test):.4f}")

    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        losses = []
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            key, dropout_key = jax.random.split(key)
            model, opt_state, loss, _ = step(
                model, opt_state, x_train[idx], y_train[idx], dropout_key
            )
            losses.append(loss)
        face = face.replace(model)  # eval mode, for the held-out set
        mean_loss = float(jnp.mean(jnp.stack(losses)))
        print(
            f"epoch {epoch + 1}/{epochs}: train loss {mean_loss:.4f}, "
            f"held-out accuracy {accuracy(face, x_test, y_test):.4f} "
            f"({time.perf_counter() - start:.1f} s)"
        )

    final = accuracy(face, x_test, y_test)
    print(f"final held-out accuracy: {final:.4f} on {len(x_test)} digits")


if __name__ == "__main__":
    main()
