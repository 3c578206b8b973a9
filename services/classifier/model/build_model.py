#!/usr/bin/env python3
"""Build Servescope's bundled ``digits-cnn`` ONNX model, reproducibly.

This script trains a small convolutional network on scikit-learn's bundled
``load_digits`` data set (1797 8x8 images; nothing is downloaded), exports it
to ONNX by hand with ``onnx.helper`` (no ``torch.onnx``), fits a temperature
for calibration, and writes everything the classifier service ships:

    digits-cnn.onnx      the model (input ``input`` [batch,1,8,8] FP32,
                         output ``logits`` [batch,10] FP32, opset 17)
    model-card.json      machine-readable card (metrics, normalisation,
                         calibration, reference statistics for drift checks)
    MODEL_CARD.md        the same card for people
    heldout/             every held-out (test split) image as an 8x8 "L" PNG
                         named ``{index:04d}_{label}.png`` + ``labels.csv``

Training dependencies are NOT part of the serving environment. Install them in
a throwaway virtual environment, never in the repository's own environment::

    python3 -m venv VENV                       # any scratch directory
    VENV/bin/pip install -r requirements-train.txt
    VENV/bin/python build_model.py             # rebuild into this folder
    VENV/bin/python build_model.py --check     # rebuild in a temp dir and
                                               # verify the committed card

Everything is seeded (numpy, torch, the split's ``random_state``), torch runs
single-threaded with deterministic algorithms, so a rebuild on the same
software versions reproduces the same weights, the same metrics and, in
practice, byte-identical files.

Normalisation (the serving code must do exactly this, in float32)::

    q = 8-bit grayscale pixels (light ink on dark background), shape 8x8
    x = q.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(mean)) / np.float32(std)

where ``mean`` and ``std`` are stored in the card (rounded to 6 decimals; the
rounded values are the ones used for training and evaluation).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------------
# Fixed configuration. Changing any of these changes the model.
# --------------------------------------------------------------------------
SEED = 0
SPLIT_RANDOM_STATE = 0
TEST_FRACTION = 0.2  # held-out set
VAL_FRACTION = 0.1  # of the remaining 80 %
EPOCHS = 40
BATCH_SIZE = 32
LEARNING_RATE = 2e-3
LR_DECAY_EPOCHS = (25, 35)  # multiply lr by 0.1 at these epochs
WEIGHT_DECAY = 1e-4
AUGMENT_SHIFT_PROB = 0.5  # probability a training image is shifted by +-1 px
OPSET = 17
IR_VERSION = 8  # IR version of opset 17; keeps older onnxruntime builds happy

MODEL_NAME = "digits-cnn"
MODEL_VERSION = "1"
ONNX_FILE = "digits-cnn.onnx"
CARD_JSON = "model-card.json"
CARD_MD = "MODEL_CARD.md"
HELDOUT_DIR = "heldout"
LABELS = [str(i) for i in range(10)]
INPUT_SCALE = 1.0 / 255.0
ECE_BINS = 15
LOGIT_TOLERANCE = 1e-4

ARCHITECTURE = [
    "Conv 3x3, 1->16 channels, pad 1, stride 1",
    "ReLU",
    "Conv 3x3, 16->32 channels, pad 1, stride 1",
    "ReLU",
    "MaxPool 2x2, stride 2 (32x8x8 -> 32x4x4)",
    "Flatten (512)",
    "Gemm 512->64",
    "ReLU",
    "Gemm 64->10 (logits)",
]


def log(msg: str) -> None:
    print(msg, flush=True)


def r6(v: float) -> float:
    return round(float(v), 6)


def round_to_sum_one(values: np.ndarray) -> list[float]:
    """Round proportions to 6 decimals, nudging the largest so they sum to 1."""
    out = [r6(v) for v in values]
    diff = round(1.0 - sum(out), 6)
    if diff != 0.0:
        i = int(np.argmax(out))
        out[i] = r6(out[i] + diff)
    return out


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------
def load_data() -> dict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images  # float64, values 0..16
    y = digits.target.astype(np.int64)
    # Exact 8-bit quantisation; every later step works on these pixels so the
    # PNG round trip is lossless.
    q = np.round(images * 255.0 / 16.0).astype(np.uint8)

    idx = np.arange(len(y))
    idx_trval, idx_test = train_test_split(
        idx, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_RANDOM_STATE
    )
    idx_train, idx_val = train_test_split(
        idx_trval,
        test_size=VAL_FRACTION,
        stratify=y[idx_trval],
        random_state=SPLIT_RANDOM_STATE,
    )

    # Scalar pixel statistics of the training split in [0, 1] space.
    x_train01 = q[idx_train].astype(np.float32) / np.float32(255.0)
    mean = r6(x_train01.astype(np.float64).mean())
    std = r6(x_train01.astype(np.float64).std())

    return {
        "q": q,
        "y": y,
        "idx_train": idx_train,
        "idx_val": idx_val,
        "idx_test": idx_test,
        "mean": mean,
        "std": std,
        "n_total": len(y),
    }


def normalise(q: np.ndarray, mean: float, std: float) -> np.ndarray:
    """The exact serving-side normalisation, float32 throughout. Returns NCHW."""
    x = q.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(mean)) / np.float32(std)
    return x.reshape(-1, 1, 8, 8).astype(np.float32, copy=False)


def reference_stats(q_train: np.ndarray, y_train: np.ndarray) -> dict:
    x = q_train.astype(np.float64) / 255.0
    edges = np.linspace(0.0, 1.0, 11)
    counts, _ = np.histogram(x.ravel(), bins=edges)
    per_image_mean = x.reshape(len(x), -1).mean(axis=1)
    prior = np.bincount(y_train, minlength=10) / len(y_train)
    return {
        "space": "pixel / 255 (0 = background, 1 = full ink), before mean/std normalisation",
        "computed_on": f"training split ({len(x)} images)",
        "pixel_histogram": {
            "bin_edges": [r6(e) for e in edges],
            "proportions": round_to_sum_one(counts / counts.sum()),
            "binning": "numpy.histogram semantics: bins [a, b), last bin [0.9, 1.0]",
        },
        "mean_intensity": r6(x.mean()),
        "std_intensity": r6(x.std()),
        "mean_intensity_per_image_p05": r6(np.percentile(per_image_mean, 5)),
        "mean_intensity_per_image_p50": r6(np.percentile(per_image_mean, 50)),
        "mean_intensity_per_image_p95": r6(np.percentile(per_image_mean, 95)),
        "class_prior": round_to_sum_one(prior),
    }


# --------------------------------------------------------------------------
# Training (torch)
# --------------------------------------------------------------------------
def seed_everything() -> None:
    import torch

    os.environ.setdefault("PYTHONHASHSEED", str(SEED))
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def make_torch_model():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def augment(q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Seeded light augmentation: shift some images by up to 1 px, zero fill."""
    out = q.copy()
    n = len(q)
    do = rng.random(n) < AUGMENT_SHIFT_PROB
    dy = rng.integers(-1, 2, size=n)
    dx = rng.integers(-1, 2, size=n)
    padded = np.pad(q, ((0, 0), (1, 1), (1, 1)))
    for i in np.nonzero(do)[0]:
        out[i] = padded[i, 1 + dy[i] : 9 + dy[i], 1 + dx[i] : 9 + dx[i]]
    return out


def train(data: dict):
    import torch
    import torch.nn.functional as F

    seed_everything()
    q, y = data["q"], data["y"]
    mean, std = data["mean"], data["std"]
    q_tr, y_tr = q[data["idx_train"]], y[data["idx_train"]]
    x_val = torch.from_numpy(normalise(q[data["idx_val"]], mean, std))
    y_val = y[data["idx_val"]]

    model = make_torch_model()
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(LR_DECAY_EPOCHS), gamma=0.1)
    rng = np.random.default_rng(SEED)
    n = len(y_tr)
    for epoch in range(1, EPOCHS + 1):
        model.train()
        order = rng.permutation(n)
        q_aug = augment(q_tr, rng)
        total = 0.0
        for start in range(0, n, BATCH_SIZE):
            b = order[start : start + BATCH_SIZE]
            xb = torch.from_numpy(normalise(q_aug[b], mean, std))
            yb = torch.from_numpy(y_tr[b])
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        sched.step()
        if epoch % 5 == 0 or epoch == 1 or epoch == EPOCHS:
            model.eval()
            with torch.no_grad():
                acc = float((model(x_val).argmax(1).numpy() == y_val).mean())
            log(f"  epoch {epoch:3d}  train loss {total / n:.4f}  val acc {acc:.4f}")
    model.eval()
    return model


# --------------------------------------------------------------------------
# ONNX export by hand
# --------------------------------------------------------------------------
def build_onnx(model, mean: float, std: float):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    conv1, conv2, fc1, fc2 = model[0], model[2], model[6], model[8]

    def arr(t) -> np.ndarray:
        return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))

    inits = [
        numpy_helper.from_array(arr(conv1.weight), "conv1.weight"),
        numpy_helper.from_array(arr(conv1.bias), "conv1.bias"),
        numpy_helper.from_array(arr(conv2.weight), "conv2.weight"),
        numpy_helper.from_array(arr(conv2.bias), "conv2.bias"),
        numpy_helper.from_array(arr(fc1.weight), "fc1.weight"),  # [64, 512]
        numpy_helper.from_array(arr(fc1.bias), "fc1.bias"),
        numpy_helper.from_array(arr(fc2.weight), "fc2.weight"),  # [10, 64]
        numpy_helper.from_array(arr(fc2.bias), "fc2.bias"),
    ]
    conv_attrs = dict(
        kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1
    )
    nodes = [
        helper.make_node(
            "Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1"], name="conv1", **conv_attrs
        ),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node(
            "Conv", ["relu1", "conv2.weight", "conv2.bias"], ["conv2"], name="conv2", **conv_attrs
        ),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node(
            "MaxPool", ["relu2"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["fc1"], name="fc1", transB=1),
        helper.make_node("Relu", ["fc1"], ["relu3"], name="relu3"),
        helper.make_node(
            "Gemm", ["relu3", "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1
        ),
    ]
    graph = helper.make_graph(
        nodes,
        MODEL_NAME,
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )
    m = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="servescope",
        producer_version=MODEL_VERSION,
        doc_string=(
            "Servescope digits-cnn: 8x8 handwritten digit classifier (scikit-learn load_digits). "
            "Input NCHW float32 = (pixel/255 - mean)/std, light ink on dark; output raw logits."
        ),
    )
    m.ir_version = IR_VERSION
    m.model_version = int(MODEL_VERSION)
    helper.set_model_props(
        m,
        {
            "servescope.model_name": MODEL_NAME,
            "servescope.model_version": MODEL_VERSION,
            "servescope.labels": json.dumps(LABELS),
            "servescope.color_mode": "L",
            "servescope.input_scale": repr(INPUT_SCALE),
            "servescope.normalize_mean": repr(mean),
            "servescope.normalize_std": repr(std),
        },
    )
    onnx.checker.check_model(m, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    onnx.checker.check_model(inferred, full_check=True)
    return m


def ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def ort_logits(sess, x: np.ndarray) -> np.ndarray:
    return sess.run(["logits"], {"input": x})[0]


# --------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------
def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, y: np.ndarray, t: float = 1.0) -> float:
    lp = log_softmax(logits.astype(np.float64) / t)
    return float(-lp[np.arange(len(y)), y].mean())


def ece(logits: np.ndarray, y: np.ndarray, t: float = 1.0, bins: int = ECE_BINS) -> float:
    p = np.exp(log_softmax(logits.astype(np.float64) / t))
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Golden-section search of NLL over log T in [log 0.05, log 20]."""
    a, b = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(logits, y, math.exp(c)), nll(logits, y, math.exp(d))
    for _ in range(200):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(logits, y, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(logits, y, math.exp(d))
        if b - a < 1e-10:
            break
    return math.exp((a + b) / 2.0)


# --------------------------------------------------------------------------
# Held-out PNGs
# --------------------------------------------------------------------------
def write_heldout(out: Path, q_test: np.ndarray, y_test: np.ndarray) -> list[tuple[str, int]]:
    from PIL import Image

    d = out / HELDOUT_DIR
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    rows = []
    for i, (img, label) in enumerate(zip(q_test, y_test, strict=True)):
        name = f"{i:04d}_{int(label)}.png"
        Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).save(
            d / name, format="PNG", optimize=False, compress_level=9
        )
        rows.append((name, int(label)))
    with open(d / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "label"])
        w.writerows(rows)
    return rows


def read_heldout(out: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    d = out / HELDOUT_DIR
    with open(d / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    imgs, labels = [], []
    for r in rows:
        with Image.open(d / r["file"]) as im:
            imgs.append(np.asarray(im.convert("L"), dtype=np.uint8))
        labels.append(int(r["label"]))
    return np.stack(imgs), np.asarray(labels, dtype=np.int64)


# --------------------------------------------------------------------------
# Cards
# --------------------------------------------------------------------------
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def render_markdown(card: dict) -> str:
    m, c, i, t = card["metrics"], card["calibration"], card["input"], card["training"]
    nrm = i["normalisation"]
    per_class = " | ".join(f"{k}: {v:.3f}" for k, v in m["per_class_accuracy"].items())
    lines = [
        f"# Model card: {card['name']} (version {card['version']})",
        "",
        "_Generated by `build_model.py` from `model-card.json`; do not edit by hand._",
        "",
        "## Task",
        "",
        f"{card['task'][0].upper()}{card['task'][1:]}: a small convolutional network "
        f"({card['parameters']:,} parameters) that maps one 8x8 grayscale image of a "
        "handwritten digit to 10 unnormalised logits, one per label `0`..`9`.",
        "",
        f"- File: `{card['file']}` ({card['size_bytes']:,} bytes, {card['framework']}, opset {card['opset']})",
        f"- SHA-256: `{card['sha256']}`",
        f"- Architecture: {'; '.join(card['architecture'])}",
        "",
        "## Intended use and limits",
        "",
        "- Intended as the bundled reference model for Servescope: a fast, deterministic, "
        "CPU-only workload for observing ONNX model serving (latency, throughput, drift, calibration).",
        "- Inputs must look like the training data: 8x8 pixels, light ink on a dark background, "
        "digit roughly centred and filling the frame, 8-bit grayscale (PIL mode `L`).",
        "- Not for photos or scans of arbitrary digits without preprocessing (crop, invert to "
        "light-on-dark, downsample to 8x8, contrast stretch); dark-on-light or larger images "
        "will be misclassified with misleading confidence.",
        "- Trained on 1797 images from a small number of writers (UCI optical digits, as "
        "bundled with scikit-learn); it is not a general handwriting recogniser and has "
        'no "none of these" class.',
        "",
        "## Performance (held-out test split)",
        "",
        f"- Accuracy: **{m['heldout_accuracy']:.4f}** ({m['heldout_correct']}/{m['heldout_count']}), "
        "measured with onnxruntime on the PNG files in `heldout/` read back with Pillow.",
        f"- Validation accuracy: {m['validation_accuracy']:.4f}",
        f"- Per-class accuracy: {per_class}",
        "",
        "## Calibration",
        "",
        f"Temperature scaling fitted on the validation split by minimising NLL: "
        f"**T = {c['temperature']}** (use `softmax(logits / T)`). On the held-out split:",
        "",
        "| | NLL | ECE (15 bins) |",
        "| --- | --- | --- |",
        f"| before (T = 1) | {c['nll_before']:.6f} | {c['ece_before']:.6f} |",
        f"| after (T = {c['temperature']}) | {c['nll_after']:.6f} | {c['ece_after']:.6f} |",
        "",
        (
            "T < 1 means the raw logits are under-confident and dividing by T sharpens them. "
            if c["temperature"] < 1
            else "T > 1 means the raw logits are over-confident and dividing by T softens them. "
        )
        + f"The validation split is small ({card['training']['validation_count']} images), so T is "
        "only loosely determined; accuracy is unaffected by T.",
        "",
        "## Inputs and normalisation",
        "",
        f"- Input `{i['name']}`: {i['datatype']}, shape `{i['shape']}` ({i['layout']}, -1 = batch), "
        f"color mode `{i['color_mode']}`, {i['polarity']}.",
        f"- Normalisation, in float32: `{nrm['formula']}` with scale = 1/255, "
        f"mean = {nrm['mean']}, std = {nrm['std']}.",
        f"- Output `{card['output']['name']}`: {card['output']['datatype']}, shape "
        f"`{card['output']['shape']}`, {card['output']['meaning']}.",
        "- The same values are in the ONNX `metadata_props` (`servescope.*`).",
        "",
        "## Labels",
        "",
        "Output index *k* is the digit *k*: " + ", ".join(f"`{x}`" for x in card["labels"]) + ".",
        "",
        "## Training",
        "",
        f"- Data: {t['dataset']}.",
        f"- Split: {t['split']}.",
        f"- Optimiser: {t['optimizer']}; {t['epochs']} epochs, batch {t['batch_size']}; "
        f"augmentation: {t['augmentation']}.",
        f"- Seed {t['seed']}; torch {t['torch_version']}, onnxruntime {t['onnxruntime_version']}.",
        f"- Held-out images: `{card['heldout']['dir']}/` ({card['heldout']['count']} PNGs, index "
        f"`{card['heldout']['index']}`).",
        "- `reference` in the JSON card holds training-input statistics for drift detection.",
        "",
        "## How to rebuild",
        "",
        "In a scratch virtual environment (not the repository's own environment), from this folder:",
        "",
        "```sh",
        "python3 -m venv VENV",
        "VENV/bin/pip install -r requirements-train.txt",
        "VENV/bin/python build_model.py          # rewrites the files in this folder",
        "VENV/bin/python build_model.py --check  # rebuilds in a temp dir, compares with the committed card",
        "```",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------
def build(out: Path) -> dict:
    import onnx
    import onnxruntime
    import torch

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = load_data()
    q, y, mean, std = data["q"], data["y"], data["mean"], data["std"]
    log(
        f"data: train {len(data['idx_train'])}, val {len(data['idx_val'])}, "
        f"held-out {len(data['idx_test'])}; mean {mean}, std {std}"
    )

    log("training ...")
    t_train = time.perf_counter()
    model = train(data)
    train_seconds = time.perf_counter() - t_train
    n_params = int(sum(p.numel() for p in model.parameters()))
    log(f"trained {n_params} parameters in {train_seconds:.1f} s")

    m = build_onnx(model, mean, std)
    onnx_path = out / ONNX_FILE
    onnx_path.write_bytes(m.SerializeToString())
    onnx.checker.check_model(str(onnx_path), full_check=True)
    sess = ort_session(onnx_path)

    # torch vs onnxruntime on the held-out set
    x_test_mem = normalise(q[data["idx_test"]], mean, std)
    with torch.no_grad():
        t_logits = model(torch.from_numpy(x_test_mem)).numpy()
    o_logits = ort_logits(sess, x_test_mem)
    max_diff = float(np.abs(t_logits - o_logits).max())
    log(f"max |torch - onnxruntime| logit difference on held-out: {max_diff:.2e}")
    if not max_diff < LOGIT_TOLERANCE:
        raise SystemExit(f"logit mismatch {max_diff} >= {LOGIT_TOLERANCE}")

    # held-out PNGs, then evaluate from the files, one image per request
    rows = write_heldout(out, q[data["idx_test"]], y[data["idx_test"]])
    q_png, y_png = read_heldout(out)
    if not np.array_equal(q_png, q[data["idx_test"]]) or not np.array_equal(
        y_png, y[data["idx_test"]]
    ):
        raise SystemExit("PNG round trip is not lossless")
    x_png = normalise(q_png, mean, std)
    heldout_logits = np.concatenate([ort_logits(sess, x_png[i : i + 1]) for i in range(len(x_png))])
    pred = heldout_logits.argmax(axis=1)
    correct = int((pred == y_png).sum())
    count = len(y_png)
    heldout_acc = correct / count
    per_class = {LABELS[k]: r6((pred[y_png == k] == k).mean()) for k in range(10)}
    if heldout_acc < 0.95:
        raise SystemExit(f"held-out accuracy {heldout_acc:.4f} < 0.95")

    y_val = y[data["idx_val"]]
    val_logits = ort_logits(sess, normalise(q[data["idx_val"]], mean, std))
    val_acc = float((val_logits.argmax(axis=1) == y_val).mean())

    temperature = r6(fit_temperature(val_logits, y_val))
    calibration = {
        "method": "temperature",
        "fitted_on": "validation split, minimising negative log-likelihood (golden-section search over log T)",
        "evaluated_on": "held-out split",
        "temperature": temperature,
        "usage": "probabilities = softmax(logits / temperature)",
        "nll_before": r6(nll(heldout_logits, y_png)),
        "nll_after": r6(nll(heldout_logits, y_png, temperature)),
        "ece_bins": ECE_BINS,
        "ece_before": r6(ece(heldout_logits, y_png)),
        "ece_after": r6(ece(heldout_logits, y_png, temperature)),
    }

    size = onnx_path.stat().st_size
    if size >= 1_000_000:
        raise SystemExit(f"model too large: {size} bytes")

    card = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "task": "handwritten digit classification, 10 classes",
        "file": ONNX_FILE,
        "sha256": sha256(onnx_path),
        "size_bytes": size,
        "framework": "ONNX",
        "opset": OPSET,
        "ir_version": IR_VERSION,
        "parameters": n_params,
        "architecture": ARCHITECTURE,
        "input": {
            "name": "input",
            "datatype": "FP32",
            "shape": [-1, 1, 8, 8],
            "layout": "NCHW",
            "color_mode": "L",
            "polarity": "light ink on dark background",
            "normalisation": {
                "scale": INPUT_SCALE,
                "mean": mean,
                "std": std,
                "formula": "x = (pixel.astype(float32) / float32(255) - float32(mean)) / float32(std)",
            },
        },
        "output": {
            "name": "logits",
            "datatype": "FP32",
            "shape": [-1, 10],
            "meaning": "unnormalised logits",
        },
        "labels": LABELS,
        "metrics": {
            "heldout_accuracy": heldout_acc,
            "heldout_correct": correct,
            "heldout_count": count,
            "validation_accuracy": r6(val_acc),
            "per_class_accuracy": per_class,
            "evaluated_with": "onnxruntime, batch 1, on the held-out PNGs read back with Pillow",
        },
        "calibration": calibration,
        "training": {
            "dataset": "scikit-learn load_digits (1797 8x8 images, bundled with scikit-learn)",
            "pixels": "q = round(images * 255 / 16) as uint8 (exact 8-bit quantisation of the 0..16 values)",
            "split": (
                f"stratified by label with random_state={SPLIT_RANDOM_STATE}: "
                f"{int(TEST_FRACTION * 100)}% held-out test ({len(data['idx_test'])} images), "
                f"then {int(VAL_FRACTION * 100)}% of the rest for validation "
                f"({len(data['idx_val'])}), training on {len(data['idx_train'])}"
            ),
            "train_count": len(data["idx_train"]),
            "validation_count": len(data["idx_val"]),
            "heldout_count": len(data["idx_test"]),
            "seed": SEED,
            "epochs": EPOCHS,
            "batch_size": BATCH_SIZE,
            "optimizer": (
                f"Adam (lr {LEARNING_RATE}, weight_decay {WEIGHT_DECAY}, lr x0.1 at epochs "
                f"{', '.join(str(e) for e in LR_DECAY_EPOCHS)}), cross-entropy loss"
            ),
            "augmentation": (
                f"seeded random shift by up to 1 pixel (zero fill) on {int(AUGMENT_SHIFT_PROB * 100)}% "
                "of training images per epoch"
            ),
            "torch_version": torch.__version__,
            "onnx_version": onnx.__version__,
            "onnxruntime_version": onnxruntime.__version__,
        },
        "reference": reference_stats(q[data["idx_train"]], y[data["idx_train"]]),
        "heldout": {"dir": HELDOUT_DIR, "index": f"{HELDOUT_DIR}/labels.csv", "count": len(rows)},
    }
    (out / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    (out / CARD_MD).write_text(render_markdown(card), encoding="utf-8")

    log(f"held-out accuracy {heldout_acc:.6f} ({correct}/{count}), validation {val_acc:.6f}")
    log(
        f"calibration: T={temperature}  NLL {calibration['nll_before']} -> {calibration['nll_after']}  "
        f"ECE {calibration['ece_before']} -> {calibration['ece_after']}"
    )
    log(f"{ONNX_FILE}: {size} bytes, sha256 {card['sha256']}")
    log(f"total build time {time.perf_counter() - t0:.1f} s")
    return card


# --------------------------------------------------------------------------
# Check mode
# --------------------------------------------------------------------------
CHECK_KEYS = [
    "name",
    "version",
    "task",
    "file",
    "framework",
    "opset",
    "ir_version",
    "parameters",
    "architecture",
    "input",
    "output",
    "labels",
    "metrics",
    "calibration",
    "reference",
    "heldout",
]


def list_files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and (p.name in (ONNX_FILE, CARD_JSON, CARD_MD) or p.parent.name == HELDOUT_DIR)
    }


def check(committed: Path, strict: bool) -> int:
    card_path = committed / CARD_JSON
    if not card_path.exists():
        log(f"no {CARD_JSON} in the output directory to check against")
        return 2
    old = json.loads(card_path.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="servescope-model-") as tmp:
        new = build(Path(tmp))
        problems = [k for k in CHECK_KEYS if old.get(k) != new.get(k)]
        old_files, new_files = list_files(committed), list_files(Path(tmp))
        differing = sorted(
            set(old_files) ^ set(new_files)
            | {k for k in set(old_files) & set(new_files) if old_files[k] != new_files[k]}
        )
    for k in problems:
        log(
            f"MISMATCH in {k!r}:\n  committed: {json.dumps(old.get(k))}\n  rebuilt:   {json.dumps(new.get(k))}"
        )
    if differing:
        log(f"{len(differing)} file(s) not byte-identical: {', '.join(differing[:10])}")
    else:
        log(f"all {len(new_files)} files byte-identical to the committed ones")
    if old.get("sha256") != new.get("sha256"):
        log(f"onnx sha256 differs (committed {old.get('sha256')}, rebuilt {new.get('sha256')})")
    if problems or (strict and differing):
        log("CHECK FAILED")
        return 1
    log("CHECK OK: accuracy, calibration, architecture and card reproduce")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out-dir", type=Path, default=HERE, help="where to write (default: this script's folder)"
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="rebuild into a temporary directory and verify it reproduces the card in --out-dir",
    )
    ap.add_argument(
        "--strict", action="store_true", help="with --check: also require byte-identical files"
    )
    args = ap.parse_args(argv)
    if args.check:
        return check(args.out_dir.resolve(), args.strict)
    build(args.out_dir.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
