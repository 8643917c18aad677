"""Build wsproxy's Cython accelerators (ext/*.pyx -> wsproxy._ext.*).

Environment knobs (aiohttp/websockets style):
  WSPROXY_NO_EXTENSIONS=1       pure-Python build: no extension is compiled
  WSPROXY_REQUIRE_EXTENSIONS=1  a failed compile fails the install (CI sets this)
  WSPROXY_CYTHON_ANNOTATE=1     write ext/*.html annotation reports (cython -a)
"""

import glob
import os
import platform
import sys

from setuptools import setup

NO_EXTENSIONS = bool(os.environ.get("WSPROXY_NO_EXTENSIONS")) or platform.python_implementation() != "CPython"
REQUIRE = bool(os.environ.get("WSPROXY_REQUIRE_EXTENSIONS"))


def extensions():
    if NO_EXTENSIONS:
        print("*** wsproxy: pure-Python build (WSPROXY_NO_EXTENSIONS) ***", file=sys.stderr)
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    modules = []
    for pyx in sorted(glob.glob("ext/*.pyx")):
        stem = os.path.splitext(os.path.basename(pyx))[0]
        modules.append(
            Extension(
                f"wsproxy._ext.{stem}",
                [pyx],
                include_dirs=["ext/include"],
                depends=glob.glob("ext/include/*.h"),
                extra_compile_args=["-O3"],
                optional=not REQUIRE,
            )
        )
    print(f"*** wsproxy: accelerated build ({len(modules)} modules) ***", file=sys.stderr)
    annotate = bool(os.environ.get("WSPROXY_CYTHON_ANNOTATE"))
    return cythonize(
        modules,
        language_level=3,
        annotate=annotate,
        force=annotate,  # an up-to-date .c would otherwise skip the report
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )


setup(ext_modules=extensions())
