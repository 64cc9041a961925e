"""Reading a YAML file that must hold a mapping (scenarios, calibration files, plan
spaces), with one error shape for all: the file, the line and the fix."""

from __future__ import annotations

from pathlib import Path

import yaml

from seersim.errors import SeersimError


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: YAML would keep the last
    silently, so a scenario that sets `cluster:` twice would run with half of what it says."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` merges keys that this mapping may override
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' is given twice (first at line {seen[key] + 1}); keep one", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml_mapping(path: str | Path, error: type[SeersimError], kind: str, missing_hint: str, what: str) -> dict:
    """The mapping in a YAML file; `error` names the file (and the line of a syntax error).

    `kind` names the file in messages ("scenario file"), `missing_hint` says what to pass
    when it does not exist, `what` says what a file that is not a mapping should hold.
    """
    p = Path(path)
    if not p.is_file():
        raise error(f"{kind} '{p}' not found; {missing_hint}")
    try:
        data = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)
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
