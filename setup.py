"""Build the native parts (the restart stub and the C helpers) into the package, so that
`pip install .` and `pipx install .` give a working gdbckpt-batch: they land in
gdbckpt/_native/ beside the Python code. A checkout uses native/ (`make native`)."""

import os
import shutil
import subprocess
import tempfile

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

NATIVE = ("gdbckpt-stub", "libckpthelp.so")


class BuildWithNative(build_py):
    def run(self):
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        out = os.path.join(self.build_lib, "gdbckpt", "_native")
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "native")
            shutil.copytree(os.path.join(here, "native"), src,
                            ignore=shutil.ignore_patterns(*NATIVE))
            subprocess.check_call(["make", "-s", "-C", src])
            for name in NATIVE:
                shutil.copy2(os.path.join(src, name), os.path.join(out, name))


class NativeDistribution(Distribution):
    """Binaries inside: a wheel for this platform, not a pure-Python one."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildWithNative}, distclass=NativeDistribution)
