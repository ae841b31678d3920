from edgehost.cli import run

run()
