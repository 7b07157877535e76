"""`python -m api [--host H] [--port P] [--workers N]`: what `eos serve` runs."""

from __future__ import annotations

import argparse

import uvicorn


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1, log_level: str = "info") -> None:
    """Serve api.app:create_app with uvicorn; settings come from EOS_* environment variables."""
    uvicorn.run("api.app:create_app", factory=True, host=host, port=port, workers=workers, log_level=log_level)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m api", description="Serve the eos HTTP API.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.workers, args.log_level)


if __name__ == "__main__":
    main()
