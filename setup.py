"""Builds the Cython extension ``apparate_trt._core`` over the C core in ``csrc/``.

Every ``csrc/*.c`` file except the C tests (``csrc/test_*.c``) is compiled into the extension.
"""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

c_sources = sorted(str(p) for p in Path("csrc").glob("*.c") if not p.name.startswith("test_"))

core = Extension(
    "apparate_trt._core",
    sources=["apparate_trt/_core.pyx", *c_sources],
    include_dirs=["csrc"],
    extra_compile_args=["-O3", "-std=c11"],
)

setup(ext_modules=cythonize([core], language_level=3))
