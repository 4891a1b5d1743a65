"""The owner's console: web pages under ``/console`` to see and steer the queue from a browser."""

from nexus_bridge.console.routes import ConsoleDeps, console_deps, console_routes

__all__ = ["ConsoleDeps", "console_deps", "console_routes"]
