"""Accuracy against latency and file bytes for a study (``scripts/study_latency.py``).

For every row of a study's ``results.csv`` whose run folder holds a ``model.sbnn`` (exported by
the sweep; a run with only ``last.pt`` is exported first), this measures

``latency_b1_ms``
    the native engine's latency at batch 1 with one thread and the engine's own kernel choice
    (sparse or dense per binary conv, the default of :func:`sbnn.engine.load`): the median of
    ``repeat`` timed calls, best of ``best_of`` rounds (the rounds interleave every candidate,
    so that load from other processes hits all of them alike);
``model_bytes``
    the size of the ``.sbnn`` file;

and records beside them ``latency_b1_cpu_ms`` (the same statistic of this process's CPU time:
with one thread, the latency without the time other processes held the core, the steadier figure
on a shared machine), ``latency_kernels`` (sparse / dense / tiny per binary conv, as the engine
chose), ``latency_isa`` (the kernel ISA), ``latency_cpu`` (the CPU model), ``latency_load`` (the
1-minute load average when the measurement started) and ``latency_best_of``. The same rounds time
onnxruntime (one intra-op thread) on the ONNX lowering
of the registry's float twin of the study's network, in float32 (``arm = fp32``) and statically
quantised to int8 (``arm = int8``: QDQ, per-channel int8 weights, uint8 activations; the
existing :mod:`sbnn.deploy.bench` code); these two rows have ``domain = onnxruntime`` and
``model_bytes`` = the ONNX file's size. With a trained twin (``twin_run``, or the study's ``fp``
row) the twin's weights are used, int8 is calibrated on 256 training images, and both rows get
the test accuracy onnxruntime reaches; without one the twin is randomly initialised and only its
latency and bytes are recorded (``test_accuracy`` empty; the report draws such a point as a
vertical line).

Rows are written with :func:`sbnn.pipeline.sweep.update_rows` (the sweep's lock, cells merged
into the existing rows), so a sweep appending rows to the same CSV meanwhile loses nothing.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["measure_study", "best_of", "find_run"]

CALIB_IMAGES = 256  # training images that calibrate the int8 twin (in batches of 32)


def best_of(fns: dict[str, Callable[[], Any]], rounds: int = 10, repeat: int = 15,
            warmup: int = 3) -> dict[str, tuple[float, float]]:
    """``(wall, cpu)`` seconds per call of each of ``fns``: the median of ``repeat`` calls, best
    (smallest) of ``rounds`` rounds, for the wall clock and for this process's CPU time (with
    one thread, the latency without the time other processes held the core); every round times
    every candidate in turn (interleaved)."""
    if rounds < 1 or repeat < 1:
        raise ValueError(f"rounds and repeat must be >= 1, got {rounds} and {repeat}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall = {k: float("inf") for k in fns}
    cpu = dict(wall)
    for _ in range(rounds):
        for k, fn in fns.items():
            tw, tc = [], []
            for _ in range(repeat):
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                tw.append(time.perf_counter() - t0)
                tc.append(time.process_time() - c0)
            wall[k] = min(wall[k], statistics.median(tw))
            cpu[k] = min(cpu[k], statistics.median(tc))
    return {k: (wall[k], cpu[k]) for k in fns}


def find_run(row: dict, study_dir: Path, run_roots: list[Path]) -> Path | None:
    """The run folder of ``row``: its ``run_dir`` when that exists, else a folder of the same
    name under ``study_dir/runs`` or one of ``run_roots`` (a study moved between machines)."""
    rd = row.get("run_dir")
    if not rd:
        return None
    p = Path(str(rd))
    if p.is_dir():
        return p
    for root in [study_dir / "runs", *run_roots]:
        if (root / p.name).is_dir():
            return root / p.name
    return None


def _model_file(run_dir: Path, input_shape) -> Path | None:
    """``run_dir/model.sbnn``, exported from ``last.pt`` when missing or older."""
    path = run_dir / "model.sbnn"
    ckpt = run_dir / "last.pt"
    if path.is_file() and (not ckpt.is_file() or path.stat().st_mtime >= ckpt.stat().st_mtime):
        return path
    if not ckpt.is_file() or input_shape is None:
        return path if path.is_file() else None
    from sbnn.deploy.export import export
    from sbnn.pipeline.runs import load_model

    export(load_model(run_dir), path, input_shape, check=False)
    return path


def _twin(graph, model_name: str | None, twin_run: Path | None, model_kwargs=None):
    """(name, eval-mode torch module, trained?) of the float twin of ``graph``'s network
    (``model_name``: the run's ``model.name`` when the file does not record it), or None."""
    import numpy as np

    from sbnn import models

    name = graph.metadata.get("model") or model_name
    twin = None if not name else (name if name.endswith("_fp") else f"{name}_fp")
    if twin_run is not None:
        from sbnn.pipeline.runs import load_model

        return twin or "float twin", load_model(twin_run).eval(), True
    if twin is None or not models.is_registered(twin):
        return None
    out = graph.shapes()[graph.output]
    kwargs = dict(graph.metadata.get("model_kwargs") or model_kwargs or {})
    m = models.create(twin, num_classes=int(np.prod(out)), in_chans=graph.input_shape[0],
                      **kwargs)
    return twin, m.eval(), False


def _ort_rows(graph, model: tuple, twin_run: Path | None, data_root: str | None, seed: int
              ) -> tuple[dict[str, Any], list[dict], str | None]:
    """onnxruntime sessions and their rows (without timings), or why there are none."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {}, [], f"onnxruntime not installed ({exc})"
    from sbnn.deploy.bench import ort_session, quantize_int8, twin_onnx

    model_name, dataset, model_kwargs = model
    tw = _twin(graph, model_name, twin_run, model_kwargs)
    if tw is None:
        return {}, [], "the network has no float twin in the registry"
    name, model, trained = tw
    shape = tuple(graph.input_shape)
    fp32 = twin_onnx(model, shape)
    calib, test = None, None
    dataset = graph.metadata.get("dataset") or dataset
    if trained and dataset:
        import sbnn.pipeline.data as sdata

        train = sdata.load_dataset(dataset, data_root, train=True).subset(CALIB_IMAGES)
        calib = [x.numpy() for x, _ in sdata.BatchLoader(train, 32)]
        test = sdata.BatchLoader(sdata.load_dataset(dataset, data_root, train=False), 1000)
    models = {"fp32": fp32, "int8": quantize_int8(fp32, shape, seed=seed, calib=calib)}
    sessions, rows = {}, []
    for arm, blob in models.items():
        sess = ort_session(ort, blob, 1)
        acc = None
        if test is not None:
            correct = total = 0
            for x, y in test:
                pred = sess.run(None, {"x": x.numpy()})[0].argmax(1)
                correct += int((pred == y.numpy()).sum())
                total += len(y)
            acc = correct / max(total, 1)
        rows.append({"domain": "onnxruntime", "arm": arm, "ec": None, "seed": seed,
                     "test_accuracy": acc, "model_bytes": len(blob),
                     "twin": f"{name} ({'trained' if trained else 'random init, latency only'})",
                     "run_dir": None if twin_run is None else str(twin_run)})
        sessions[arm] = sess
    return sessions, rows, None


def measure_study(study_dir: str | os.PathLike, csv_path: str | os.PathLike | None = None,
                  run_roots: list[str | os.PathLike] = (),
                  twin_run: str | os.PathLike | None = None,
                  rounds: int = 10, repeat: int = 15, ort: bool = True,
                  data_root: str | None = None, log=print) -> list[dict]:
    """Measure latency and file bytes of every run of the study (see the module docstring) and
    merge them into ``csv_path`` (default ``study_dir/results.csv``); returns the measured rows."""
    import numpy as np

    from sbnn import engine
    from sbnn.pipeline.data import DATASET_SHAPES
    from sbnn.pipeline.sweep import read_rows, update_rows
    from sbnn_runtime import fileformat

    study_dir = Path(study_dir)
    csv_path = Path(csv_path) if csv_path else study_dir / "results.csv"
    if not csv_path.is_file():
        raise ValueError(f"no results.csv at '{csv_path}'")
    roots = [Path(r) for r in run_roots]
    rows = read_rows(csv_path)
    if twin_run is None:  # the study's own trained twin, when it has one
        fps = sorted((r for r in rows if r.get("domain") == "fp"), key=lambda r: r.get("seed", 0))
        for r in fps:
            rd = find_run(r, study_dir, roots)
            if rd is not None and (rd / "last.pt").is_file():
                twin_run = rd
                break
    twin_run = Path(twin_run) if twin_run is not None else None
    fns: dict[str, Callable[[], Any]] = {}
    updates: dict[str, dict] = {}
    engines: dict[str, Any] = {}
    graph0, model0 = None, (None, None, None)
    for r in rows:
        if r.get("domain") in ("fp", "onnxruntime"):
            continue
        rd = find_run(r, study_dir, roots)
        cfg = None
        if rd is not None and (rd / "config.yaml").is_file():
            from sbnn.pipeline.config import load_config

            cfg = load_config(str(rd / "config.yaml"))
        path = None if rd is None else \
            _model_file(rd, DATASET_SHAPES.get(cfg.data.name) if cfg else None)
        tag = f"{r['domain']}_{r.get('arm')}_ec{r.get('ec')}_s{r.get('seed')}"
        if path is None:
            log(f"[latency] {tag}: no run folder with model.sbnn or last.pt, left out")
            continue
        graph = fileformat.load(path)
        if graph0 is None:
            graph0 = graph
            if cfg is not None:
                model0 = (cfg.model.name, cfg.data.name, dict(cfg.model.kwargs or {}))
                data_root = data_root or cfg.data.root
        eng = engine.load(path, num_threads=1)
        x = np.random.default_rng(0).standard_normal((1, *graph.input_shape), dtype=np.float32)
        fns[tag] = lambda e=eng, x=x: e.run(x)
        engines[tag] = eng
        updates[tag] = {k: r.get(k) for k in ("domain", "arm", "ec", "seed")}
        updates[tag]["model_bytes"] = path.stat().st_size
    note = None
    if ort and graph0 is not None:
        sessions, ort_rows, note = _ort_rows(graph0, model0, twin_run, data_root, 0)
        x = np.random.default_rng(0).standard_normal((1, *graph0.input_shape), dtype=np.float32)
        for arm, sess in sessions.items():
            fns[f"onnxruntime_{arm}"] = lambda s=sess, x=x: s.run(None, {"x": x})
        for row in ort_rows:
            updates[f"onnxruntime_{row['arm']}"] = row
    if note:
        log(f"[latency] onnxruntime baselines left out: {note}")
    if not fns:
        log("[latency] nothing to measure")
        return []
    from sbnn_runtime.native import core

    isa = str(core.default_impl()) if core is not None and hasattr(core, "default_impl") \
        else "reference"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    log(f"[latency] timing {len(fns)} models: batch 1, 1 thread, median of {repeat} calls, best "
        f"of {rounds} interleaved rounds; load {load}")
    secs = best_of(fns, rounds=rounds, repeat=repeat)
    for tag, eng in engines.items():  # the kernel each binary conv settled on
        kernels = [str(d.get("kernel")) for d in eng.layer_info()
                   if d.get("kernel") in ("sparse", "dense", "tiny")]
        updates[tag]["latency_kernels"] = "/".join(kernels) or None
    from sbnn.pipeline.train import cpu_model

    cpu = cpu_model()
    out = []
    for tag, u in updates.items():
        u.update(latency_b1_ms=1e3 * secs[tag][0], latency_b1_cpu_ms=1e3 * secs[tag][1],
                 latency_cpu=cpu, latency_load=load,
                 latency_best_of=rounds,
                 latency_isa=isa if u.get("domain") != "onnxruntime" else "onnxruntime")
        log(f"[latency] {tag}: {u['latency_b1_ms']:.4f} ms wall, "
            f"{u['latency_b1_cpu_ms']:.4f} ms CPU, {u['model_bytes']} bytes")
        out.append(u)
    update_rows(csv_path, out)
    return out
