"""Build of the optional C extension (the book engine, `recorder/session/_engine.pyx`).

Everything else is in pyproject.toml. The extension is optional: where it cannot be built (no C
compiler), the install still succeeds and `recorder/session/book.py` runs its pure-Python classes.
The source's sha256 is compiled in, so that a build older than its .pyx is never adopted.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "recorder/session/_engine.pyx"


def extensions() -> list:
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    sha = hashlib.sha256(Path(__file__).with_name("recorder").joinpath("session", "_engine.pyx").read_bytes()).hexdigest()
    ext = Extension(
        "recorder.session._engine",
        [SOURCE],
        define_macros=[("RECORDER_ENGINE_SHA256", f'"{sha}"')],
        extra_compile_args=["-O2"],
        optional=True,
    )
    return cythonize([ext], language_level=3, quiet=True)


setup(ext_modules=extensions())
