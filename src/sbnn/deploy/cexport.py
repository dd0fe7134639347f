"""Deprecated: the C99 export moved into the runtime, :mod:`sbnn_runtime.lower_c` (numpy only).

This shim forwards to it for one release and warns (``DeprecationWarning``) on import::

    from sbnn_runtime.lower_c import export_c, generate_c   # instead of sbnn.deploy.cexport

``format_summary`` is gone: :func:`sbnn_runtime.lower_c.format_sizes` prints the C sizes and
:func:`sbnn_runtime.summary.format_summary` the graph. See ``CHANGELOG.md``.
"""

from __future__ import annotations

import warnings

from sbnn_runtime.lower_c import BINARY_FORMATS, CExportError, CModel, export_c, generate_c

__all__ = ["CExportError", "BINARY_FORMATS", "CModel", "generate_c", "export_c"]

warnings.warn("sbnn.deploy.cexport moved to sbnn_runtime.lower_c (torch-free); this alias goes "
              "in the next release", DeprecationWarning, stacklevel=2)
