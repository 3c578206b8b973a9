"""`servescope models build`: a model repository of N genuinely distinct small models.

The bundled digits-cnn is copied in as the first model; the others are scikit-learn
estimators of different kinds and settings (logistic regression, SGD, random forests, extra
trees, decision trees, k-NN, naive Bayes, MLPs, SVMs, discriminant analysis), no PyTorch.
Each is trained on exactly the bundled model's training split and input: the split, the
8-bit pixels and the normalisation come from services/classifier/model/build_model.py
itself (loaded from its path, so they are declared once), and the features are the
normalised tensor flattened. skl2onnx converts each estimator; the graph is then wrapped so
that every model takes the bundled model's input ("input", FP32 [-1,1,8,8]) and gives
"logits", FP32 [-1,10] = log(max(p, PROBABILITY_FLOOR)), the model's own log-probabilities
(finite, since JSON has no -inf): softmax of them with temperature 1.0 gives back p. So
preprocess and postprocess treat every model alike.

The held-out accuracy in each card is measured here by running the ONNX file in onnxruntime,
one image at a time, on the bundled held-out PNGs. Training runs single-threaded with every
random_state set to --seed, so the same seed on the same software gives byte-identical
files; the split never depends on the seed (the held-out set must stay the served one).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import multiprocessing
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from servescope.cli.paths import bundled_model_card, bundled_model_dir
from servescope.telemetry.contract import load_contract

INDEX = "repository.json"
CARD = "model-card.json"
VERSION = "1"
OPSET = 17
ML_OPSET = 3  # ai.onnx.ml: TreeEnsembleClassifier and friends as onnxruntime runs them
IR_VERSION = 8  # as the bundled model: older onnxruntime builds load it too
PROBABILITY_FLOOR = 1e-9  # log(0) would be -inf, which JSON cannot carry
DEFAULT_COUNT = 50
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class BuildError(Exception):
    """The repository cannot be built as asked (count, output directory, a model)."""


@dataclass(frozen=True)
class ModelSpec:
    """One scikit-learn model of the catalogue: its name, family and estimator settings."""

    name: str
    family: str
    estimator: str  # "module:Class"
    params: dict[str, Any] = field(default_factory=dict)
    base: ModelSpec | None = None  # the wrapped estimator of a meta-estimator
    convert: dict[str, Any] = field(default_factory=dict)  # skl2onnx options beyond zipmap

    def make(self, seed: int) -> Any:
        module, _, cls_name = self.estimator.partition(":")
        cls = getattr(importlib.import_module(module), cls_name)
        params = dict(self.params)
        if self.base is not None:
            params["estimator"] = self.base.make(seed)
        if "random_state" in cls().get_params():
            params["random_state"] = seed
        return cls(**params)

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"class": self.estimator.replace(":", "."), **self.params}
        if self.base is not None:
            described["estimator"] = self.base.describe()
        return described


def _num(value: float) -> str:
    """A setting as a name part: 0.1 -> 0p1, 1e-09 -> 1em09 (lowercase, no dots)."""
    return f"{value:g}".replace(".", "p").replace("-", "m").replace("+", "")


def _families() -> list[list[ModelSpec]]:
    """The catalogue by family; each family's list starts with its most different settings."""
    lm = "sklearn.linear_model"

    def logreg(c: float) -> ModelSpec:
        return ModelSpec(
            f"digits-logreg-c{_num(c)}",
            "logistic regression",
            f"{lm}:LogisticRegression",
            {"C": c, "max_iter": 5000},
        )

    def sgd(loss: str, alpha: float) -> ModelSpec:
        short = {"log_loss": "log", "modified_huber": "huber"}[loss]
        return ModelSpec(
            f"digits-sgd-{short}-a{_num(alpha)}",
            "linear model, stochastic gradient descent",
            f"{lm}:SGDClassifier",
            {"loss": loss, "alpha": alpha, "max_iter": 1000, "tol": 1e-4},
        )

    def forest(kind: str, trees: int, depth: int) -> ModelSpec:
        cls = {"rf": "RandomForestClassifier", "et": "ExtraTreesClassifier"}[kind]
        family = {"rf": "random forest", "et": "extra trees"}[kind]
        return ModelSpec(
            f"digits-{kind}-n{trees}-d{depth}",
            family,
            f"sklearn.ensemble:{cls}",
            {"n_estimators": trees, "max_depth": depth, "n_jobs": 1},
        )

    def tree(depth: int, criterion: str) -> ModelSpec:
        return ModelSpec(
            f"digits-tree-d{depth}-{criterion}",
            "decision tree",
            "sklearn.tree:DecisionTreeClassifier",
            {"max_depth": depth, "criterion": criterion},
        )

    def knn(k: int, weights: str, p: int = 2) -> ModelSpec:
        metric = "" if p == 2 else "-manhattan"
        return ModelSpec(
            f"digits-knn-k{k}-{weights}{metric}",
            "k nearest neighbours",
            "sklearn.neighbors:KNeighborsClassifier",
            {"n_neighbors": k, "weights": weights, "p": p},
            # onnxruntime's CDist kernel: 0.1 ms a digit instead of 5-10 ms with ONNX's Scan.
            convert={"optim": "cdist"},
        )

    def mlp(hidden: tuple[int, ...], activation: str, alpha: float = 1e-4) -> ModelSpec:
        reg = "" if alpha == 1e-4 else f"-a{_num(alpha)}"
        return ModelSpec(
            f"digits-mlp-{'x'.join(map(str, hidden))}-{activation}{reg}",
            "multi-layer perceptron",
            "sklearn.neural_network:MLPClassifier",
            {
                "hidden_layer_sizes": hidden,
                "activation": activation,
                "alpha": alpha,
                # L-BFGS: on 1,293 digits it converges in a tenth of Adam's time.
                "solver": "lbfgs",
                "max_iter": 300,
            },
        )

    def svc(kernel: str, c: float) -> ModelSpec:
        # Probabilities by sigmoid calibration on 3 folds (SVC's own probability=True is
        # deprecated in scikit-learn 1.9).
        return ModelSpec(
            f"digits-svc-{kernel}-c{_num(c)}",
            "support vector machine, sigmoid-calibrated",
            "sklearn.calibration:CalibratedClassifierCV",
            {"method": "sigmoid", "cv": 3, "ensemble": False},
            base=ModelSpec("svc", "", "sklearn.svm:SVC", {"kernel": kernel, "C": c}),
        )

    def gnb(smoothing: float) -> ModelSpec:
        return ModelSpec(
            f"digits-gnb-s{_num(smoothing)}",
            "Gaussian naive Bayes",
            "sklearn.naive_bayes:GaussianNB",
            {"var_smoothing": smoothing},
        )

    def bnb(alpha: float, threshold: float) -> ModelSpec:
        return ModelSpec(
            f"digits-bnb-a{_num(alpha)}-t{_num(threshold)}",
            "Bernoulli naive Bayes",
            "sklearn.naive_bayes:BernoulliNB",
            {"alpha": alpha, "binarize": threshold},
        )

    def lda(shrinkage: float | str | None) -> ModelSpec:
        if shrinkage is None:
            return ModelSpec(
                "digits-lda-svd",
                "linear discriminant analysis",
                "sklearn.discriminant_analysis:LinearDiscriminantAnalysis",
                {"solver": "svd"},
            )
        label = shrinkage if isinstance(shrinkage, str) else _num(shrinkage)
        return ModelSpec(
            f"digits-lda-shrink{label}",
            "linear discriminant analysis",
            "sklearn.discriminant_analysis:LinearDiscriminantAnalysis",
            {"solver": "lsqr", "shrinkage": shrinkage},
        )

    def qda(reg: float) -> ModelSpec:
        return ModelSpec(
            f"digits-qda-r{_num(reg)}",
            "quadratic discriminant analysis",
            "sklearn.discriminant_analysis:QuadraticDiscriminantAnalysis",
            {"reg_param": reg},
        )

    return [
        [logreg(c) for c in (0.1, 0.001, 10.0, 0.01, 1.0, 100.0, 0.03, 0.3, 3.0, 30.0)],
        [forest("rf", n, d) for n, d in ((25, 10), (10, 6), (50, 14), (10, 14), (50, 6))]
        + [forest("rf", n, d) for n, d in ((25, 6), (25, 14), (10, 10), (50, 10))],
        [knn(k, "uniform") for k in (5, 1)]
        + [knn(k, "distance") for k in (9, 3)]
        + [knn(k, "uniform") for k in (15, 3, 9)]
        + [knn(k, "distance") for k in (5, 15, 25)]
        + [knn(k, "distance", p=1) for k in (3, 5, 7, 9)],
        [mlp(h, a) for h, a in (((32,), "relu"), ((64, 32), "tanh"), ((16,), "tanh"))]
        + [mlp(h, a) for h, a in (((128,), "relu"), ((32, 16), "relu"), ((64,), "tanh"))]
        + [mlp(h, a) for h, a in (((16,), "relu"), ((64, 32), "relu"), ((32,), "tanh"))]
        + [mlp(h, a) for h, a in (((64,), "relu"), ((128,), "tanh"), ((32, 16), "tanh"))]
        + [mlp(h, "relu", 1e-2) for h in ((16,), (32,), (64,))],
        [sgd(loss, a) for a in (1e-3, 1e-1, 1e-4, 1e-2) for loss in ("log_loss", "modified_huber")],
        [forest("et", n, d) for n, d in ((25, 10), (10, 6), (50, 14), (10, 14), (50, 6))]
        + [forest("et", n, d) for n, d in ((25, 6), (25, 14), (10, 10), (50, 10))],
        [tree(d, c) for d in (8, 4, 12, 6, 10) for c in ("gini", "entropy")],
        [svc("rbf", 10.0), svc("poly", 1.0), svc("rbf", 1.0), svc("linear", 0.1)],
        [gnb(s) for s in (1e-9, 1e-2, 1e-6, 1e-1, 1e-4, 1e-3)],
        [lda(None), lda("auto"), lda(0.1), lda(0.5)],
        [bnb(a, t) for t in (0.0, 0.5, 1.0) for a in (1.0, 0.1)],
        [qda(r) for r in (0.1, 0.01, 0.5, 0.9)],
    ]


def catalogue() -> list[ModelSpec]:
    """Every scikit-learn model, interleaved by family so any prefix is varied."""
    rounds = zip_longest(*_families())
    return [spec for row in rounds for spec in row if spec is not None]


def max_count() -> int:
    """The largest --count: the catalogue plus digits-cnn, within the contract's max_models."""
    return min(len(catalogue()) + 1, load_contract().max_models)


# --- Work done in each worker process ------------------------------------------------------

_DATA: dict[str, Any] = {}


def _load_build_script(path: Path) -> ModuleType:
    """The bundled model's own build script, for its split, pixels and normalisation."""
    spec = importlib.util.spec_from_file_location("servescope_bundled_build_model", path)
    if spec is None or spec.loader is None:
        raise BuildError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _init_worker(model_dir: Path) -> None:
    """Load the data once per process: the bundled split, normalised, and the held-out PNGs."""
    script = _load_build_script(model_dir / "build_model.py")
    card = json.loads((model_dir / CARD).read_text())
    data = script.load_data()
    normalisation = card["input"]["normalisation"]
    if (data["mean"], data["std"]) != (normalisation["mean"], normalisation["std"]):
        raise BuildError("build_model.py's normalisation differs from the bundled model card")
    q, y = data["q"], data["y"]
    # The held-out set is the served one: the PNGs next to the bundled model, read back.
    q_test, y_test = script.read_heldout(model_dir)
    if not (
        np.array_equal(q_test, q[data["idx_test"]]) and np.array_equal(y_test, y[data["idx_test"]])
    ):
        raise BuildError("the held-out PNGs are not build_model.py's test split")

    def tensor(pixels: np.ndarray) -> np.ndarray:
        x: np.ndarray = script.normalise(pixels, data["mean"], data["std"])
        return x

    _DATA.update(
        script=script,
        card=card,
        x_train=tensor(q[data["idx_train"]]),
        y_train=y[data["idx_train"]],
        x_val=tensor(q[data["idx_val"]]),
        y_val=y[data["idx_val"]],
        x_test=tensor(q_test),
        y_test=y_test,
    )


def _wrap(converted: Any, spec: ModelSpec, card: dict[str, Any]) -> Any:
    """The skl2onnx graph behind a Reshape of the bundled input, ahead of Max and Log."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = converted.graph
    features = graph.input[0].name
    probabilities = "probabilities"
    ours = ("input", "logits", "servescope_flat_shape", "servescope_floor", "servescope_floored")
    used = {n for node in graph.node for n in (*node.input, *node.output)}
    used |= {init.name for init in graph.initializer}
    if clash := sorted(used & set(ours)):
        raise BuildError(f"{spec.name}: skl2onnx graph already uses the names {clash}")
    normalisation = card["input"]["normalisation"]
    nodes = [
        helper.make_node(
            "Reshape", ["input", "servescope_flat_shape"], [features], name="servescope_flatten"
        ),
        *graph.node,
        helper.make_node(
            "Max",
            [probabilities, "servescope_floor"],
            ["servescope_floored"],
            name="servescope_floor_probabilities",
        ),
        helper.make_node("Log", ["servescope_floored"], ["logits"], name="servescope_log"),
    ]
    flat = card["input"]["shape"][1:]
    wrapped = helper.make_graph(
        nodes,
        spec.name.replace("-", "_"),
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *flat])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[
            *graph.initializer,
            numpy_helper.from_array(
                np.array([-1, math.prod(flat)], dtype=np.int64), "servescope_flat_shape"
            ),
            numpy_helper.from_array(
                np.array(PROBABILITY_FLOOR, dtype=np.float32), "servescope_floor"
            ),
        ],
        value_info=list(graph.value_info),
    )
    opsets: dict[str, int] = {}
    for item in converted.opset_import:
        opsets[item.domain] = max(opsets.get(item.domain, 0), item.version)
    model = helper.make_model(
        wrapped,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        producer_name="servescope",
        producer_version=VERSION,
        doc_string=(
            f"Servescope {spec.name}: scikit-learn {spec.estimator.partition(':')[2]} "
            f"{spec.params} on the digits data (the card has the seed), converted with "
            "skl2onnx. Input as digits-cnn's; output log(max(p, "
            f"{PROBABILITY_FLOOR:g})) as 'logits'."
        ),
    )
    model.ir_version = IR_VERSION
    model.model_version = int(VERSION)
    helper.set_model_props(
        model,
        {
            "servescope.model_name": spec.name,
            "servescope.model_version": VERSION,
            "servescope.labels": json.dumps(card["labels"]),
            "servescope.color_mode": card["input"]["color_mode"],
            "servescope.input_scale": repr(normalisation["scale"]),
            "servescope.normalize_mean": repr(normalisation["mean"]),
            "servescope.normalize_std": repr(normalisation["std"]),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def session(data: bytes) -> Any:
    """An onnxruntime session as the classifier makes one: CPU, one thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def heldout_logits(sess: Any, x: np.ndarray) -> np.ndarray:
    """Logits for every held-out image, one inference per image (as the service runs them)."""
    return np.concatenate([sess.run(["logits"], {"input": x[i : i + 1]})[0] for i in range(len(x))])


def _build_one(spec: ModelSpec, seed: int) -> tuple[bytes, dict[str, Any]]:
    """Train, convert, wrap and evaluate one model; returns the ONNX bytes and its card."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    d = _DATA
    script, bundled = d["script"], d["card"]
    x_train = d["x_train"].reshape(len(d["x_train"]), -1)
    estimator = spec.make(seed)
    # One thread: reproducible sums, and the process pool already uses the cores.
    with threadpool_limits(1), warnings.catch_warnings():
        # Convergence notes of the small max_iter settings, deprecations inside skl2onnx.
        warnings.simplefilter("ignore")
        estimator.fit(x_train, d["y_train"])
        converted = to_onnx(
            estimator,
            initial_types=[("features", FloatTensorType([None, x_train.shape[1]]))],
            options={id(estimator): {"zipmap": False, **spec.convert}},
            target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        )
    model = _wrap(converted, spec, bundled)
    data: bytes = model.SerializeToString()
    sess = session(data)
    logits = heldout_logits(sess, d["x_test"])
    y_test, y_val = d["y_test"], d["y_val"]
    pred = logits.argmax(axis=1)
    correct = int((pred == y_test).sum())
    val_pred = sess.run(["logits"], {"input": d["x_val"]})[0].argmax(axis=1)
    labels = bundled["labels"]
    r6 = script.r6
    import onnx
    import onnxruntime
    import skl2onnx
    import sklearn

    card: dict[str, Any] = {
        "name": spec.name,
        "version": VERSION,
        "task": bundled["task"],
        "file": f"{spec.name}.onnx",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "framework": "ONNX",
        "opset": OPSET,
        "ir_version": IR_VERSION,
        "family": spec.family,
        "estimator": spec.describe(),
        "input": bundled["input"],
        "output": {
            "name": "logits",
            "datatype": "FP32",
            "shape": [-1, 10],
            "meaning": (
                f"log-probabilities: log(max(p, {PROBABILITY_FLOOR:g})) of the estimator's "
                "predict_proba, so softmax(logits) = p"
            ),
        },
        "labels": labels,
        "metrics": {
            "heldout_accuracy": correct / len(y_test),
            "heldout_correct": correct,
            "heldout_count": len(y_test),
            "validation_accuracy": r6((val_pred == y_val).mean()),
            "per_class_accuracy": {
                labels[k]: r6((pred[y_test == k] == k).mean()) for k in range(len(labels))
            },
            "evaluated_with": bundled["metrics"]["evaluated_with"],
        },
        "calibration": {
            "method": "none: the estimator's own probabilities",
            "temperature": 1.0,
            "usage": "probabilities = softmax(logits / temperature)",
            "nll": r6(script.nll(logits, y_test)),
            "ece_bins": bundled["calibration"]["ece_bins"],
            "ece": r6(script.ece(logits, y_test)),
        },
        "training": {
            "dataset": bundled["training"]["dataset"],
            "pixels": bundled["training"]["pixels"],
            "split": bundled["training"]["split"],
            "features": "the normalised input tensor, flattened to 64 values",
            "train_count": len(x_train),
            "validation_count": len(y_val),
            "heldout_count": len(y_test),
            "seed": seed,
            "threads": 1,
            "scikit_learn_version": sklearn.__version__,
            "skl2onnx_version": skl2onnx.__version__,
            "onnx_version": onnx.__version__,
            "onnxruntime_version": onnxruntime.__version__,
            "build_seconds": round(time.perf_counter() - started, 3),
        },
        # The same training inputs as digits-cnn, so its drift reference holds as it is.
        "reference": bundled["reference"],
    }
    # As the card file will read back (tuples become lists).
    return data, json.loads(json.dumps(card))


# --- The repository ------------------------------------------------------------------------


def _check_out_dir(out: Path) -> None:
    """Only an empty directory or a repository this command built is ever replaced."""
    if not out.exists():
        return
    if not out.is_dir():
        raise BuildError(f"{out} exists and is not a directory")
    if any(out.iterdir()) and not (out / INDEX).is_file():
        raise BuildError(
            f"{out} is not empty and holds no {INDEX}: not a repository this command built; "
            "choose another --out or empty it"
        )


def _results(
    specs: list[ModelSpec], seed: int, jobs: int, model_dir: Path
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    if jobs <= 1:
        _init_worker(model_dir)
        for spec in specs:
            yield _build_one(spec, seed)
        return
    # forkserver: workers start clean (no threads or onnxruntime state inherited), forked
    # from one server that has imported scikit-learn and skl2onnx once for all of them.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "sklearn.base", "skl2onnx", "onnxruntime"])
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_init_worker, initargs=(model_dir,)
    ) as pool:
        yield from pool.map(_build_one, specs, [seed] * len(specs))


def build_repository(
    out: Path,
    count: int = DEFAULT_COUNT,
    seed: int = 0,
    jobs: int | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """Write a repository of `count` models (digits-cnn first) to `out`; returns the cards."""
    limit = max_count()
    if not 1 <= count <= limit:
        raise BuildError(
            f"--count must be 1 to {limit} (the catalogue's {len(catalogue())} scikit-learn "
            f"models plus digits-cnn, within the contract's max_models "
            f"{load_contract().max_models}); got {count}"
        )
    out = out.resolve()
    _check_out_dir(out)
    model_dir = bundled_model_dir()
    specs = catalogue()[: count - 1]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(specs)))
    staging = out.with_name(f".{out.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.perf_counter()
    try:
        bundled = json.loads(bundled_model_card().read_text())
        (staging / bundled["name"]).mkdir()
        shutil.copy2(model_dir / bundled["file"], staging / bundled["name"] / bundled["file"])
        shutil.copy2(bundled_model_card(), staging / bundled["name"] / CARD)
        cards = [bundled]
        progress(
            f"[1/{count}] {bundled['name']} (bundled)  held-out accuracy "
            f"{bundled['metrics']['heldout_accuracy']:.4f}"
        )
        for i, (data, card) in enumerate(_results(specs, seed, jobs, model_dir), start=2):
            folder = staging / card["name"]
            folder.mkdir()
            (folder / card["file"]).write_bytes(data)
            (folder / CARD).write_text(json.dumps(card, indent=2) + "\n")
            cards.append(card)
            progress(
                f"[{i}/{count}] {card['name']}  held-out accuracy "
                f"{card['metrics']['heldout_accuracy']:.4f}  {card['size_bytes']} bytes"
            )
        index = {
            "count": count,
            "seed": seed,
            "models": [
                {
                    "name": c["name"],
                    "version": c["version"],
                    "file": f"{c['name']}/{c['file']}",
                    "sha256": c["sha256"],
                    "heldout_accuracy": c["metrics"]["heldout_accuracy"],
                    "family": c.get("family", "convolutional network (bundled)"),
                }
                for c in cards
            ],
        }
        (staging / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress(
        f"built {count} models in {time.perf_counter() - started:.1f} s with {jobs} jobs: {out}"
    )
    return cards
