"""edgehost: run a small portal on a Mac mini with SQLite, Litestream and Cloudflare, without fearing for its data."""

__version__ = "0.1.0"
