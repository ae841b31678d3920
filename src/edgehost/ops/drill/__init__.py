"""`edgehost drill`: the whole disaster rehearsal.

Restore every database the replica holds into an empty scratch data dir (as on a new machine), check
each one, boot the portal on the restored data on a scratch port, compare its answers with the live
data, and measure RTO (restore start -> portal healthy on restored data) and RPO per database.

RPO comes from what the restore actually held: the live databases are read at the instant the
restore point is decided (right after the one listing of the replica that fixes each database's
txid), and the rows the restored copy lacks from that snapshot date how much a real recovery would
have lost. A gap beyond `lag_alert_seconds` fails the drill, whatever else passed.
"""

from edgehost.ops.drill.compare import (DEFAULT_TABLES, LivePin, Staleness, Tables, compare_content, compare_overwrites,
                                        measure_staleness, pin_live)
from edgehost.ops.drill.report import KEPT_MARKER, STALE_SCRATCH_SECONDS, DrillDatabase, DrillReport, keep_reports, render_markdown, save
from edgehost.ops.drill.scenarios import accidental_delete, prune_scratch, run_drill

__all__ = ["DEFAULT_TABLES", "KEPT_MARKER", "STALE_SCRATCH_SECONDS", "DrillDatabase", "DrillReport", "LivePin", "Staleness",
           "Tables", "accidental_delete", "compare_content", "compare_overwrites", "keep_reports", "measure_staleness",
           "pin_live", "prune_scratch", "render_markdown", "run_drill", "save"]
