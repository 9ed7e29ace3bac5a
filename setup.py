"""The Extension list; everything else lives in pyproject.toml.

Two build options, read from the environment:

- ``LATCHWIRE_WERROR=1``: C compiler warnings and Cython warnings are errors
  (CI builds this way).
- ``LATCHWIRE_SANITIZE=address,undefined`` (any list ``clang -fsanitize=``
  takes, e.g. ``address,undefined,fuzzer-no-link`` for atheris): ``_core`` is
  compiled and linked by clang with those sanitizers, every report fatal. The
  runtime is not linked in: the interpreter must ``LD_PRELOAD`` it (see the
  README's Development section).
"""

import os

from Cython.Build import cythonize
from Cython.Compiler import Options
from setuptools import Extension, setup

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "embedsignature": True,
    "embedsignature.format": "python",
    "autotestdict": False,
    # Shared state is guarded by C locks and atomics, never the GIL (see _core.pyx):
    # a free-threaded interpreter keeps the GIL off when it imports latchwire.
    "freethreading_compatible": True,
}

WERROR = os.environ.get("LATCHWIRE_WERROR") == "1"
SANITIZE = os.environ.get("LATCHWIRE_SANITIZE", "")

compile_args = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-Wno-missing-field-initializers"]
link_args: list[str] = []
if WERROR:
    compile_args.append("-Werror")
    Options.warning_errors = True
if SANITIZE:
    os.environ.setdefault("CC", "clang")
    os.environ.setdefault("LDSHARED", "clang -shared")
    sanitize = [f"-fsanitize={SANITIZE}", "-fno-sanitize-recover=all"]
    compile_args += [*sanitize, "-O1", "-g", "-fno-omit-frame-pointer"]
    link_args += sanitize

extensions = [
    Extension(
        "latchwire._core",
        ["src/latchwire/_core.pyx"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        libraries=["rt"],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        build_dir="build/cython",
        include_path=["src"],
        compiler_directives=DIRECTIVES,
        force=WERROR,  # Cython warnings only show when it translates: translate every time
    ),
)
