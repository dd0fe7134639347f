"""``sbnn export --int8``'s data side: calibration batches and the accuracy change.

The int8 pass itself is the runtime's (:mod:`sbnn_runtime.quantize`); this module only finds
the data it needs: a few batches of the run's own training split (or an ``.npy`` file the user
passes) to calibrate on, and the test split to measure what int8 costs in accuracy.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["calibration_batches", "load_calibration_file", "accuracy_change",
           "format_accuracy_change"]


def calibration_batches(dataset: str, root: str | None = None, batches: int = 4,
                        batch_size: int = 128, seed: int = 0) -> list[np.ndarray]:
    """``batches`` shuffled batches (a fixed seed) of ``dataset``'s training split, normalised
    as the trainer feeds them: float32 ``(N, C, H, W)`` arrays."""
    import sbnn.pipeline.data as sdata

    if batches < 1 or batch_size < 1:
        raise ValueError("calibration needs at least one batch of at least one image")
    train = sdata.load_dataset(dataset, root, train=True)
    loader = sdata.BatchLoader(train, batch_size, shuffle=True, seed=seed)
    out = []
    for x, _ in loader:
        out.append(np.ascontiguousarray(x.numpy(), np.float32))
        if len(out) == batches:
            break
    return out


def load_calibration_file(path: str | os.PathLike, shape: tuple[int, ...],
                          batch_size: int = 128) -> list[np.ndarray]:
    """Calibration images from a ``.npy`` file: float ``(N, *shape)`` (or one image,
    ``shape``), preprocessed as the model expects; never unpickles. ValueError says what is
    wrong."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--calib {os.fspath(path)}: not a readable .npy array ({exc})") from None
    if arr.dtype.kind != "f":
        raise ValueError(f"--calib {os.fspath(path)}: dtype {arr.dtype}, expected float images")
    if tuple(arr.shape) == tuple(shape):
        arr = arr[None]
    if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != tuple(shape) or not len(arr):
        want = ", ".join(map(str, shape))
        raise ValueError(f"--calib {os.fspath(path)}: shape {arr.shape}, expected (N, {want})")
    arr = np.ascontiguousarray(arr, np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"--calib {os.fspath(path)}: holds NaN or infinite values")
    return [arr[i:i + batch_size] for i in range(0, len(arr), batch_size)]


def accuracy_change(float_graph, int8_graph, dataset: str, root: str | None = None,
                    subset: int | None = None, num_threads: int | None = None,
                    batch_size: int = 500) -> dict[str, Any]:
    """Test accuracy of the same network with its float layers in fp32 and in int8, both on
    the native engine (the numpy reference without it): ``{"n", "fp32", "int8", "change"
    (points), "differ" (images whose class changed)}``."""
    import sbnn.pipeline.data as sdata
    from sbnn_runtime.engine import Engine

    test = sdata.load_dataset(dataset, root, train=False).subset(subset)
    loader = sdata.BatchLoader(test, batch_size)
    engines = [Engine(g, num_threads) for g in (float_graph, int8_graph)]
    correct = [0, 0]
    differ = total = 0
    for x, y in loader:
        xn, yn = np.ascontiguousarray(x.numpy(), np.float32), y.numpy()
        preds = [e(xn).argmax(1) for e in engines]
        for k in range(2):
            correct[k] += int((preds[k] == yn).sum())
        differ += int((preds[0] != preds[1]).sum())
        total += len(yn)
    fp, q = correct[0] / max(total, 1), correct[1] / max(total, 1)
    return {"dataset": dataset, "n": total, "fp32": fp, "int8": q,
            "change": 100.0 * (q - fp), "differ": differ}


def format_accuracy_change(r: dict[str, Any]) -> str:
    return (f"int8 accuracy on {r['dataset']} test ({r['n']} images): {100 * r['int8']:.2f} % "
            f"vs {100 * r['fp32']:.2f} % with fp32 float layers ({r['change']:+.2f} points; "
            f"{r['differ']} predictions differ)")
