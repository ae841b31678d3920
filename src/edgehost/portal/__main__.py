"""`python -m edgehost.portal`: the reference portal without the CLI's imports (what `edgehost up` runs)."""

import sys

from edgehost.errors import EdgehostError
from edgehost.settings import load_settings
from edgehost.portal.app import serve

try:
    serve(load_settings())
except EdgehostError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(int(exc.status))
