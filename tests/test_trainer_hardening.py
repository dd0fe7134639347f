"""Issue 18, trainer side: config input, run folders, integrity, interrupts.

Every bad input: exit 2, one line on stderr, no folder left, nothing lost.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from sbnn import cli
from sbnn.pipeline import config as sconfig
from sbnn.pipeline import runs
from sbnn.pipeline.config import Config, ConfigError, config_keys, load_config, loads_config
from sbnn.pipeline.data import write_synthetic_idx

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(write_synthetic_idx(tmp_path_factory.mktemp("fm"), n_train=128, n_test=64))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """A finished one-epoch run; tests that change it work on a copy (:func:`_copy_run`)."""
    import sbnn.pipeline.train as strain

    out = tmp_path_factory.mktemp("t") / "run"
    strain.train(tiny_cfg(data_root), out=out)
    return out


def _copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def tiny_cfg(root, **over) -> Config:
    cfg = load_config(None, [f"data.root={root}", "data.batch_size=64",
                             "data.eval_batch_size=128", "model.kwargs={width: 8}", "epochs=1",
                             "progress=false", "device=cpu", "optim.lr=0.01"])
    return replace(cfg, **over)


def _tiny_args(root, epochs=1):
    return ["--set", f"data.root={root}", "--set", "data.batch_size=64", "--set",
            "model.kwargs={width: 8}", "--set", f"epochs={epochs}", "--set", "progress=false",
            "--set", "device=cpu"]


def _exit2_one_line(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "error:" in err, err
    return err


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


# --------------------------------------------------------------------------------------------
# item 4: YAML alias bombs
# --------------------------------------------------------------------------------------------

_BOMB = "model:\n  kwargs:\n    a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"    {chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}]\n" for i in range(9))  # 9**10 leaves once expanded


def test_yaml_aliases_are_refused(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  kwargs: {a: &w 8, width: *w}\n")
    with pytest.raises(ConfigError, match="alias|anchor"):
        load_config(p)
    with pytest.raises(ConfigError, match="alias|anchor"):
        load_config(None, ["model.kwargs={a: &w 8, width: *w}"])
    err = _exit2_one_line(["train", "--config", p, "--out", tmp_path / "r"], capsys)
    assert "anchor" in err and not (tmp_path / "r").exists()


def test_alias_bomb_is_refused_at_once(tmp_path, capsys):
    p = tmp_path / "bomb.yaml"
    p.write_text(_BOMB)

    def hung(signum, frame):
        raise AssertionError("the alias bomb is being expanded")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)  # a regression fails here instead of hanging the suite
    try:
        err = _exit2_one_line(["train", "--config", p, "--out", tmp_path / "r"], capsys)
        with pytest.raises(ConfigError, match="anchor"):
            load_config(None, ["model.kwargs=" + _BOMB.split("kwargs:")[1].replace(
                "\n    ", ", ").replace("\n", "").strip(", ").join("{}")])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert "anchor" in err and not (tmp_path / "r").exists()


def test_config_text_limits(tmp_path):
    with pytest.raises(ConfigError, match="nested too deeply|not valid YAML"):
        loads_config("a: " + "[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError, match="at most"):
        loads_config("# " + "x" * (sconfig.MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="not valid YAML"):
        loads_config("data: {name: [")
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(p)


# --------------------------------------------------------------------------------------------
# item 5 and "every key has a type and a range": a property test over the config dataclasses
# --------------------------------------------------------------------------------------------

_WRONG_TYPES = {
    "int": ["abc", "[1]", "{a: 1}", "true", "1.5"],
    "float": ["abc", "[1]", "{a: 1}", "true"],
    "bool": ["abc", "1", "[true]", "null"],
    "str": ["5", "[a]", "{a: 1}", "true"],
    "dict": ["5", "abc", "[1]"],
}


def _base_type(tname: str) -> str:
    t = tname.replace(" | None", "").replace("Optional[", "").rstrip("]")
    return "dict" if t.startswith("dict") else t


def _out_of_range(key: str, tname: str) -> list[str]:
    """Values of the right type that the key does not allow."""
    if key in sconfig.RANGES:
        lo, hi, lo_open, hi_open = sconfig.RANGES[key]
        vals = [lo if lo_open else lo - (1 if _base_type(tname) == "int" else 0.5),
                hi if hi_open else hi + 1, 10**30, -(10**30)]
        if _base_type(tname) == "float":
            vals += [".nan", ".inf", "-.inf"]
        return [str(v) for v in vals]
    if key == "device":
        return ["meta", "cuda:99", "gpu7", "mps", "xla"]
    if key == "model.kwargs":
        return ["{width: -3}", "{width: 0}", "{width: 100000}", "{layers: [1, [2]]}",
                "{1: 2}", "{width: .nan}", "{layers: [" + ", ".join(["1"] * 100) + "]}"]
    if key in ("data.root", "out"):
        return ["x" * (sconfig.MAX_STR + 1)]
    if _base_type(tname) == "str":  # a key that names something
        return ["no-such-thing", "''"]
    assert _base_type(tname) == "bool", (key, tname)
    return []


def test_every_config_key_has_a_type_and_a_range():
    """New keys are covered automatically: each must have a range, a list of choices, or be a
    switch / a free path; the property test below then feeds it bad values."""
    choices = sconfig._choices()
    keys = {k for k, _, _ in config_keys()}
    for key, tname, _ in config_keys():
        covered = (key in sconfig.RANGES or key in choices or key in sconfig.FREE_KEYS
                   or _base_type(tname) == "bool")
        assert covered, f"config key {key!r} ({tname}) has no range or choices in config.py"
        if _base_type(tname) in ("int", "float"):
            assert key in sconfig.RANGES, f"numeric key {key!r} has no range"
    assert set(sconfig.RANGES) <= keys, set(sconfig.RANGES) - keys
    assert set(choices) <= keys, set(choices) - keys


def test_every_key_refuses_wrong_types_and_out_of_range_values(tmp_path, capsys):
    cases = []
    for key, tname, _ in config_keys():
        for v in _WRONG_TYPES[_base_type(tname)] + _out_of_range(key, tname):
            cases.append((key, v))
    assert len(cases) > 150
    out = tmp_path / "run"
    for key, v in cases:
        with pytest.raises(ConfigError) as e:
            load_config(None, [f"{key}={v}"])
        msg = str(e.value)
        assert "\n" not in msg and len(msg) < 600, (key, v, msg)
        assert key.split(".")[-1] in msg or "YAML" in msg, (key, v, msg)
        # and through the command line: one line, exit 2, no folder
        _exit2_one_line(["train", "--set", f"{key}={v}", "--out", out], capsys)
        assert not out.exists(), (key, v)


@pytest.mark.parametrize("bad", ["threads=100000", "device=meta", "model.kwargs={width: -4}",
                                 "seed=-1", "data.batch_size=100000000", "epochs=1e12",
                                 "model.kwargs={width: 1}", "model.kwargs={last_stride: 0}"])
def test_values_that_used_to_crash_are_refused_up_front(tmp_path, capsys, data_root, bad):
    out = tmp_path / "run"
    _exit2_one_line(["train", *_tiny_args(data_root), "--set", bad, "--out", out], capsys)
    assert not out.exists()


def test_threads_beyond_the_cpus_and_missing_cuda_are_refused():
    with pytest.raises(ConfigError, match="threads"):
        load_config(None, [f"threads={4 * (os.cpu_count() or 1) + 1}"])
    if not torch.cuda.is_available():
        for dev in ("cuda", "cuda:0"):
            with pytest.raises(ConfigError, match="not available"):
                load_config(None, [f"device={dev}"])


# --------------------------------------------------------------------------------------------
# config fuzzing: mutants of the shipped configs, in-process
# --------------------------------------------------------------------------------------------

_POOL = [None, True, False, 0, -1, 1, 2**31, 10**40, -(10**40), 0.5, 1e308, float("nan"),
         float("inf"), "", "x", "cpu", "auto", "learned", "ede", "adam", [], [1], [[1]], {},
         {"width": 8}, {"width": -1}, {"a": {"b": None}}, "0.1", "1e-3", "\u00e9" * 3]


def _mutate_dict(d: dict, rng: random.Random) -> dict:
    d = json.loads(json.dumps(d, default=str))
    paths = []

    def walk(node, prefix):
        for k, v in node.items():
            paths.append((node, k))
            if isinstance(v, dict) and k != "kwargs":
                walk(v, prefix + [k])

    walk(d, [])
    for _ in range(rng.randint(1, 3)):
        node, k = rng.choice(paths)
        op = rng.random()
        if op < 0.6:
            node[k] = rng.choice(_POOL)
        elif op < 0.75:
            node.pop(k, None)
        elif op < 0.9:
            node[k + rng.choice(["_", "x", "s"])] = rng.choice(_POOL)
        else:
            node[k] = {"nested": rng.choice(_POOL)}
    return d


def _mutate_text(text: str, rng: random.Random) -> str:
    b = bytearray(text.encode())
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(b))
        op = rng.random()
        if op < 0.4:
            b[i] = rng.choice(b":-{}[]&*!|>'\"#% \n\t0123456789.e")
        elif op < 0.7:
            del b[i]
        else:
            b[i:i] = bytes([rng.randrange(32, 127)])
    return b.decode("utf-8", "replace")


def test_config_fuzz_gives_a_config_or_one_config_error():
    """~3,000 deterministic mutants of the shipped configs (values and raw text): each gives
    a valid Config that round-trips, or a one-line ConfigError; never anything else."""
    rng = random.Random(18)
    texts = [p.read_text() for p in sorted((REPO / "configs").glob("*.yaml"))]
    texts.append(sconfig.dump_config(Config()))
    parsed = [yaml.safe_load(t) for t in texts]
    n_ok = n_err = 0
    for i in range(3000):
        if i % 2:
            text = json.dumps(_mutate_dict(rng.choice(parsed), rng))  # JSON is YAML too
        else:
            text = _mutate_text(rng.choice(texts), rng)
        try:
            cfg = loads_config(text, where=f"mutant {i}")
        except ConfigError as e:
            assert "\n" not in str(e) and len(str(e)) < 1000, (i, str(e)[:200])
            n_err += 1
            continue
        assert sconfig.from_dict(Config, sconfig.to_dict(cfg)) == cfg, i
        n_ok += 1
    assert n_ok > 100 and n_err > 1000, (n_ok, n_err)


# --------------------------------------------------------------------------------------------
# item 6: one writer per run folder; --out symlinks
# --------------------------------------------------------------------------------------------

def test_second_writer_is_refused_and_changes_nothing(tmp_path, data_root, capsys):
    from sbnn.pipeline.train import Trainer

    out = tmp_path / "run"
    first = Trainer(tiny_cfg(data_root), out=out)  # holds the lock from here to the end of fit
    config_before = (out / "config.yaml").read_bytes()
    with pytest.raises(runs.RunBusyError, match="another sbnn process"):
        Trainer(tiny_cfg(data_root, seed=5), out=out)
    err = _exit2_one_line(["train", *_tiny_args(data_root), "--set", "seed=7", "--out", out],
                          capsys)
    assert "another sbnn process" in err
    assert (out / "config.yaml").read_bytes() == config_before  # not touched, not removed
    first.fit()
    # a finished run is free again: --resume and --overwrite take the lock in turn
    with runs.RunLock(out):
        _exit2_one_line(["train", "--resume", out], capsys)
        _exit2_one_line(["train", *_tiny_args(data_root), "--out", out, "--overwrite"], capsys)
    assert json.loads((out / "report.json").read_text())["epochs"] == 1


def test_lock_is_on_the_folder_and_released_by_the_kernel(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (tmp_path / "alias").symlink_to(d)
    with runs.RunLock(d):
        with pytest.raises(runs.RunBusyError):
            runs.RunLock(tmp_path / "alias").acquire()  # another name, the same folder
        # another process sees a plain flock on the folder (what RunLock.acquire asks for)
        r = subprocess.run([sys.executable, "-c", "import fcntl, os, sys\nfd = os.open(sys.argv[1]"
                            ", os.O_RDONLY)\ntry:\n fcntl.flock(fd, fcntl.LOCK_EX | "
                            "fcntl.LOCK_NB)\nexcept BlockingIOError:\n sys.exit(3)", str(d)])
        assert r.returncode == 3
    assert not [p for p in d.iterdir()]  # no lock file left behind
    runs.RunLock(d).acquire().release()


def test_out_symlink_to_a_run_is_refused_but_links_higher_up_are_fine(tmp_path, data_root,
                                                                       capsys, trained):
    real = _copy_run(trained, tmp_path / "real")
    before = {p.name: p.read_bytes() for p in real.iterdir()}
    link = tmp_path / "link"
    link.symlink_to(real)
    for extra in ([], ["--overwrite"]):
        err = _exit2_one_line(["train", *_tiny_args(data_root), "--out", link, *extra], capsys)
        assert "symbolic link" in err or "already holds" in err
    assert {p.name: p.read_bytes() for p in real.iterdir()} == before
    # a symlink higher up the path (a scratch folder) is an ordinary place for a run
    scratch = tmp_path / "scratch_real"
    scratch.mkdir()
    (tmp_path / "scratch").symlink_to(scratch)
    assert cli.main(["train", *_tiny_args(data_root), "--out",
                     str(tmp_path / "scratch" / "run")]) == 0
    assert (scratch / "run" / "last.pt").is_file()


# --------------------------------------------------------------------------------------------
# run folders: full disk, read-only folder, a failure later; only runs.py writes
# --------------------------------------------------------------------------------------------

def _failing_writes(monkeypatch, code: int, after: int = 0, calls: list | None = None):
    """Every run-folder write after the first ``after`` fails with OSError(code), as the kernel
    reports a full disk (ENOSPC) or a read-only folder (EROFS): the data goes into the write's
    temporary file, then its fsync fails. All run-folder writes go through runs.atomic_write
    (test_only_runs_py_writes_run_folder_files holds that), which is where this is counted."""
    import sbnn_runtime.files as files

    real = runs.atomic_write
    real_fsync = os.fsync
    seen = calls if calls is not None else []

    def refuse(fd):
        raise OSError(code, os.strerror(code))

    def write(path, data):
        seen.append(Path(path).name)
        if len(seen) > after:
            files.os.fsync = refuse  # the os module, restored at once below
            try:
                real(path, data)
            finally:
                files.os.fsync = real_fsync
        else:
            real(path, data)

    monkeypatch.setattr(runs, "atomic_write", write)
    return seen


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_run_that_cannot_write_leaves_no_folder(tmp_path, data_root, capsys, monkeypatch,
                                                  code):
    _failing_writes(monkeypatch, code)
    out = tmp_path / "run"
    err = _exit2_one_line(["train", *_tiny_args(data_root), "--out", out], capsys)
    assert os.strerror(code) in err
    assert not out.exists()
    out.mkdir()  # an existing empty folder stays, empty (no temporary file left in it)
    _exit2_one_line(["train", *_tiny_args(data_root), "--out", out], capsys)
    assert out.is_dir() and not list(out.iterdir())


@pytest.mark.slow  # a real process: ~4 s of CPU
def test_disk_full_from_the_start_in_a_real_process(tmp_path, data_root):
    """RLIMIT_FSIZE = 0: every write of a byte fails in the kernel (EFBIG), as on a full disk;
    folders can still be made, which is what used to leave an empty run folder behind."""
    out = tmp_path / "run"
    # torch._dynamo (imported by the optimiser) needs a writable temporary folder: find it first
    code = ("import resource, sys, tempfile\nimport torch._dynamo\nfrom sbnn import cli\n"
            "import sbnn.pipeline.train\ntempfile.gettempdir()\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))\n"
            "sys.exit(cli.main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "train", *_tiny_args(data_root), "--out",
                        str(out)], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "File too large" in r.stderr  # the write failed, not something before it
    assert not out.exists()


def test_failure_after_a_checkpoint_keeps_it_resumable(tmp_path, data_root, capsys,
                                                       monkeypatch):
    import sbnn.pipeline.train as strain

    out = tmp_path / "run"
    calls = []
    # config.yaml, then epoch 1: metrics, best.pt, last.pt; epoch 2's metrics line fails
    _failing_writes(monkeypatch, errno.ENOSPC, after=4, calls=calls)
    err = _exit2_one_line(["train", *_tiny_args(data_root, epochs=2), "--out", out], capsys)
    assert calls[:4] == ["config.yaml", "metrics.jsonl", "best.pt", "last.pt"], calls
    assert "No space left" in err and f"sbnn train --resume {out}" in err
    assert not list(out.glob(".*.tmp"))  # no partial file
    assert runs.load_checkpoint(out)["epoch"] == 1
    monkeypatch.undo()
    strain.train(None, resume=out)
    assert runs.load_checkpoint(out)["epoch"] == 2
    assert [json.loads(ln)["epoch"] for ln in (out / "metrics.jsonl").read_text().splitlines()
            ] == [1, 2]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent_folder_exit_2(tmp_path, data_root, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        _exit2_one_line(["train", *_tiny_args(data_root), "--out", ro / "run"], capsys)
        assert not (ro / "run").exists()
    finally:
        ro.chmod(0o755)


_WRITE_CALLS = {"write_text", "write_bytes", "savefig", "save", "atomic_write", "dump",
                "tofile", "copy", "copyfile", "copy2", "move"}
_METHODS = {"write_text", "write_bytes", "savefig", "tofile", "copy", "move"}


def _writes(path: Path) -> list[str]:
    """The file-writing calls of a module: open(..., 'w'/'a'/'x'/'+'), Path.write_*, savefig,
    torch.save/np.save, atomic_write, shutil copies."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        if name == "open" or (isinstance(f, ast.Attribute) and f.attr == "open"):
            modes = [a for a in node.args[1:2]] + [k.value for k in node.keywords
                                                   if k.arg == "mode"]
            mode = modes[0].value if modes and isinstance(modes[0], ast.Constant) else "r"
            if any(c in str(mode) for c in "wax+"):
                found.append(f"{path.name}:{node.lineno} open(mode={mode!r})")
        elif name in _WRITE_CALLS:
            if name in _METHODS and not isinstance(f, ast.Attribute):
                continue  # a function of that name (runs.write_text), not Path.write_text
            if name == "dump" and not (isinstance(f, ast.Attribute) and getattr(
                    f.value, "id", "") in ("json", "yaml", "pickle")):
                continue
            if name == "save" and not (isinstance(f, ast.Attribute) and getattr(
                    f.value, "id", "") in ("torch", "np", "numpy")):
                continue
            found.append(f"{path.name}:{node.lineno} {name}()")
    return found


# data.py writes dataset files (test fixtures), never a run folder; config.save_config is the
# deprecated shim of runs.save_config, kept one release; logs.RunLog appends the --log-json event
# stream, a file of the user's choosing written event by event (not one of the run's files)
_NOT_RUN_FOLDERS = {"data.py": {"write_idx"}, "config.py": {"save_config"},
                    "logs.py": {"__init__"}}


def test_only_runs_py_writes_run_folder_files():
    """Issue 17: run-folder files are written only through pipeline/runs.py."""
    pipeline = REPO / "src" / "sbnn" / "pipeline"
    assert _writes(pipeline / "runs.py")  # the detector sees the owner's writes
    bad = []
    for p in sorted(pipeline.glob("*.py")):
        if p.name == "runs.py":
            continue
        allowed = _NOT_RUN_FOLDERS.get(p.name, set())
        tree = ast.parse(p.read_text())
        skip = {n.lineno for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
                and fn.name in allowed for n in ast.walk(fn) if hasattr(n, "lineno")}
        bad += [w for w in _writes(p) if int(w.split(":")[1].split()[0]) not in skip]
    assert not bad, f"pipeline modules writing files outside runs.py: {bad}"


# --------------------------------------------------------------------------------------------
# item 7: checkpoint integrity
# --------------------------------------------------------------------------------------------

def _flip_a_tensor_bit(path: Path) -> None:
    """Flip one bit inside the largest tensor stored in a torch zip checkpoint (stored, not
    compressed), leaving the zip structure intact: torch.load does not check the CRC."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    off = info.header_offset
    name_len = int.from_bytes(raw[off + 26:off + 28], "little")
    extra_len = int.from_bytes(raw[off + 28:off + 30], "little")
    raw[off + 30 + name_len + extra_len + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def test_bit_flipped_checkpoint_is_refused(tmp_path, capsys, trained):
    out = _copy_run(trained, tmp_path / "run")
    ck = out / "last.pt"
    assert isinstance(runs.load_checkpoint(ck)["model"], dict)
    _flip_a_tensor_bit(ck)
    torch.load(ck, weights_only=True)  # torch itself loads it silently
    with pytest.raises(runs.CheckpointError, match="corrupt checkpoint"):
        runs.load_checkpoint(ck)
    for argv in (["evaluate", out], ["export", out, "-o", tmp_path / "m.sbnn"],
                 ["train", "--resume", out]):
        err = _exit2_one_line(argv, capsys)
        assert "corrupt checkpoint" in err, (argv, err)
    assert not (tmp_path / "m.sbnn").exists()


def test_old_checkpoint_without_checksum_loads_with_a_note(tmp_path, capsys, trained):
    out = _copy_run(trained, tmp_path / "run")
    ck = torch.load(out / "last.pt", weights_only=True)
    assert len(ck.pop("sbnn_sha256")) == 64
    torch.save(ck, out / "old.pt")  # what an older sbnn wrote
    again = runs.load_checkpoint(out / "old.pt")
    assert "integrity" in capsys.readouterr().err
    assert runs.payload_sha256(again) == runs.payload_sha256(ck)
    runs.load_model(out / "old.pt")


def test_checksum_covers_every_tensor_and_value():
    a = {"model": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3, dtype=torch.bool)},
         "epoch": 1, "rng": (1, [2, 3], None), "lr": 0.1}
    h = runs.payload_sha256(a)
    for change in (lambda d: d["model"]["w"].view(-1)[4].add_(2 ** -20),
                   lambda d: d["model"]["b"].view(-1)[0].fill_(True),
                   lambda d: d.__setitem__("epoch", 2),
                   lambda d: d["model"].__setitem__("w", d["model"]["w"].reshape(3, 2)),
                   lambda d: d["model"].__setitem__("w", d["model"]["w"].double()),
                   lambda d: d.__setitem__("lr", 0.1000000001)):
        b = {"model": {k: v.clone() for k, v in a["model"].items()}, "epoch": 1,
             "rng": (1, [2, 3], None), "lr": 0.1}
        assert runs.payload_sha256(b) == h
        change(b)
        assert runs.payload_sha256(b) != h


def test_bit_flipped_sbnn_is_refused(tmp_path, capsys):
    from sbnn import models
    from sbnn.deploy.export import export

    good = tmp_path / "m.sbnn"
    torch.manual_seed(0)
    export(models.create("fmnist_cnn", width=8).eval(), good, (1, 28, 28), check=False)
    raw = bytearray(good.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    bad = tmp_path / "bad.sbnn"
    bad.write_bytes(bytes(raw))
    for argv in (["summary", bad], ["bench", bad]):
        _exit2_one_line(argv, capsys)


# --------------------------------------------------------------------------------------------
# item 9: Ctrl-C and SIGTERM; kill -9 during export and convert
# --------------------------------------------------------------------------------------------

def test_interrupt_before_the_first_checkpoint(tmp_path, data_root, capsys, monkeypatch):
    import sbnn.pipeline.train as strain

    def ctrl_c(self, epoch, bar=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(strain.Trainer, "train_epoch", ctrl_c)
    out = tmp_path / "run"
    rc = cli.main(["train", *_tiny_args(data_root), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 130 and len(err.splitlines()) == 1 and "nothing was kept" in err, err
    assert not out.exists()


def test_interrupt_after_a_checkpoint_names_the_resume_command(tmp_path, data_root, capsys,
                                                                monkeypatch):
    import sbnn.pipeline.train as strain

    real = strain.Trainer.train_epoch

    def ctrl_c_in_epoch_2(self, epoch, bar=None):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch, bar)

    monkeypatch.setattr(strain.Trainer, "train_epoch", ctrl_c_in_epoch_2)
    out = tmp_path / "run"
    rc = cli.main(["train", *_tiny_args(data_root, epochs=2), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 130 and len(err.splitlines()) == 1, err
    assert err.endswith(f"sbnn train --resume {out}") and "epoch 1/2" in err
    assert runs.load_checkpoint(out)["epoch"] == 1 and not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    strain.train(None, resume=out)
    assert runs.load_checkpoint(out)["epoch"] == 2


def test_sigterm_ends_training_like_ctrl_c(tmp_path, data_root, capsys, monkeypatch):
    import sbnn.pipeline.train as strain

    real = strain.Trainer.train_epoch

    def term_in_epoch_2(self, epoch, bar=None):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (the main) thread
            time.sleep(5)  # the handler raises before this ends
        return real(self, epoch, bar)

    monkeypatch.setattr(strain.Trainer, "train_epoch", term_in_epoch_2)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    rc = cli.main(["train", *_tiny_args(data_root, epochs=2), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 130 and len(err.splitlines()) == 1, err
    assert f"sbnn train --resume {out}" in err
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_training_exit_130_one_line(tmp_path, data_root, sig):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "sbnn.cli", "train",
                             *_tiny_args(data_root, epochs=500), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=_env())
    try:
        deadline = time.time() + 240
        while not (out / "last.pt").exists() and time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(sig)
        err = proc.communicate(timeout=120)[1].strip()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert len(err.splitlines()) == 1 and f"sbnn train --resume {out}" in err, err
    assert runs.load_checkpoint(out)["epoch"] >= 1 and not list(out.glob(".*.tmp"))


_KILLER = """
import os, signal, sys
from sbnn import cli
k, after, target, n = int(sys.argv[1]), sys.argv[2] == "after", sys.argv[3], [0]
real = os.{fn}
def hook(*a, **kw):
    n[0] += 1
    hit = n[0] == k or (k == 0 and len(a) > 1 and os.fspath(a[1]) == target)
    if hit and not after:
        os.kill(os.getpid(), signal.SIGKILL)
    out = real(*a, **kw)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
os.{fn} = hook
sys.exit(cli.main(sys.argv[4:]))
"""


def _killed(fn: str, k: int, after: bool, target, argv) -> subprocess.CompletedProcess:
    """Run ``sbnn ARGV`` and SIGKILL it at the k-th call of ``os.FN`` (k = 0: at the call whose
    destination is ``target``), before or after the call."""
    return subprocess.run([sys.executable, "-c", _KILLER.format(fn=fn), str(k),
                           "after" if after else "before", str(target), *map(str, argv)],
                          capture_output=True, text=True, env=_env(), timeout=300)


@pytest.mark.slow  # a real process: ~4 s of CPU
def test_kill_9_during_export_leaves_no_file_or_a_complete_one(tmp_path, trained):
    from sbnn_runtime.fileformat import load

    target = tmp_path / "m.sbnn"
    argv = ["export", trained, "-o", target]
    r = _killed("replace", 0, False, target, argv)  # the data is written, not yet renamed
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not target.exists()
    # what is left is the hidden temporary file of the interrupted write, never a torn target
    assert all(p.name.startswith(".m.sbnn.") and p.name.endswith(".tmp")
               for p in tmp_path.iterdir())
    assert cli.main([str(a) for a in argv]) == 0
    load(target)


@pytest.mark.slow
def test_kill_9_right_after_the_export_rename_leaves_a_complete_file(tmp_path, trained):
    from sbnn_runtime.fileformat import load

    target = tmp_path / "m.sbnn"
    r = _killed("replace", 0, True, target, ["export", trained, "-o", target])
    assert r.returncode == -signal.SIGKILL, r.stderr  # renamed, the folder not yet fsynced
    load(target)  # complete


@pytest.fixture(scope="module")
def float_ckpt(tmp_path_factory, data_root):
    import sbnn.pipeline.train as strain

    out = tmp_path_factory.mktemp("f") / "fp"
    cfg = tiny_cfg(data_root)
    strain.train(replace(cfg, model=replace(cfg.model, name="fmnist_cnn_fp")), out=out)
    return out / "last.pt"


def _convert_argv(ckpt, out, root):
    return ["convert", ckpt, "--ones", "0.1", "--out", out, "--no-progress", "--device", "cpu",
            "--data", root]


def _complete_convert_run(out: Path) -> None:
    assert json.loads((out / "report.json").read_text())["convert"]["ones"] == 0.1
    assert runs.load_checkpoint(out)["convert"]["ones"] == 0.1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow  # a real process: ~4 s of CPU
def test_kill_9_during_convert_leaves_no_folder_or_a_complete_one(tmp_path, float_ckpt,
                                                                  data_root):
    out = tmp_path / "conv"
    argv = _convert_argv(float_ckpt, out, data_root)
    r = _killed("replace", 0, False, out, argv)  # at the final rename of .conv.tmp-PID
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not out.exists() and len(list(tmp_path.glob(".conv.tmp-*"))) == 1
    assert cli.main([str(a) for a in argv]) == 0  # the dead process's folder is removed
    _complete_convert_run(out)
    assert not list(tmp_path.glob(".conv.tmp-*"))


@pytest.mark.slow
def test_kill_9_at_every_write_of_convert(tmp_path, float_ckpt, data_root):
    """A kill before and after each os.replace of ``sbnn convert`` (its atomic file writes,
    then the folder's rename): no out folder, or a complete run."""
    out = tmp_path / "conv"
    argv = _convert_argv(float_ckpt, out, data_root)
    outcomes = []
    for k in range(1, 12):
        for after in (False, True):
            r = _killed("replace", k, after, "-", argv)
            if r.returncode == 0:  # fewer calls than k: the run finished
                _complete_convert_run(out)
                outcomes.append("done")
                break
            assert r.returncode == -signal.SIGKILL, r.stderr
            if out.exists():
                _complete_convert_run(out)
                outcomes.append("complete")
                break
            outcomes.append("none")
        if out.exists():
            break
    assert "none" in outcomes and outcomes[-1] in ("complete", "done"), outcomes


@pytest.mark.parametrize("opt", [["--threads", "100000"], ["--device", "meta"],
                                 ["--device", "cuda:99"]])
def test_convert_refuses_impossible_threads_and_devices(tmp_path, capsys, opt):
    err = _exit2_one_line(["convert", tmp_path / "none.pt", "--ones", "0.1", "--out",
                           tmp_path / "c", *opt], capsys)
    assert opt[0] in err and not (tmp_path / "c").exists()


def test_report_best_epoch_after_resuming_an_older_checkpoint(tmp_path, data_root,
                                                              monkeypatch):
    """Item 11: report.json's best_epoch was assigned twice, the second (None for a checkpoint
    without best_epoch) overwriting the first (the epoch found in metrics.jsonl)."""
    import sbnn.pipeline.train as strain

    accs = iter([0.9, 0.5])  # epoch 1 is the best
    real = strain.evaluate_loader

    def scripted(model, loader):
        return {**real(model, loader), "accuracy": next(accs)}

    monkeypatch.setattr(strain, "evaluate_loader", scripted)
    out = tmp_path / "run"
    strain.train(tiny_cfg(data_root, epochs=2), out=out, stop_after=1)
    ck = runs.load_checkpoint(out)
    del ck["best_epoch"]  # what an older sbnn wrote
    runs.save_checkpoint(ck, out / "last.pt")
    report = strain.train(None, resume=out)
    assert report["best_epoch"] == 1 == runs.load_checkpoint(out, "best")["epoch"]
    assert json.loads((out / "report.json").read_text())["best_epoch"] == 1
