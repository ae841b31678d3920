from edgehost.entry import run

run()
