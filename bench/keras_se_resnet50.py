#!/usr/bin/env python3
"""The seed's SE-ResNet-50 as its own Keras code builds it (../shared/seed/senet-blog.zh.txt,
section 7: ChannelSE, block, stack, 17 classes, Adam), timed like `se-compile bench`: Adam
train steps (`train_on_batch`) and inference batches (`predict_on_batch`) on random data.

Needs Keras 3 with a TensorFlow back end (`pip install tensorflow-cpu`). bench/compare.sh runs
it; by hand:  python3 bench/keras_se_resnet50.py --input 64 --batch-size 8 --steps 5 --threads 2
"""
import argparse
import os
import sys
import time


def parse():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=["train", "infer", "both"], default="both")
    return ap.parse_args()


a = parse()
# Thread counts must be fixed before TensorFlow starts.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["OMP_NUM_THREADS"] = str(a.threads)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(a.threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
import keras  # noqa: E402
from keras.layers import (  # noqa: E402
    Activation, Add, BatchNormalization, Conv2D, Dense, GlobalAvgPool2D, Input, MaxPool2D,
    Multiply, Reshape, ZeroPadding2D)


# The seed's code, unchanged but for `x[:, None, None, :]`, written as the Reshape it is.
def ChannelSE(input_tensor, reduction=16):
    channels = input_tensor.shape[-1]
    x = GlobalAvgPool2D()(input_tensor)
    x = Reshape((1, 1, channels))(x)
    x = Conv2D(filters=channels // reduction, kernel_size=1, strides=1)(x)
    x = Activation("relu")(x)
    x = Conv2D(filters=channels, kernel_size=1, strides=1)(x)
    x = Activation("sigmoid")(x)
    return Multiply()([input_tensor, x])


def block(x, filters, strides=1, conv_shortcut=True, reduction=16):
    if conv_shortcut:
        shortcut = Conv2D(filters * 4, kernel_size=1, strides=strides, padding="valid")(x)
        shortcut = BatchNormalization(epsilon=1.001e-5)(shortcut)
    else:
        shortcut = x
    x = Conv2D(filters=filters, kernel_size=1, strides=strides, padding="valid")(x)
    x = BatchNormalization(epsilon=1.001e-5)(x)
    x = Activation("relu")(x)
    x = Conv2D(filters=filters, kernel_size=3, strides=1, padding="same")(x)
    x = BatchNormalization(epsilon=1.001e-5)(x)
    x = Activation("relu")(x)
    x = Conv2D(filters=filters * 4, kernel_size=1, strides=1, padding="valid")(x)
    x = BatchNormalization(epsilon=1.001e-5)(x)
    x = ChannelSE(x, reduction=reduction)
    x = Add()([x, shortcut])
    return Activation("relu")(x)


def stack(x, filters, blocks, strides):
    x = block(x, filters, strides=strides)
    for _ in range(blocks - 1):
        x = block(x, filters, conv_shortcut=False)
    return x


def se_resnet50(image_size, num_classes=17):
    inputs = Input(shape=(image_size, image_size, 3))
    x = ZeroPadding2D((3, 3))(inputs)
    x = Conv2D(filters=64, kernel_size=7, strides=2, padding="valid")(x)
    x = BatchNormalization(epsilon=1.001e-5)(x)
    x = Activation("relu")(x)
    x = ZeroPadding2D((1, 1))(x)
    x = MaxPool2D(pool_size=3, strides=2, padding="valid")(x)
    x = stack(x, filters=64, blocks=3, strides=1)
    x = stack(x, filters=128, blocks=4, strides=2)
    x = stack(x, filters=256, blocks=6, strides=2)
    x = stack(x, filters=512, blocks=3, strides=2)
    x = GlobalAvgPool2D()(x)
    x = Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs=inputs, outputs=x)


def main():
    keras.utils.set_random_seed(0)
    m = se_resnet50(a.input)
    m.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-4),
              loss="categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(1)
    x = rng.random((a.batch_size, a.input, a.input, 3), dtype=np.float32)
    y = keras.utils.to_categorical(np.arange(a.batch_size) % 17, 17)
    print(f"keras {keras.__version__} / tensorflow {tf.__version__}, {a.threads} threads, "
          f"se_resnet50 at {a.input}x{a.input}, batch {a.batch_size}, params {m.count_params()}")
    if a.mode in ("train", "both"):
        m.train_on_batch(x, y)
        t = time.perf_counter()
        for _ in range(a.steps):
            m.train_on_batch(x, y)
        tr = (time.perf_counter() - t) / a.steps
        print(f"train:     {a.batch_size / tr:.1f} images/s ({tr * 1e3:.1f} ms/step)")
    if a.mode in ("infer", "both"):
        m.predict_on_batch(x)
        t = time.perf_counter()
        for _ in range(a.steps):
            m.predict_on_batch(x)
        inf = (time.perf_counter() - t) / a.steps
        print(f"inference: {a.batch_size / inf:.1f} images/s ({inf * 1e3:.1f} ms/batch)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
