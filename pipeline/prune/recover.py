"""Recovery training (``--train-data SAMPLES --recover EPOCHS``): a pruned candidate is distilled
for a few epochs from the ORIGINAL model on the user's training samples, then converted and
judged on the evaluation split as every other candidate.

- **Distillation.** The targets are the original model's outputs on the training samples
  (computed once per run, streamed, into ``train-reference.npy`` in the run directory, a
  memory-mapped file). For a classifier (a vector of >= 2 values) the loss is the KL divergence
  between the temperature-softened distributions, times ``T**2`` (Hinton et al.): outputs that
  are already probabilities (non-negative, rows summing to 1, e.g. a softmax layer) are softened
  through their logarithm (``log p`` differs from the logits by a constant per sample, so
  ``softmax(log p / T)`` is ``softmax(logits / T)``). With labels and ``label_weight`` > 0 the
  loss is ``(1 - w) * distillation + w * cross-entropy(labels)``. Any other output: mean squared
  error against the original's outputs.
- **Deterministic on CPU.** Adam (``learning_rate``), batches of ``batch_size`` in an order drawn
  from ``default_rng((seed, candidate index, epoch))``, TensorFlow's op determinism switched on
  while training; the forward pass runs in inference mode (dropout off, BatchNormalization on its
  moving statistics, gamma/beta still trained), so no other randomness enters.
- **Memory flat in the training set.** The samples are read batch by batch from their lazy
  array (a ``.npy`` memory-mapped, an ``.npz``'s uint8 images converted per batch); the
  original model's outputs live in the memory-mapped file, not in RAM.
- **Hygiene.** A training sample whose float32 bytes equal an evaluation sample's (the same
  content hash as the calibration / evaluation split, :func:`edgeprune.pipeline.data.split.sample_keys`)
  is REMOVED from the training set before anything trains, and the report says how many; a
  training set left empty is refused (bad input).
- **Replay.** The trained weights are stored next to the candidate's plan as
  ``<candidate>.trained.bin`` (every array of ``model.get_weights()`` in order, raw
  little-endian bytes at its own dtype; shapes come from the plan's model) and the plan names
  the file and its sha256: ``Plan.load(path).apply(original)`` gives the trained model, bit for
  bit (see :meth:`edgeprune.pipeline.prune.plan.Plan.apply`).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edgeprune.errors import BadInput

TRAIN_REFERENCE_FILE = "train-reference.npy"
DEFAULT_TEMPERATURE = 4.0
DEFAULT_BATCH = 128
DEFAULT_LR = 1e-3
MAX_EPOCHS = 100
PROGRESS_EVERY_S = 0.5


@dataclass
class RecoverConfig:
    epochs: int = 1
    temperature: float = DEFAULT_TEMPERATURE
    label_weight: float = 0.0
    batch_size: int = DEFAULT_BATCH
    learning_rate: float = DEFAULT_LR
    seed: int = 0

    def validate(self) -> None:
        if not 1 <= int(self.epochs) <= MAX_EPOCHS:
            raise BadInput(f"--recover {self.epochs} epochs must be between 1 and {MAX_EPOCHS}",
                           "e.g. --recover 1 (one pass over the training samples per trained candidate)")
        if not float(self.temperature) > 0:
            raise BadInput(f"--temperature {self.temperature:g} must be positive", "e.g. --temperature 4")
        if not 0.0 <= float(self.label_weight) <= 1.0:
            raise BadInput(f"--label-weight {self.label_weight:g} must be in [0, 1]",
                           "0 = distillation only (the default), e.g. --label-weight 0.3 to mix in the labels")

    def to_dict(self) -> dict:
        return {"epochs": int(self.epochs), "temperature": float(self.temperature),
                "label_weight": float(self.label_weight), "batch_size": int(self.batch_size),
                "learning_rate": float(self.learning_rate), "optimizer": "Adam", "seed": int(self.seed)}


@dataclass
class TrainSet:
    """The training samples after the overlap check, and the original model's outputs on them."""

    x: Any  # lazy sample array (or ndarray) of the kept samples
    y: Optional[np.ndarray]
    teacher: np.ndarray  # memory-mapped (n, ...) float32: the original model's outputs
    kind: str  # "probabilities", "logits" or "regression"
    info: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(len(self.x))


@dataclass
class TrainResult:
    weights: bytes
    sha256: str
    epochs: int
    samples: int
    steps: int
    loss_per_epoch: list[float]
    seconds: float

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "samples": self.samples, "steps": self.steps,
                "loss": self.loss_per_epoch[-1] if self.loss_per_epoch else None,
                "loss_per_epoch": list(self.loss_per_epoch), "seconds": round(self.seconds, 3),
                "seconds_per_epoch": round(self.seconds / max(self.epochs, 1), 3), "weights_sha256": self.sha256}


# --------------------------------------------------------------------------- weights bytes
def weights_bytes(model) -> bytes:
    """Every array of ``model.get_weights()`` in order, raw little-endian bytes at its dtype."""
    parts = []
    for w in model.get_weights():
        a = np.asarray(w)
        parts.append(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes())
    return b"".join(parts)


def set_weights_bytes(model, data: bytes, what: str = "trained weights") -> None:
    """The inverse of :func:`weights_bytes` on a model of the same architecture."""
    out, pos = [], 0
    for w in model.get_weights():
        a = np.asarray(w)
        n = a.size * a.dtype.itemsize
        if pos + n > len(data):
            raise BadInput(f"{what}: {len(data)} bytes, fewer than the pruned model's weights need",
                           "replay a plan on the model it was made for (and keep its .trained.bin next to it)")
        out.append(np.frombuffer(data, dtype=a.dtype.newbyteorder("<"), count=a.size, offset=pos)
                   .reshape(a.shape).astype(a.dtype))
        pos += n
    if pos != len(data):
        raise BadInput(f"{what}: {len(data)} bytes, the pruned model's weights take {pos}",
                       "replay a plan on the model it was made for")
    model.set_weights(out)


# --------------------------------------------------------------------------- the training set
def output_kind(sample: np.ndarray) -> str:
    """How the distillation loss treats the model's outputs (see the module docstring)."""
    flat = sample.reshape(len(sample), -1)
    if flat.shape[1] < 2:
        return "regression"
    if np.all(flat >= -1e-6) and np.allclose(flat.sum(1), 1.0, atol=1e-3):
        return "probabilities"
    return "logits"


def prepare(train, eval_x, model, run_dir: Path, emit: Callable[..., None] | None = None) -> TrainSet:
    """The training samples (``train``: checked :class:`~edgeprune.pipeline.data.eval_data.EvalData`) minus
    every sample equal to an evaluation sample, and the original model's outputs on them (streamed
    into a memory-mapped ``train-reference.npy``)."""
    from edgeprune.pipeline.data.batching import batch_size_for, is_lazy, iter_batches
    from edgeprune.pipeline.data.split import sample_keys

    emit = emit or (lambda *a, **k: None)
    if len(model.outputs) != 1:
        raise BadInput(f"--train-data: the model has {len(model.outputs)} outputs; recovery training supports one",
                       "leave --train-data out for this model")
    emit("status", text=f"--train-data: checking {train.n:,} training samples against the evaluation split")
    train_keys = sample_keys(train.x)
    eval_keys = sample_keys(eval_x)
    overlap = np.isin(train_keys, eval_keys)
    keep = np.flatnonzero(~overlap)
    removed = int(overlap.sum())
    if keep.size == 0:
        raise BadInput(f"--train-data: all {train.n:,} training samples are also evaluation samples",
                       "give training samples the evaluation (--data) does not contain; a candidate trained on the "
                       "samples it is judged on would be judged on nothing it has not seen")
    x = (train.x.take(keep) if is_lazy(train.x) else np.asarray(train.x)[keep]) if removed else train.x
    y = None if train.y is None else np.asarray(train.y)[keep]
    shared = int(np.isin(train_keys[keep], eval_keys).sum())  # 0 by construction; counted, not assumed
    bs = batch_size_for(model)
    out_shape = tuple(int(d) for d in model.outputs[0].shape[1:])
    path = Path(run_dir) / TRAIN_REFERENCE_FILE
    emit("status", text=f"--train-data: original model's outputs on {len(keep):,} training samples")
    t0 = time.perf_counter()
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(keep), *out_shape))
    for start, b in iter_batches(x, bs):
        mm[start:start + len(b)] = np.asarray(model(np.asarray(b, np.float32), training=False), np.float32)
    mm.flush()
    del mm
    teacher = np.load(path, mmap_mode="r")
    kind = output_kind(np.asarray(teacher[: min(len(teacher), 256)]))
    info = {"n_given": int(train.n), "overlap_removed": removed, "n_samples": int(len(keep)), "shared": shared,
            "labelled": y is not None, "path": str(train.path) if train.path is not None else None,
            "form": train.form, "label": train.label.replace("user data", "training data", 1),
            "overlap_check": "content hash of each sample's float32 bytes (as the calibration/evaluation split); "
                             "training samples equal to an evaluation sample are removed",
            "targets": kind, "reference_s": round(time.perf_counter() - t0, 3)}
    return TrainSet(x=x, y=y, teacher=teacher, kind=kind, info=info)


# --------------------------------------------------------------------------- training
class _Determinism:
    """TensorFlow's op determinism on while training (restored afterwards)."""

    def __enter__(self):
        import tensorflow as tf

        try:
            from tensorflow.python.framework import config as tfconfig

            self.was = bool(tfconfig.is_op_determinism_enabled())
        except (ImportError, AttributeError):
            self.was = None
        tf.config.experimental.enable_op_determinism()
        return self

    def __exit__(self, *exc):
        if self.was is False:
            try:
                from tensorflow.python.framework import config as tfconfig

                tfconfig.disable_op_determinism()
            except (ImportError, AttributeError):
                pass
        return False


def _loss_fn(kind: str, temperature: float, label_weight: float, labelled: bool):
    import tensorflow as tf

    T = float(temperature)
    w = float(label_weight) if labelled else 0.0

    def loss(student, teacher, labels):
        s = tf.reshape(student, (tf.shape(student)[0], -1))
        t = tf.reshape(teacher, (tf.shape(teacher)[0], -1))
        if kind == "regression":
            return tf.reduce_mean(tf.square(s - t))
        if kind == "probabilities":
            s_log = tf.math.log(tf.clip_by_value(s, 1e-7, 1.0))
            t_log = tf.math.log(tf.clip_by_value(t, 1e-7, 1.0))
        else:
            s_log, t_log = s, t
        pt = tf.nn.softmax(t_log / T)
        kd = tf.reduce_mean(tf.reduce_sum(pt * (tf.nn.log_softmax(t_log / T) - tf.nn.log_softmax(s_log / T)), 1)) * T * T
        if w == 0.0:
            return kd
        ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=s_log))
        return (1.0 - w) * kd + w * ce

    return loss


def train(km, ts: TrainSet, cfg: RecoverConfig, index: int,
          progress: Callable[[int, int, int, int, float], None] | None = None) -> TrainResult:
    """Distil ``km`` (a pruned candidate, changed in place) from the original model's outputs
    ``ts.teacher`` for ``cfg.epochs`` epochs; ``progress(epoch, epochs, step, steps, loss)`` is
    called about every :data:`PROGRESS_EVERY_S` seconds."""
    import keras
    import tensorflow as tf

    n = ts.n
    bs = int(cfg.batch_size)
    steps = (n + bs - 1) // bs
    labelled = ts.y is not None and cfg.label_weight > 0
    if cfg.label_weight > 0 and ts.y is None:
        raise BadInput("--label-weight needs labelled --train-data", "give labels with the training samples, or "
                       "--label-weight 0 (distillation only)")
    loss_fn = _loss_fn(ts.kind, cfg.temperature, cfg.label_weight, labelled)
    opt = keras.optimizers.Adam(learning_rate=float(cfg.learning_rate))
    variables = km.trainable_variables

    @tf.function(reduce_retracing=True)
    def step(xb, tb, yb):
        with tf.GradientTape() as tape:
            out = km(xb, training=False)
            loss = loss_fn(out, tb, yb)
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        return loss

    losses: list[float] = []
    t0 = time.perf_counter()
    last = 0.0
    with _Determinism():
        keras.utils.set_random_seed(int(cfg.seed))
        for epoch in range(int(cfg.epochs)):
            order = np.random.default_rng((int(cfg.seed), int(index), epoch)).permutation(n)
            total, count = 0.0, 0
            for s in range(steps):
                idx = np.sort(order[s * bs:(s + 1) * bs])
                xb = np.asarray(ts.x[idx], np.float32)
                tb = np.asarray(ts.teacher[idx], np.float32)
                yb = np.asarray(ts.y[idx], np.int64) if labelled else np.zeros(len(idx), np.int64)
                loss = float(step(tf.constant(xb), tf.constant(tb), tf.constant(yb)))
                total += loss * len(idx)
                count += len(idx)
                now = time.perf_counter()
                if progress is not None and (now - last >= PROGRESS_EVERY_S or s == steps - 1):
                    last = now
                    progress(epoch, int(cfg.epochs), s + 1, steps, total / max(count, 1))
            losses.append(round(total / max(count, 1), 6))
    data = weights_bytes(km)
    return TrainResult(weights=data, sha256=hashlib.sha256(data).hexdigest(), epochs=int(cfg.epochs), samples=n,
                       steps=steps * int(cfg.epochs), loss_per_epoch=losses, seconds=time.perf_counter() - t0)
