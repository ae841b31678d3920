"""The reference portal (Starlette). Its routes that the kit's other processes call are named here,
where importing them loads nothing else."""

DURABLE_PATH = "/_edgehost/durable"  # durable-ack figures and read-only state, for the supervisor (portal/durable.py)
