"""How the bridge gets pycapnp and grain.capnp, inside the grain or in the fork server.

Owns: importing pycapnp from its own mounted directory (`load_capnp`) and the schema the fork
server parses once before forking (`PRELOADED_SCHEMA`, `preload_schema`).
Trusts: the directory grainmgr mounts pycapnp at (the config's `capnp_package`) and this
package's schema/grain.capnp.
Never: imports anything but the standard library (and pycapnp, from where it is told); is
imported by anything but the bridge and the fork server.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any


def load_capnp(package_dir: str) -> Any:
    """Import pycapnp from its own directory, the only part of the venv mounted in the grain.

    Not via sys.path: Landlock lets the grain read the package directory but not list its
    parent (site-packages), and Python's path finder needs to list the parent.
    """
    if "capnp" in sys.modules:  # run in the init: the fork server imported it before forking
        return sys.modules["capnp"]
    spec = importlib.util.spec_from_file_location(
        "capnp", os.path.join(package_dir, "__init__.py"), submodule_search_locations=[package_dir]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"no pycapnp at {package_dir}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["capnp"] = module
    spec.loader.exec_module(module)
    return module


# grain.capnp as the fork server parsed it before forking (`preload_schema`); None in a bridge
# exec'd as a script, which loads the config's `schema` itself.
PRELOADED_SCHEMA: Any = None


def preload_schema() -> None:
    """Parse grain.capnp once, in the fork server: a bridge run in the init (`run_in_init`)
    then skips the parse (≈3 ms of CPU beside the app's start, at every cold start). The file
    is this package's schema/grain.capnp, the one grainmgr mounts into every grain as the
    config's `schema` (grains.RUNTIME_INSIDE): the same bytes either way."""
    global PRELOADED_SCHEMA
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema", "grain.capnp")
    try:
        PRELOADED_SCHEMA = load_capnp("").load(path)
    except Exception:  # each bridge then loads (and reports a failure of) the config's own
        PRELOADED_SCHEMA = None
