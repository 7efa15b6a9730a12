// The openai npm package against a running SmallMind server: chat, a stream, embeddings.
// Usage: node openai_client.mjs http://127.0.0.1:PORT/v1   -> prints one JSON line of results.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.argv[2], apiKey: "not-needed", maxRetries: 0 });

const chat = await client.chat.completions.create({
  model: "smallmind",
  messages: [{ role: "user", content: "Say hello." }],
  max_tokens: 8,
  temperature: 0,
});

let streamed = "";
let finish = null;
const stream = await client.chat.completions.create({
  model: "smallmind",
  messages: [{ role: "user", content: "Count to three." }],
  max_tokens: 8,
  stream: true,
});
for await (const chunk of stream) {
  streamed += chunk.choices[0]?.delta?.content ?? "";
  finish = chunk.choices[0]?.finish_reason ?? finish;
}

const embedding = await client.embeddings.create({ model: "smallmind", input: "hello world" });

console.log(JSON.stringify({
  chat: chat.choices[0].message.content,
  stream: finish ? streamed : "",
  embedding_dims: embedding.data[0].embedding.length,
}));
