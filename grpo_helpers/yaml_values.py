"""YAML read with numbers as people type them: `lr: 1e-5` is the float 1e-05, not the string '1e-5'.

PyYAML follows YAML 1.1, whose floats need a dot and a signed exponent (`1.0e-5`), so the way everyone writes a
learning rate (`1e-5`, `5E-7`, `1.0e3`) came back as a string and the config refused it as "not a number". Every
place a user types a value (config files, parameter files, `--set`, `-p`) reads it through `load_yaml`, which adds
YAML 1.2's float forms to PyYAML's safe loader and changes nothing else.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class NumberLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 floats in scientific notation without a dot or an exponent sign."""


# Digits with an optional dot, then an exponent: 1e-5, 5E-7, 1.0e+3, 1.e3, .5e2 (YAML 1.1's own forms still match
# its resolver first or this one; both construct the same float).
NumberLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """A YAML document (a config or parameter file) with numbers read as typed; raises yaml.YAMLError when invalid."""
    return yaml.load(text, Loader=NumberLoader)  # a SafeLoader: no Python objects are built


def command_line_value(text: str, *, option: str) -> Any:
    """One VALUE typed after an option (`--set lr 1e-6`, `-p seed 7`), read as YAML with numbers as typed; invalid
    YAML stops the command with one line naming the option and the value."""
    try:
        return load_yaml(text)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SystemExit(f"{option} {text!r} is not valid YAML ({problem}): write a number, true/false, a [list], "
                         f"a {{mapping}}, or quote a string (\"'{text}'\" in the shell)") from None
