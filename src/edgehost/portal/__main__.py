"""`python -m edgehost.portal`: the reference portal without the CLI's imports (what `edgehost up` runs)."""

import sys

from ..errors import EdgehostError
from ..settings import load_settings
from .app import serve

try:
    serve(load_settings())
except EdgehostError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(int(exc.status))
