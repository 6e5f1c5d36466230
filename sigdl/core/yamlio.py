"""The one YAML loader of SigDL: recipes, loop configs and target profiles all go through it.

    data = load_yaml_file("my-recipe.yaml")          # YamlError (an InputError) when refused
    text = dump_yaml(data)                           # never writes an anchor this refuses

`yaml.safe_load` runs no code but expands aliases: a "billion laughs" file of a few hundred
bytes becomes gigabytes in memory, and a message that quotes it gigabytes of text. This loader
refuses anchors and aliases outright (no SigDL file needs them), caps the file's size and
nesting depth, and words every refusal as one short line naming the file and the line.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from yaml.events import AliasEvent

from sigdl.core.errors import InputError, one_line

MAX_YAML_BYTES = 1 << 20  # 1 MiB: a recipe or profile is a few KiB
MAX_DEPTH = 32  # nested mappings/lists; SigDL's files nest 4 deep


class YamlError(InputError):
    """A YAML file that is too large, malformed, uses anchors/aliases or nests too deep."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases and bounds the nesting depth while it
    composes the node tree, before any value is constructed."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, AliasEvent) or getattr(event, "anchor", None) is not None:
            line = event.start_mark.line + 1
            raise YamlError(f"anchors and aliases are not accepted (line {line})")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                line = event.start_mark.line + 1
                raise YamlError(f"nested deeper than {MAX_DEPTH} levels (line {line})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str | bytes, where: str = "<yaml>") -> object:
    """The plain Python value of one YAML document (None when empty); YamlError when refused.
    Every message starts with `where` and is one line."""
    if len(text) > MAX_YAML_BYTES:
        raise YamlError(f"{where}: {len(text)} bytes, expected at most {MAX_YAML_BYTES}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise YamlError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    loader = None
    try:
        loader = _BoundedLoader(text)  # its reader already refuses control characters
        return loader.get_single_data()
    except YamlError as exc:
        raise YamlError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise YamlError(f"{where}: not valid YAML{_position(exc)}") from None
    except RecursionError:
        raise YamlError(f"{where}: nested too deep") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml_file(path: str | Path, where: str | None = None) -> object:
    """`load_yaml` of a file, read only up to the size cap (a huge file is refused unread)."""
    where = where or str(path)
    try:
        with open(path, "rb") as stream:
            blob = stream.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise YamlError(f"{where}: cannot be read ({exc.strerror})") from None
    if len(blob) > MAX_YAML_BYTES:
        raise YamlError(f"{where}: larger than {MAX_YAML_BYTES} bytes; refused")
    return load_yaml(blob, where)


class _NoAliasDumper(yaml.SafeDumper):
    """SafeDumper that writes an object seen twice in full, never as an anchor and alias."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def dump_yaml(data: object) -> str:
    """YAML that `load_yaml` reads back: PyYAML writes a shared object (one dict placed in two
    steps) as an anchor and aliases, which the loader refuses."""
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False)


def _position(exc: yaml.YAMLError) -> str:
    """' at line N (problem)' from PyYAML's error, its problem text cut short."""
    mark = getattr(exc, "problem_mark", None)
    line = f" at line {mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None)
    return f"{line} ({one_line(problem, 80)})" if problem else line
