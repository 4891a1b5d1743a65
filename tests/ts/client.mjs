// Drives a nexus-bridge server with the official TypeScript MCP SDK client.
//
// Usage: node client.mjs <mcp-url>   (bearer token, if any, in NEXUS_BRIDGE_TOKEN)
//
// Prints ONE JSON object on stdout describing what it observed; exits non-zero (error on stderr)
// on any exception. tests/e2e/test_typescript_client.py makes the assertions.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const url = process.argv[2];
if (!url) {
  process.stderr.write("usage: node client.mjs <mcp-url>\n");
  process.exit(2);
}
const token = process.env.NEXUS_BRIDGE_TOKEN;

function textOf(result) {
  return (result.content ?? [])
    .filter((block) => block.type === "text")
    .map((block) => block.text)
    .join("\n");
}

async function call(client, name, args) {
  const result = await client.callTool({ name, arguments: args });
  if (result.isError) {
    throw new Error(`${name} failed: ${textOf(result)}`);
  }
  if (result.structuredContent === undefined) {
    throw new Error(`${name} returned no structuredContent: ${JSON.stringify(result)}`);
  }
  return result.structuredContent;
}

async function main() {
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: token ? { headers: { Authorization: `Bearer ${token}` } } : undefined,
  });
  const client = new Client({ name: "nexus-bridge-ts-e2e", version: "0.0.0" });
  await client.connect(transport);
  try {
    const observed = {
      server: client.getServerVersion() ?? null,
      protocolVersion: transport.protocolVersion ?? null,
      sessionId: transport.sessionId ?? null,
    };
    const { tools } = await client.listTools();
    observed.tools = tools.map((tool) => tool.name).sort();

    const text = `ts-e2e task ${process.pid}-${Date.now()}`;
    observed.text = text;
    observed.send1 = await call(client, "send_message", { message: text });
    observed.send2 = await call(client, "send_message", { message: text });
    const id = observed.send1.id;
    observed.pull = await call(client, "pull_updates", {});
    observed.status = await call(client, "queue_status", {});
    observed.get = await call(client, "get_message", { id });
    observed.list = await call(client, "list_messages", {});
    observed.cancel = await call(client, "cancel_message", { id, reason: "ts e2e test" });

    const bad = await client.callTool({ name: "send_message", arguments: { message: "" } });
    observed.bad = { isError: bad.isError === true, text: textOf(bad) };

    process.stdout.write(`${JSON.stringify(observed)}\n`);
  } finally {
    await client.close();
  }
}

main().catch((error) => {
  process.stderr.write(`${error?.stack ?? error}\n`);
  if (error?.code !== undefined) {
    process.stderr.write(`error code: ${error.code}\n`);
  }
  process.exitCode = 1;
});
