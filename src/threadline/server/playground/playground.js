// The chat playground: one conversation per visitor (the server keeps it under a cookie).
// Replies stream in over LangServe's /chat/stream (server-sent events); history comes from
// /chat/history, so a reload shows the same thread.
"use strict";

const messages = document.getElementById("messages");
const problem = document.getElementById("problem");
const form = document.getElementById("composer");
const text = document.getElementById("text");
const send = document.getElementById("send");

function bubble(type, content) {
  const element = document.createElement("div");
  element.className = `message ${type === "human" ? "human" : "ai"}`;
  element.dataset.type = type;
  element.textContent = content;
  messages.appendChild(element);
  element.scrollIntoView({ block: "end" });
  return element;
}

function showProblem(message) {
  problem.textContent = message;
  problem.hidden = false;
}

async function explain(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) { /* not JSON: keep the status text */ }
  const advice = {
    401: "Log in with your API key as the password, then send again.",
    409: "Another reply on this conversation is still running: wait a moment and send again.",
    413: "Your message is too long: shorten it and send again.",
    422: "The message was refused: change it and send again.",
    502: "The model did not answer: send again in a moment.",
    503: "The server cannot store conversations right now: send again in a moment.",
  }[response.status] || "Send again in a moment; if it keeps failing, tell the operator.";
  return `Not sent (HTTP ${response.status}): ${detail}. ${advice}`;
}

// Yields [event, data] pairs from a text/event-stream body.
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      yield [event, data.join("\n")];
    }
  }
}

let threadId = "";

function showCount() {
  const count = messages.querySelectorAll(".message").length;
  document.getElementById("thread").textContent = `conversation ${threadId} · ${count} messages`;
}

async function load() {
  const response = await fetch("../history", { credentials: "same-origin" });
  if (!response.ok) {
    showProblem(await explain(response));
    return;
  }
  const thread = await response.json();
  threadId = thread.thread_id;
  for (const message of thread.messages) bubble(message.type, message.content);
  showCount();
}

async function turn(content) {
  problem.hidden = true;
  const mine = bubble("human", content);
  const reply = bubble("ai", "");
  reply.classList.add("pending");
  const response = await fetch("../stream", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ input: { messages: [{ type: "human", content }] }, config: {} }),
  });
  if (!response.ok) {
    mine.remove();
    reply.remove();
    text.value = content;  // nothing was stored: the message is back in the box
    showProblem(await explain(response));
    return;
  }
  for await (const [event, data] of events(response.body)) {
    if (event === "data") {
      reply.textContent += JSON.parse(data);
      reply.scrollIntoView({ block: "end" });
    } else if (event === "error") {
      // A turn is stored whole or not at all: a failed one left nothing in the thread.
      const error = JSON.parse(data);
      mine.remove();
      reply.remove();
      text.value = content;
      showProblem(`The reply failed (${error.status_code || "error"}): ${error.message}. ` +
        "Nothing was stored; send again in a moment.");
      return;
    }
  }
  reply.classList.remove("pending");
  showCount();
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const content = text.value.trim();
  if (!content) return;
  text.value = "";
  send.disabled = true;
  try {
    await turn(content);
  } catch (error) {
    showProblem(`The server could not be reached (${error.message}). Check the connection and send again.`);
  } finally {
    send.disabled = false;
    text.focus();
  }
});

text.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    form.requestSubmit();
  }
});

load().catch((error) => showProblem(`Could not load the conversation (${error.message}).`));
