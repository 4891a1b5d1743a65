// The test host's side of MCP Apps, from the official package: bundled by
// tests/card_host.py (esbuild, at test time) into the host page as window.ExtAppsHost.
import { AppBridge, PostMessageTransport } from "@modelcontextprotocol/ext-apps/app-bridge";

window.ExtAppsHost = { AppBridge, PostMessageTransport };
