"""Build the native audio kernels.

Every ``native/<name>.pyx`` becomes the extension module ``engine._<name>``.
Bounds and wraparound checks stay on by default; a kernel switches them off
only around loops whose indices it has proven in range.

For development, ``VOXGATE_NATIVE=g711,jitter`` builds only the named kernels.
"""

from __future__ import annotations

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
only = {n.strip() for n in os.environ.get("VOXGATE_NATIVE", "").split(",") if n.strip()}

extensions = [
    Extension(
        f"engine._{pyx.stem}",
        [str(pyx.relative_to(HERE))],
        extra_compile_args=["-O3", "-g0"],
    )
    for pyx in sorted((HERE / "native").glob("*.pyx"))
    if not only or pyx.stem in only
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "embedsignature": True},
        include_path=["native"],  # shared .pxd helpers (native/pybuffer.pxd)
    ),
)
