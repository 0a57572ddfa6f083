"""Build of the optional C extension (the hot path's C build, `recorder/_engine.pyx`; see recorder/native.py).

Everything else is in pyproject.toml. The extension is optional: where it cannot be built (no C
compiler), the install still succeeds and the pure-Python classes run.
The source's sha256 is compiled in, so that a build older than its .pyx is never adopted.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "recorder/_engine.pyx"


def extensions() -> list:
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    sha = hashlib.sha256((Path(__file__).parent / SOURCE).read_bytes()).hexdigest()
    ext = Extension(
        "recorder._engine",
        [SOURCE],
        define_macros=[("RECORDER_ENGINE_SHA256", f'"{sha}"')],
        extra_compile_args=["-O2"],
    )
    built = cythonize([ext], language_level=3, quiet=True)
    for e in built:  # cythonize's copies drop `optional`: without it a missing compiler fails the install
        e.optional = True
    return built


setup(ext_modules=extensions())
