"""Package layout that pyproject.toml cannot state: the repository's ``conf/`` ships as ``speechcl.conf``.

Everything else about the package is in pyproject.toml. setuptools' package discovery finds only folders
under ``speechcl/``, so the config package and its group folders (``conf/model``, ...) are listed here.
"""

from setuptools import find_namespace_packages, find_packages, setup

CONF = ["speechcl.conf", *(f"speechcl.conf.{group}" for group in find_namespace_packages(where="conf"))]

setup(
    packages=[*find_packages(include=["speechcl", "speechcl.*"]), *CONF],
    package_dir={"speechcl.conf": "conf"},
    package_data={package: ["*.yaml"] for package in CONF},
)
