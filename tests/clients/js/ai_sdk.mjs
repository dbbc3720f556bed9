// The Vercel AI SDK (Responses API by default) against loopway: tools over several steps with
// generateText and streamText, then a second user turn with the default store, which sends the
// earlier assistant message as an item_reference. Usage: node ai_sdk.mjs BASE_URL MODEL.
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText, stepCountIs, tool } from "ai";
import { z } from "zod";

const [baseURL, model] = process.argv.slice(2);
const openai = createOpenAI({ baseURL, apiKey: "sk-test" });
const files = { "src/app.py": "print('hello from app.py')", "src/util.py": "def util(): return 42" };
const tools = {
  read_file: tool({
    description: "Read a file of the repository",
    inputSchema: z.object({ path: z.string() }),
    execute: async ({ path }) => files[path] ?? "no such file",
  }),
};
const seen = {};

const generated = await generateText({
  model: openai(model), tools, stopWhen: stepCountIs(5), prompt: "Please read src/app.py and src/util.py",
});
seen.generate = { steps: generated.steps.length, calls: generated.steps.flatMap((s) => s.toolCalls.map((c) => c.input.path)), text: generated.text };

const streamed = streamText({ model: openai(model), tools, stopWhen: stepCountIs(5), prompt: "Please read src/util.py" });
let text = "";
for await (const part of streamed.textStream) text += part;
seen.stream = { steps: (await streamed.steps).length, text };

const messages = [{ role: "user", content: "Say hello" }];
const firstTurn = await generateText({ model: openai(model), messages });
messages.push(...firstTurn.response.messages, { role: "user", content: "And once more" });
const secondTurn = await generateText({ model: openai(model), messages });
seen.second_turn = { text: secondTurn.text, first_id: firstTurn.response.id, second_id: secondTurn.response.id };
console.log(JSON.stringify(seen));
