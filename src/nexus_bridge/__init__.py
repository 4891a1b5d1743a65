"""nexus-bridge: a durable task queue and MCP server between claude.ai and an agent."""

__version__ = "0.1.0"
