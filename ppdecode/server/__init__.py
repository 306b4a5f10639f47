"""An OpenAI-compatible HTTP server for a PPD engine: ``create_app(engine, ServerConfig())``."""

from ppdecode.server.app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]
