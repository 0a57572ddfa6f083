"""Build of the optional C extensions (the hot path's C builds; see recorder/native.py): every `.pyx`
in the package, `recorder/_engine.pyx` (the book engine, routing, raw log) and a venue's own
`recorder/venues/_<venue>.pyx` (its push reader), so a venue that ships one needs no edit here.

Everything else is in pyproject.toml. The extensions are optional: where they cannot be built (no C
compiler), the install still succeeds and the pure-Python code runs.
Each source's sha256 is compiled in, so that a build older than its .pyx is never adopted.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).parent


def extensions() -> list:
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    exts = []
    for pyx in sorted((ROOT / "recorder").rglob("*.pyx")):
        source = pyx.relative_to(ROOT)
        sha = hashlib.sha256(pyx.read_bytes()).hexdigest()
        exts.append(
            Extension(
                ".".join(source.with_suffix("").parts),
                [str(source)],
                define_macros=[("RECORDER_SOURCE_SHA256", f'"{sha}"')],
                extra_compile_args=["-O2"],
            )
        )
    built = cythonize(exts, language_level=3, quiet=True)
    for e in built:  # cythonize's copies drop `optional`: without it a missing compiler fails the install
        e.optional = True
    return built


setup(ext_modules=extensions())
