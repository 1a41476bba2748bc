"""The wheel's package list, discovered so that no subpackage can be left out.

Everything else is in pyproject.toml. A hand-written list once left out ``governor.profiler`` (a plain
``pip install .`` then crashed in ``devices``, ``profile`` and ``import-trace``). Every folder under
the three code packages is included, with or without an ``__init__.py``; ``configs/`` is added as
``dvfs_configs``, the one package whose import name differs from its folder, which discovery cannot
rename (``package-dir`` in pyproject.toml maps it). tests/test_packaging.py checks the built wheel
against the checkout.
"""

from setuptools import find_namespace_packages, setup

CODE_PACKAGES = ("dvfs_schema", "governor", "estimator", "sysfs_backends")

setup(
    packages=[
        *find_namespace_packages(
            include=[p for name in CODE_PACKAGES for p in (name, f"{name}.*")],
            exclude=["*.__pycache__", "*.__pycache__.*"],
        ),
        "dvfs_configs",
    ],
)
