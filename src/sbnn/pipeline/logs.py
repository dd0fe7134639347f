"""Progress of a training loop for humans and for machines.

:class:`RunLog` stands where a tqdm bar stood (``set_postfix``, ``update``, ``write``,
``set_description``, ``close``), so :func:`sbnn.pipeline.train.run_epoch` advances it per batch
unchanged. On a terminal it draws a tqdm bar. Off a terminal (a log file, a pipe, CI) there is
no bar, so no carriage returns: one line per epoch, written by the caller through
:meth:`RunLog.write`, and one line every ``every`` steps when ``every > 0``. With ``json_path``
each event is also appended to that file as one JSON object per line (``{"event": "step",
"time": ..., ...}``): ``start``, ``step`` (every ``every`` steps), ``epoch``, ``warning`` and
``end``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

__all__ = ["RunLog", "is_terminal"]


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stderr, where the bar goes) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file
        return False


class RunLog:
    """Progress of ``total`` steps (``initial`` already done, after a resume).

    Args:
        total, initial: steps of the whole run and those already done.
        progress: allow a bar (it is drawn only when ``stream`` is a terminal).
        every: a plain line (and a ``step`` event) every ``every`` steps; 0: none.
        json_path: append machine-readable events to this file (None: no events).
        desc: what the bar and the step lines are called (``train``, ``fine-tune``).
        stream: where lines and the bar go (default: stdout for lines, stderr for the bar).
    """

    def __init__(self, total: int, initial: int = 0, *, progress: bool = True, every: int = 0,
                 json_path: str | None = None, desc: str = "train",
                 stream: TextIO | None = None):
        self.total, self.step, self.every, self.desc = total, initial, every, desc
        self.stream = stream
        self.post: dict[str, Any] = {}
        self.bar = None
        if progress and is_terminal(stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, desc=desc,
                            file=stream)
        self._json = open(json_path, "a", encoding="utf-8") if json_path else None  # noqa: SIM115

    # -- the tqdm face --------------------------------------------------------------------------
    def set_description(self, text: str) -> None:
        self.desc_now = text
        if self.bar is not None:
            self.bar.set_description(text)

    def set_postfix(self, post: dict[str, Any], refresh: bool = False) -> None:
        self.post = dict(post)
        if self.bar is not None:
            self.bar.set_postfix(post, refresh=refresh)

    def update(self, n: int = 1) -> None:
        self.step += n
        if self.bar is not None:
            self.bar.update(n)
        if self.every > 0 and self.step % self.every == 0:
            text = ", ".join(f"{k} {v}" for k, v in self.post.items())
            where = getattr(self, "desc_now", self.desc)
            self.write(f"step {self.step}/{self.total} ({where})" + (f": {text}" if text else ""))
            self.event("step", step=self.step, total=self.total,
                       **{k: _number(v) for k, v in self.post.items()})

    def write(self, msg: str) -> None:
        """One line of text, above the bar when there is one."""
        if self.bar is not None:
            self.bar.write(msg, file=self.stream)
        else:
            print(msg, file=self.stream or sys.stdout, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._json is not None:
            self._json.close()
            self._json = None

    # -- events ---------------------------------------------------------------------------------
    def event(self, name: str, /, **fields: Any) -> None:
        """Append ``{"event": name, "time": <unix seconds>, **fields}`` to the JSON log."""
        if self._json is None:
            return
        row = {"event": name, "time": round(time.time(), 3), **fields}
        self._json.write(json.dumps(row, default=_plain) + "\n")
        self._json.flush()


def _number(v: Any) -> Any:
    """The bar's postfix holds formatted strings; events carry numbers."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _plain(v: Any) -> Any:
    """JSON for what json cannot write itself (paths, numpy scalars)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)
