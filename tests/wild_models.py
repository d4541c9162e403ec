"""Small seeded models of the kinds firmware teams ship (issue 10), built in the tests:
a one-sigmoid binary classifier, Masking -> BatchNormalization -> LSTM on a variable-length
input, Bidirectional GRU + LSTM, a U-Net (Conv2DTranspose, UpSampling, Concatenate), a
variable-length Conv1D regressor, a Reshape-flattened conv, a depthwise (MobileNet-like)
block, the sleep-staging shape, a keyword-spotting transformer, a ViT-style block and
TimeDistributed/Permute. ``CASES[name]() -> (model, fixed per-sample shape for data)``."""
from __future__ import annotations

import numpy as np

import keras

L = keras.layers


def randomize(model, seed: int = 0):
    """Non-trivial seeded weights (BN statistics away from 0/1, kernels ~ 1/sqrt(fan-in))."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        new = []
        for w in layer.weights:
            shape, name = tuple(w.shape), w.name
            if name == "moving_variance":
                v = rng.uniform(0.5, 2.0, shape)
            elif name == "moving_mean":
                v = rng.normal(0.0, 0.3, shape)
            elif name == "gamma":
                v = rng.uniform(0.5, 1.5, shape)
            elif name in ("beta", "bias"):
                v = rng.normal(0.0, 0.2, shape)
            else:
                fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
                v = rng.normal(0.0, 1.2 / np.sqrt(max(fan_in, 1)), shape)
            new.append(v.astype(np.float32))
        if new:
            layer.set_weights(new)
    return model


def sigmoid_classifier():
    inp = keras.Input((32, 3))
    x = L.Conv1D(12, 5, activation="relu")(inp)
    x = L.MaxPooling1D(2)(x)
    x = L.Conv1D(10, 3, activation="relu")(x)
    x = L.GlobalAveragePooling1D()(x)
    x = L.Dense(8, activation="relu")(x)
    return randomize(keras.Model(inp, L.Dense(1, activation="sigmoid")(x), name="sigmoid_clf"), 1), (32, 3)


def masked_lstm():
    inp = keras.Input((None, 4))
    x = L.Masking(mask_value=0.0)(inp)
    x = L.BatchNormalization()(x)
    x = L.LSTM(10)(x)
    x = L.Dense(6, activation="relu")(x)
    return randomize(keras.Model(inp, L.Dense(1, activation="sigmoid")(x), name="masked_lstm"), 2), (20, 4)


def bidirectional_rnn():
    inp = keras.Input((12, 5))
    x = L.Bidirectional(L.GRU(8, return_sequences=True))(inp)
    x = L.LSTM(9)(x)
    x = L.Dense(7, activation="tanh")(x)
    return randomize(keras.Model(inp, L.Dense(3, activation="softmax")(x), name="bi_rnn"), 3), (12, 5)


def unet():
    inp = keras.Input((16, 16, 2))
    a = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    p = L.MaxPooling2D()(a)
    b = L.Conv2D(12, 3, padding="same", activation="relu")(p)
    t = L.Conv2DTranspose(10, 3, strides=2, padding="same", activation="relu")(b)
    u = L.UpSampling2D()(b)
    x = L.Concatenate()([a, t, u])
    x = L.Conv2D(6, 3, padding="same", activation="relu")(x)
    return randomize(keras.Model(inp, L.Conv2D(1, 1, activation="sigmoid")(x), name="unet"), 4), (16, 16, 2)


def varlen_regressor():
    inp = keras.Input((None, 4))
    x = L.Conv1D(12, 3, activation="relu")(inp)
    x = L.Conv1D(10, 3, activation="relu")(x)
    x = L.GlobalMaxPooling1D()(x)
    x = L.Dense(8, activation="relu")(x)
    return randomize(keras.Model(inp, L.Dense(1)(x), name="varlen_reg"), 5), (40, 4)


def reshape_flatten():
    inp = keras.Input((6, 6, 1))
    x = L.Conv2D(8, 3, activation="relu")(inp)
    x = L.Reshape((4 * 4 * 8,))(x)  # a flatten spelled with the channel count
    x = L.Dense(10, activation="relu")(x)
    return randomize(keras.Model(inp, L.Dense(4, activation="softmax")(x), name="reshape_flat"), 6), (6, 6, 1)


def depthwise_block():
    inp = keras.Input((12, 12, 3))
    x = L.Conv2D(6, 3, padding="same")(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    x = L.DepthwiseConv2D(3, padding="same")(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    x = L.Conv2D(8, 1, activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    return randomize(keras.Model(inp, L.Dense(3, activation="softmax")(x), name="dw_block"), 7), (12, 12, 3)


def sleep_staging():
    """The shape of a public Keras 3 sleep-staging model (issue 24): a pruned Dense feeds two
    stacked Bidirectional GRUs over a masked, variable-length, batch-normalised input."""
    inp = keras.Input((None, 6))
    x = L.Masking(mask_value=0.0)(inp)
    x = L.BatchNormalization()(x)
    x = L.Dense(64)(x)
    x = L.ReLU()(x)
    x = L.Bidirectional(L.GRU(8, return_sequences=True))(x)
    x = L.Bidirectional(L.GRU(8, return_sequences=True))(x)
    return randomize(keras.Model(inp, L.Dense(4, activation="softmax")(x), name="sleep_staging"), 8), (30, 6)


def _encoder_block(x, d: int, heads: int, key_dim: int, ffn: int, i: int, pre_norm: bool = False):
    """[MHA + Add + LayerNorm + Dense(ffn, relu) + Dense(d) + Add + LayerNorm] (post-norm), or
    the pre-norm order [LN + MHA + Add + LN + Dense(ffn, gelu) + Dense(d) + Add]."""
    h = L.LayerNormalization(name=f"ln{i}a")(x) if pre_norm else x
    a = L.MultiHeadAttention(heads, key_dim, name=f"mha{i}")(h, h)
    x = L.Add(name=f"res{i}a")([x, a])
    x = x if pre_norm else L.LayerNormalization(name=f"ln{i}a")(x)
    h = L.LayerNormalization(name=f"ln{i}b")(x) if pre_norm else x
    f = L.Dense(ffn, activation="gelu" if pre_norm else "relu", name=f"ffn{i}")(h)
    f = L.Dense(d, name=f"ffn{i}_out")(f)
    x = L.Add(name=f"res{i}b")([x, f])
    return x if pre_norm else L.LayerNormalization(name=f"ln{i}b")(x)


def kws_transformer():
    """A small keyword-spotting transformer (issue 24): MFCC frames (T, F) -> Dense embedding ->
    two post-norm encoder blocks (4 heads) -> GlobalAveragePooling1D -> 12 classes."""
    inp = keras.Input((16, 10))
    x = L.Dense(32, name="embed")(inp)
    for i in range(2):
        x = _encoder_block(x, 32, 4, 16, 128, i)
    x = L.GlobalAveragePooling1D()(x)
    return randomize(keras.Model(inp, L.Dense(12, activation="softmax", name="head")(x), name="kws_transformer"),
                     9), (16, 10)


def vit_block():
    """A ViT-style block: patch embedding by a stride-4 Conv2D, Reshape to tokens, one pre-norm
    encoder block (3 heads), LayerNorm, pooling, classifier."""
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(24, 4, strides=4, name="patch")(inp)
    x = L.Reshape((16, 24), name="tokens")(x)
    x = _encoder_block(x, 24, 3, 8, 48, 0, pre_norm=True)
    x = L.LayerNormalization(name="ln_out")(x)
    x = L.GlobalAveragePooling1D()(x)
    return randomize(keras.Model(inp, L.Dense(5, activation="softmax", name="head")(x), name="vit_block"),
                     10), (16, 16, 3)


def time_distributed():
    """TimeDistributed(Conv2D) and TimeDistributed(Dense) over frames, a Permute that keeps the
    channels last, an LSTM."""
    inp = keras.Input((6, 8, 8, 2))
    x = L.TimeDistributed(L.Conv2D(8, 3, activation="relu"), name="td_conv")(inp)
    x = L.TimeDistributed(L.GlobalAveragePooling2D(), name="td_pool")(x)
    x = L.TimeDistributed(L.Dense(10, activation="relu"), name="td_dense")(x)
    x = L.Permute((1, 2), name="keep")(x)
    x = L.LSTM(6, name="lstm")(x)
    return randomize(keras.Model(inp, L.Dense(3, activation="softmax", name="head")(x), name="time_dist"),
                     11), (6, 8, 8, 2)


CASES = {
    "sigmoid": sigmoid_classifier,
    "masked_lstm": masked_lstm,
    "bi_rnn": bidirectional_rnn,
    "unet": unet,
    "varlen": varlen_regressor,
    "reshape": reshape_flatten,
    "depthwise": depthwise_block,
    "sleep": sleep_staging,
    "kws_transformer": kws_transformer,
    "vit": vit_block,
    "time_dist": time_distributed,
}
ATTENTION = {"kws_transformer", "vit"}
VARIABLE = {"masked_lstm", "varlen", "sleep"}
RECURRENT = {"masked_lstm", "bi_rnn", "sleep"}  # full int8 is refused (unrolled file > 2x float32): dynamic instead  # variable-length inputs: need --input-shape to convert


def inputs(shape, n: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(0.0, 1.0, (n, *shape)).astype(np.float32)
    return x
