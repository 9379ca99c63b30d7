"""A griffe extension for the docs build: jaxbp's docstrings head their doctests
``Example:`` (Google style allows it); griffe renders only ``Examples:`` as code,
so rename the heading while the API reference is built. Source files are untouched."""

import re

import griffe

_HEADING = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Treats an ``Example:`` section like ``Examples:`` (doctest lines as code)."""

    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
