"""Sphinx configuration: the API reference from the docstrings, the Markdown pages through
MyST. Build: ``python -m sphinx -W -b html docs docs/_build/html`` (warnings are errors; the
test suite builds it so)."""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "qgfd-pyg"
author = "the qgfd-pyg authors"
copyright = "2026, the qgfd-pyg authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the docstrings say the types, as PyG's do
autodoc_default_options = {"members": True, "show-inheritance": False}
# optional packages whose absence must not break the reference of the modules that use them
autodoc_mock_imports = ["triton", "transformers", "numba"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

myst_heading_anchors = 3
# The Markdown pages link files of the repository (result tables, scripts) for readers of the
# source tree; they are not pages of this site.
suppress_warnings = ["myst.xref_missing"]

html_theme = "alabaster"
html_title = "qgfd-pyg"
