#!/usr/bin/env node
// Smoke test of the official `openai` npm SDK against a running quartproxy.
//
//   OPENAI_BASE_URL=http://127.0.0.1:11435/v1 OPENAI_API_KEY=... \
//   E2E_NODE_DIR=<dir where `npm install openai` ran> node clients/openai-node-smoke.mjs
//
// Runs a chat completion (non-stream), a chat stream with stream_options.include_usage, a
// legacy completion (non-stream and stream), and the Responses API (responses.create without
// and with stream: true, and the responses.stream() helper). Prints one JSON summary on stdout and exits 1 if
// anything does not match (EXPECTED_TEXT, when set, is the answer every call must return).
// `tests/e2e/test_clients.py` runs it from `nox -s clients`.

import { createRequire } from "node:module";
import path from "node:path";
import process from "node:process";

const baseURL = process.env.OPENAI_BASE_URL;
const apiKey = process.env.OPENAI_API_KEY;
const model = process.env.SMOKE_MODEL || "codex-5";
const expectedText = process.env.EXPECTED_TEXT || null;
const nodeDir = path.resolve(process.env.E2E_NODE_DIR || process.cwd());

if (!baseURL || !apiKey) {
  console.error("set OPENAI_BASE_URL and OPENAI_API_KEY");
  process.exit(2);
}

// The SDK lives in E2E_NODE_DIR/node_modules, not next to this script: resolve it from there.
const requireFromNodeDir = createRequire(path.join(nodeDir, "package.json"));
const sdk = requireFromNodeDir("openai");
const OpenAI = sdk.OpenAI ?? sdk.default ?? sdk;
let sdkVersion = null;
for (const [spec, key] of [["openai/version", "VERSION"], ["openai/package.json", "version"]]) {
  try {
    sdkVersion = requireFromNodeDir(spec)[key] ?? null;
    if (sdkVersion) break;
  } catch {
    // not exported by this SDK version; try the next
  }
}

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60_000 });
const mismatches = [];
const results = {};

function expect(name, ok, detail) {
  if (!ok) mismatches.push({ check: name, detail });
}

function checkUsage(name, usage) {
  expect(`${name}: usage present`, usage && typeof usage === "object", usage);
  if (!usage) return;
  for (const key of ["prompt_tokens", "completion_tokens", "total_tokens"]) {
    expect(`${name}: usage.${key} is an integer`, Number.isInteger(usage[key]), usage);
  }
  expect(`${name}: total = prompt + completion`,
    usage.total_tokens === usage.prompt_tokens + usage.completion_tokens, usage);
}

function checkText(name, text) {
  expect(`${name}: non-empty answer`, typeof text === "string" && text.length > 0, text);
  if (expectedText !== null) expect(`${name}: answer`, text === expectedText, text);
}

async function run(name, fn) {
  try {
    results[name] = await fn();
  } catch (err) {
    mismatches.push({ check: `${name}: raised`, detail: String(err?.stack ?? err) });
  }
}

const messages = [{ role: "user", content: "Say hello" }];

await run("chat", async () => {
  const res = await client.chat.completions.create({ model, messages });
  const choice = res.choices[0];
  expect("chat: object", res.object === "chat.completion", res.object);
  expect("chat: model", res.model === model, res.model);
  expect("chat: role", choice.message.role === "assistant", choice.message.role);
  expect("chat: finish_reason", choice.finish_reason === "stop", choice.finish_reason);
  checkText("chat", choice.message.content);
  checkUsage("chat", res.usage);
  return { text: choice.message.content, finish_reason: choice.finish_reason, usage: res.usage };
});

await run("chat_stream", async () => {
  const stream = await client.chat.completions.create({
    model, messages, stream: true, stream_options: { include_usage: true },
  });
  const ids = new Set();
  const finishes = [];
  let text = "";
  let role = null;
  let usage = null;
  let chunks = 0;
  let usageChunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    ids.add(chunk.id);
    expect("chat_stream: object", chunk.object === "chat.completion.chunk", chunk.object);
    if (chunk.usage) {
      usage = chunk.usage;
      usageChunks += 1;
      expect("chat_stream: usage chunk has no choices", chunk.choices.length === 0, chunk);
    }
    for (const choice of chunk.choices) {
      if (choice.delta?.role) role = choice.delta.role;
      if (choice.delta?.content) text += choice.delta.content;
      if (choice.finish_reason) finishes.push(choice.finish_reason);
    }
  }
  expect("chat_stream: one id", ids.size === 1, [...ids]);
  expect("chat_stream: role chunk", role === "assistant", role);
  expect("chat_stream: one finish 'stop'", finishes.length === 1 && finishes[0] === "stop",
    finishes);
  expect("chat_stream: exactly one usage chunk", usageChunks === 1, usageChunks);
  checkText("chat_stream", text);
  checkUsage("chat_stream", usage);
  return { text, finish_reason: finishes[0] ?? null, usage, chunks };
});

await run("completion", async () => {
  const res = await client.completions.create({ model, prompt: "Say hello" });
  const choice = res.choices[0];
  expect("completion: object", res.object === "text_completion", res.object);
  expect("completion: finish_reason", choice.finish_reason === "stop", choice.finish_reason);
  checkText("completion", choice.text);
  checkUsage("completion", res.usage);
  return { text: choice.text, finish_reason: choice.finish_reason, usage: res.usage };
});

await run("completion_stream", async () => {
  const stream = await client.completions.create({ model, prompt: "Say hello", stream: true });
  let text = "";
  const finishes = [];
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      text += choice.text ?? "";
      if (choice.finish_reason) finishes.push(choice.finish_reason);
    }
  }
  expect("completion_stream: one finish 'stop'",
    finishes.length === 1 && finishes[0] === "stop", finishes);
  checkText("completion_stream", text);
  return { text, finish_reason: finishes[0] ?? null };
});

function checkResponsesUsage(name, usage) {
  expect(`${name}: usage present`, usage && typeof usage === "object", usage);
  if (!usage) return;
  for (const key of ["input_tokens", "output_tokens", "total_tokens"]) {
    expect(`${name}: usage.${key} is an integer`, Number.isInteger(usage[key]), usage);
  }
  expect(`${name}: total = input + output`,
    usage.total_tokens === usage.input_tokens + usage.output_tokens, usage);
  expect(`${name}: cached_tokens`, Number.isInteger(usage.input_tokens_details?.cached_tokens),
    usage);
}

await run("responses", async () => {
  const res = await client.responses.create({ model, input: "Say hello" });
  expect("responses: object", res.object === "response", res.object);
  expect("responses: id", typeof res.id === "string" && res.id.startsWith("resp_"), res.id);
  expect("responses: status", res.status === "completed", res.status);
  expect("responses: model", res.model === model, res.model);
  checkText("responses", res.output_text);
  checkResponsesUsage("responses", res.usage);
  return { text: res.output_text, status: res.status, usage: res.usage };
});

await run("responses_stream", async () => {
  const stream = await client.responses.create({ model, input: "Say hello", stream: true });
  const types = [];
  let text = "";
  let doneText = null;
  let lastSeq = -1;
  let final = null;
  for await (const event of stream) {
    types.push(event.type);
    expect("responses_stream: sequence numbers increase", event.sequence_number > lastSeq,
      [lastSeq, event.sequence_number]);
    lastSeq = event.sequence_number;
    if (event.type === "response.output_text.delta") text += event.delta;
    if (event.type === "response.output_text.done") doneText = event.text;
    if (event.type === "response.completed") final = event.response;
  }
  expect("responses_stream: starts with response.created", types[0] === "response.created",
    types);
  expect("responses_stream: ends with response.completed",
    types[types.length - 1] === "response.completed", types);
  expect("responses_stream: done text = deltas", doneText === text, [doneText, text]);
  const finalText = (final?.output ?? []).filter((item) => item.type === "message")
    .flatMap((item) => item.content).map((part) => part.text).join("");
  expect("responses_stream: final output = deltas", finalText === text, finalText);
  checkText("responses_stream", text);
  checkResponsesUsage("responses_stream", final?.usage);
  return { text, status: final?.status ?? null, usage: final?.usage ?? null,
    events: types.length };
});

await run("responses_helper", async () => {
  const stream = client.responses.stream({ model, input: "Say hello" });
  let text = "";
  stream.on("response.output_text.delta", (event) => { text += event.delta; });
  const final = await stream.finalResponse();
  expect("responses_helper: status", final.status === "completed", final.status);
  expect("responses_helper: output_text = deltas", final.output_text === text,
    [final.output_text, text]);
  checkText("responses_helper", final.output_text);
  return { text: final.output_text, status: final.status, usage: final.usage };
});

const texts = Object.values(results).map((r) => r.text);
expect("all calls return the same answer", new Set(texts).size === 1, texts);
expect("stream and non-stream usage agree",
  JSON.stringify(results.chat?.usage) === JSON.stringify(results.chat_stream?.usage),
  [results.chat?.usage, results.chat_stream?.usage]);
expect("responses: stream and non-stream usage agree",
  JSON.stringify(results.responses?.usage) === JSON.stringify(results.responses_stream?.usage),
  [results.responses?.usage, results.responses_stream?.usage]);

console.log(JSON.stringify({
  ok: mismatches.length === 0,
  node: process.version,
  sdk: "openai",
  sdk_version: sdkVersion,
  base_url: baseURL,
  results,
  mismatches,
}, null, 2));
process.exit(mismatches.length === 0 ? 0 : 1);
