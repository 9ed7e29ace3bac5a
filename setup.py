"""The Extension list; everything else lives in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "embedsignature": True,
    "embedsignature.format": "python",
    "autotestdict": False,
}

extensions = [
    Extension(
        "latchwire._core",
        ["src/latchwire/_core.pyx"],
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                            "-Wno-missing-field-initializers"],
        libraries=["rt"],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        build_dir="build/cython",
        include_path=["src"],
        compiler_directives=DIRECTIVES,
    ),
)
