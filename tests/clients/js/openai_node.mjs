// openai-node against loopway: HTTP, SSE, and a ResponsesWS tool loop that sends only new items.
// Usage: node openai_node.mjs BASE_URL MODEL; prints one JSON object of what it saw.
import OpenAI from "openai";
import { ResponsesWS } from "openai/resources/responses/ws";

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "sk-test", maxRetries: 0 });
const readFile = {
  type: "function", name: "read_file", description: "Read a file of the repository", strict: true,
  parameters: { type: "object", properties: { path: { type: "string" } }, required: ["path"], additionalProperties: false },
};
const seen = {};

const plain = await client.responses.create({ model, input: "Say hello" });
seen.http = { status: plain.status, text: plain.output_text };

const stream = await client.responses.create({ model, input: "Say hello", stream: true });
seen.sse = [];
for await (const event of stream) seen.sse.push(event.type);

const ws = new ResponsesWS(client);
const completed = () => new Promise((resolve, reject) => {
  const onEvent = (event) => {
    if (event.type === "response.completed") { ws.off("event", onEvent); resolve(event.response); }
    if (event.type === "error") { ws.off("event", onEvent); reject(new Error(JSON.stringify(event))); }
  };
  ws.on("event", onEvent);
});
let waiting = completed();
ws.send({ type: "response.create", model, input: "Please read src/app.py", tools: [readFile], store: false });
const first = await waiting;
const call = first.output.find((item) => item.type === "function_call");
waiting = completed();
ws.send({
  type: "response.create", model, tools: [readFile], store: false, previous_response_id: first.id,
  input: [{ type: "function_call_output", call_id: call.call_id, output: "print('hello from app.py')" }],
});
const second = await waiting;
seen.ws = { call: [call.name, JSON.parse(call.arguments)], answer: second.output[0].content[0].text };
ws.close();
console.log(JSON.stringify(seen));
process.exit(0);
