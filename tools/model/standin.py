"""Build a ResNet50 ONNX model with deterministic stand-in weights, without torch.

The architecture is torchvision's ResNet50 v1.5 (stride on the 3x3 conv of each
bottleneck) with batch norm folded into conv weights and biases. The weights are
He-initialised from a fixed numpy seed: the model runs and its outputs vary with
the input, but its predictions mean nothing. It exists so that the serving stack
can be built and measured before real weights are available.

The graph takes raw RGB bytes (uint8, NHWC, 224x224) and does its own
preprocessing: cast to float, scale to [0, 1], ImageNet normalisation, NCHW.
It returns softmax probabilities over the project's hashtag vocabulary.

Used by `tools.model.export` when no trained weights are available.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20240501
OPSET = 17
IMAGE_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (bottleneck width, number of blocks, stride of the first block) per stage.
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
EXPANSION = 4
# Scale of the last conv of every residual branch, so the residual sums stay tame.
BRANCH_OUT_SCALE = 0.2
# Spread of the head's logits on standardised features: some images pass a 0.4 threshold.
HEAD_SCALE = 1.5

NOTICE = """\
************************************************************************
*  STAND-IN WEIGHTS: this ResNet50 has random (seeded) weights.        *
*  Its predictions MEAN NOTHING. Use it only to build and measure the  *
*  serving stack; replace model.onnx with a trained export for real.   *
************************************************************************"""


class GraphBuilder:
    """Collects nodes and initializers, and hands out unique tensor names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.counter = 0

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}_{self.counter}"

    def const(self, prefix: str, value: npt.NDArray[np.float32]) -> str:
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], prefix: str, **attrs: Any) -> str:
        out = self.name(prefix)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def conv(
    g: GraphBuilder,
    x: str,
    c_in: int,
    c_out: int,
    k: int,
    stride: int = 1,
    relu: bool = True,
    scale: float = 1.0,
) -> str:
    """Conv with folded batch norm (He-init weight, small bias), optional ReLU."""
    std = scale * np.sqrt(2.0 / (c_in * k * k))
    w = (g.rng.standard_normal((c_out, c_in, k, k)) * std).astype(np.float32)
    b = (g.rng.standard_normal(c_out) * 0.01).astype(np.float32)
    y = g.op(
        "Conv",
        [x, g.const("w", w), g.const("b", b)],
        "conv",
        kernel_shape=[k, k],
        strides=[stride, stride],
        pads=[k // 2] * 4,
    )
    return g.op("Relu", [y], "relu") if relu else y


def preprocess(g: GraphBuilder, image: str) -> str:
    """uint8 NHWC RGB -> float NCHW, scaled to [0, 1] and ImageNet-normalised."""
    x = g.op("Cast", [image], "cast", to=TensorProto.FLOAT)
    mean = np.array(IMAGENET_MEAN, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.array(IMAGENET_STD, dtype=np.float32) * 255.0)
    x = g.op("Sub", [x, g.const("mean", mean)], "sub")
    x = g.op("Mul", [x, g.const("inv_std", inv_std)], "mul")
    return g.op("Transpose", [x], "nchw", perm=[0, 3, 1, 2])


def stem(g: GraphBuilder, x: str) -> str:
    """7x7/2 conv to 64 channels, then 3x3/2 max pool."""
    x = conv(g, x, 3, 64, 7, stride=2)
    return g.op("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)


def bottleneck(g: GraphBuilder, x: str, c_in: int, width: int, stride: int) -> str:
    """1x1 -> 3x3 (strided) -> 1x1 branch plus identity or projection shortcut."""
    c_out = width * EXPANSION
    y = conv(g, x, c_in, width, 1)
    y = conv(g, y, width, width, 3, stride=stride)
    y = conv(g, y, width, c_out, 1, relu=False, scale=BRANCH_OUT_SCALE)
    if stride != 1 or c_in != c_out:
        x = conv(g, x, c_in, c_out, 1, stride=stride, relu=False)
    return g.op("Relu", [g.op("Add", [x, y], "add")], "relu")


def body(g: GraphBuilder, x: str) -> tuple[str, int]:
    """The four bottleneck stages; returns the output and its channel count."""
    c_in = 64
    for width, blocks, stride in STAGES:
        for i in range(blocks):
            x = bottleneck(g, x, c_in, width, stride if i == 0 else 1)
            c_in = width * EXPANSION
    return x, c_in


def head(
    g: GraphBuilder,
    features: str,
    c_in: int,
    n: int,
    scores: str,
    mean: npt.NDArray[np.float32],
    std: npt.NDArray[np.float32],
) -> None:
    """Fully connected layer to `n` classes on standardised features, softmax into `scores`.

    Random weights on raw pooled features give every image the same top class (the features
    share a large common part); standardising them with statistics of a few calibration
    images, folded into the layer's weights and bias, lets different images score differently.
    """
    w = (g.rng.standard_normal((c_in, n)) * np.sqrt(1.0 / c_in) * HEAD_SCALE).astype(np.float32)
    folded_w = (w / std[:, None]).astype(np.float32)
    folded_b = (-(mean / std) @ w).astype(np.float32)
    logits = g.op("Gemm", [features, g.const("fc_w", folded_w), g.const("fc_b", folded_b)], "fc")
    g.nodes.append(helper.make_node("Softmax", [logits], [scores], name="sm", axis=1))


def feature_stats(
    g: GraphBuilder, features: str, channels: int, calibration: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Mean and standard deviation of the pooled features over the calibration images."""
    import onnxruntime as ort

    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", IMAGE_SIZE, IMAGE_SIZE, 3])
    out = helper.make_tensor_value_info(features, TensorProto.FLOAT, ["N", channels])
    graph = helper.make_graph(list(g.nodes), "features", [image], [out], initializer=list(g.initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (values,) = session.run([features], {"image": calibration})
    return values.mean(axis=0).astype(np.float32), (values.std(axis=0) + 1e-6).astype(np.float32)


def build_model(
    classes: tuple[str, ...], seed: int = SEED, calibration: npt.NDArray[np.uint8] | None = None
) -> onnx.ModelProto:
    """The whole graph: image (uint8 [N,224,224,3]) -> scores (float32 [N, len(classes)])."""
    g = GraphBuilder(seed)
    x, channels = body(g, stem(g, preprocess(g, "image")))
    features = g.op("Flatten", [g.op("GlobalAveragePool", [x], "gap")], "flatten", axis=1)
    if calibration is None:
        mean, std = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    else:
        mean, std = feature_stats(g, features, channels, calibration)
    head(g, features, channels, len(classes), "scores", mean, std)
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", IMAGE_SIZE, IMAGE_SIZE, 3])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", len(classes)])
    graph = helper.make_graph(g.nodes, "resnet50_standin", [image], [scores], initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tagstream")
    model.ir_version = 8  # what opset 17 needs; keeps older onnxruntimes happy
    model.doc_string = "ResNet50 v1.5, STAND-IN weights: predictions mean nothing"
    helper.set_model_props(model, {"classes": ",".join(classes), "weights": "stand-in"})
    return model
