"""Reading a YAML file that must hold a mapping (scenarios, calibration files, plan
spaces), with one error shape for all: the file, the line and the fix."""

from __future__ import annotations

from pathlib import Path

import yaml

from seersim.errors import SeersimError


def read_yaml_mapping(path: str | Path, error: type[SeersimError], kind: str, missing_hint: str, what: str) -> dict:
    """The mapping in a YAML file; `error` names the file (and the line of a syntax error).

    `kind` names the file in messages ("scenario file"), `missing_hint` says what to pass
    when it does not exist, `what` says what a file that is not a mapping should hold.
    """
    p = Path(path)
    if not p.is_file():
        raise error(f"{kind} '{p}' not found; {missing_hint}")
    try:
        data = yaml.safe_load(p.read_text())
    except UnicodeDecodeError:
        raise error(f"{p}: not a text file (UTF-8 YAML expected); {missing_hint}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{p}: malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict) or not data:
        raise error(f"{p}: {what}")
    return data
