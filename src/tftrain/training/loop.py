"""The custom training engine: the write-up's GradientTape loop, distributed and chunked under tf.function.

It takes the same compiled model, datasets and Keras callbacks as `model.fit` and gives the same History and
metric names (loss, accuracy, val_loss, val_accuracy), so the two engines produce the same MLflow run layout. Unlike
Keras 3's fit, it runs under MultiWorkerMirroredStrategy.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from tftrain.keras_hooks import initial_epoch


def _metrics(task, prefix: str) -> dict[str, keras.metrics.Metric]:
    """The loss's running mean and the task's metrics, keyed by the names fit logs them under."""
    metrics = [keras.metrics.Mean(name=f"{prefix}loss"), *task.build_metrics(prefix)]
    return {m.name: m for m in metrics}


def _results(metrics: dict[str, keras.metrics.Metric]) -> dict[str, float]:
    return {name: float(m.result()) for name, m in metrics.items()}


def _chunked(strategy: tf.distribute.Strategy, step: Callable) -> Callable:
    """A tf.function that runs up to `n` steps from a distributed iterator; returns how many it ran.

    get_next_as_optional lets every worker agree when the data ends, so all of them run the same steps.
    """

    @tf.function
    def run(iterator, n):
        done = tf.constant(0)
        for _ in tf.range(n):
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                break
            strategy.run(step, args=batch.get_value())
            done += 1
        return done

    return run


def build_steps(model: keras.Model, task, strategy: tf.distribute.Strategy, global_batch: int):
    """The train and eval step functions and their metrics (the task's), created in the strategy's scope."""
    loss_fn = task.build_loss(reduction=None)
    with strategy.scope():
        train_metrics, val_metrics = _metrics(task, ""), _metrics(task, "val_")
        model.optimizer.build(model.trainable_variables)  # before strategy.run, or the first step fails

    def train_step(images, labels):
        with tf.GradientTape() as tape:
            probs = model(images, training=True)
            per_example = loss_fn(labels, probs)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            scaled = model.optimizer.scale_loss(loss)  # loss scaling under mixed_float16; identity otherwise
        gradients = tape.gradient(scaled, model.trainable_variables)
        # apply_gradients unscales the gradients and skips steps whose gradients are not finite
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        train_metrics["loss"].update_state(per_example)
        for name, metric in train_metrics.items():
            if name != "loss":
                metric.update_state(labels, probs)

    def eval_step(images, labels):
        probs = model(images, training=False)
        val_metrics["val_loss"].update_state(loss_fn(labels, probs))
        for name, metric in val_metrics.items():
            if name != "val_loss":
                metric.update_state(labels, probs)

    return _chunked(strategy, train_step), _chunked(strategy, eval_step), train_metrics, val_metrics


def fit_custom(
    model: keras.Model,
    task,
    strategy: tf.distribute.Strategy,
    train_data: tf.distribute.DistributedDataset,
    val_data: tf.distribute.DistributedDataset,
    *,
    epochs: int,
    steps_per_epoch: int,
    global_batch: int,
    steps_per_execution: int,
    callbacks: list[keras.callbacks.Callback],
    verbose: int,
) -> keras.callbacks.History:
    """Train like model.fit: the same callback calls in the same order, a History back."""
    train_chunk, eval_chunk, train_metrics, val_metrics = build_steps(model, task, strategy, global_batch)
    cb = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=verbose != 0, model=model, verbose=verbose, epochs=epochs,
        steps=steps_per_epoch,
    )  # fmt: skip
    model.stop_training = False
    chunk = tf.constant(steps_per_execution)
    logs: dict[str, float] = {}
    cb.on_train_begin()
    # BackupAndRestore's on_train_begin restores a crashed run's state and sets where to go on, as fit reads it
    first_epoch = initial_epoch(model)
    for epoch in range(first_epoch, epochs):
        for m in (*train_metrics.values(), *val_metrics.values()):
            m.reset_state()
        cb.on_epoch_begin(epoch)
        iterator, step = iter(train_data), 0
        while True:
            cb.on_train_batch_begin(step)
            ran = int(train_chunk(iterator, chunk))
            step += ran
            if ran:
                cb.on_train_batch_end(step - 1, _results(train_metrics))
            if ran < steps_per_execution:
                break
        cb.on_test_begin()
        iterator = iter(val_data)
        while int(eval_chunk(iterator, chunk)) == steps_per_execution:
            pass
        val_logs = _results(val_metrics)
        cb.on_test_end({k.removeprefix("val_"): v for k, v in val_logs.items()})
        logs = {**_results(train_metrics), **val_logs}
        cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cb.on_train_end(logs)
    return model.history
