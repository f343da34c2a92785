"""The ``unite-search`` command line. Thin: each command maps onto the Python API.

One module a family of commands, each registering on the group :func:`main` from ``_common``:
``encode`` (embed, compare), ``index`` (ingest, query, info, serve), ``train`` (finetune, merge,
pairs), ``bench``.
"""

from . import bench, encode, index, train  # noqa: F401  each registers its commands on main
from ._common import main, parse_input

__all__ = ["main", "parse_input"]
