"""Reading the YAML files users write (litestream.yml, cloudflared's config.yml) with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edgehost.errors import BadInput


def read_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file; a missing, unreadable, non-UTF-8 or malformed file is BadInput naming it.

    An empty file reads as {}; `what` names the file in the not-found message.
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise BadInput(f"{path}: {what} not found") from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())  # PyYAML's reader errors span lines
        raise BadInput(f"{path}: invalid YAML{at}: {problem}") from None
    return {} if data is None else data
