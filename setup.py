# The package is described in setup.cfg; this shim serves tools that still call setup.py.
from setuptools import setup

setup()
