// The page of `python -m gpt.serve` (gpt/serve/web/index.html): chat, or continue a text, through the server's own
// OpenAI API, streaming; every generated token is kept with its log-probability and the alternatives the model
// weighed at that step (the API's logprobs), shown when you point at it.
"use strict";

const $ = (id) => document.getElementById(id);
const SETTINGS_STORE = "gpt-serve-page-settings";
const KEY_STORE = "gpt-serve-page-key";
const SYSTEM_STORE = "gpt-serve-page-system";
const DEFAULTS = { mode: "", temperature: 0.8, top_p: 1, max_tokens: 200, seed: "", top_logprobs: 5, shading: true };
const RANGES = {
  temperature: { min: 0, max: 2 },
  top_p: { min: 0.05, max: 1 },
  max_tokens: { min: 1, max: 100000, integer: true },
  top_logprobs: { min: 0, max: 20, integer: true },
};

const page = {
  settings: { ...DEFAULTS },
  model: null, // the model card from v1/models: {id, chat_template, max_tokens, ...}
  key: localStorage.getItem(KEY_STORE) || "",
  running: null, // the AbortController of the answer being generated
  conversation: [], // the chat so far: {role, content}
};

class PageError extends Error {}

// ---------------------------------------------------------------------------------------------------------------
// Settings: defaults, then what this browser kept, then the URL (which wins: a link carries its settings)

function clean(name, value) {
  if (name === "mode") return value === "chat" || value === "text" ? value : undefined;
  if (name === "shading") {
    if ([true, "true", "1", "on"].includes(value)) return true;
    if ([false, "false", "0", "off"].includes(value)) return false;
    return undefined;
  }
  if (name === "seed") {
    if (value === "" || value === null) return "";
    const seed = Number(value);
    return Number.isSafeInteger(seed) && seed >= 0 ? seed : undefined;
  }
  const number = Number(value);
  if (value === "" || value === null || !Number.isFinite(number)) return undefined;
  const { min, max, integer } = RANGES[name];
  const limit = name === "max_tokens" && page.model && page.model.max_tokens ? page.model.max_tokens : max;
  return Math.min(limit, Math.max(min, integer ? Math.round(number) : number));
}

function loadSettings() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(SETTINGS_STORE) || "{}") || {};
  } catch (e) {
    saved = {};
  }
  const fromUrl = Object.fromEntries(new URLSearchParams(location.search));
  for (const source of [saved, fromUrl]) {
    for (const name of Object.keys(DEFAULTS)) {
      if (!(name in source)) continue;
      const value = clean(name, source[name]);
      if (value !== undefined) page.settings[name] = value;
    }
  }
}

function saveSettings() {
  localStorage.setItem(SETTINGS_STORE, JSON.stringify(page.settings));
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(page.settings)) {
    if (value !== DEFAULTS[name]) query.set(name, String(value));
  }
  const search = query.toString();
  history.replaceState(null, "", search ? "?" + search : location.pathname);
}

function showSettings() {
  const s = page.settings;
  for (const name of ["temperature", "top_p", "max_tokens", "seed", "top_logprobs"]) $(name).value = s[name];
  $("temperature-out").textContent = s.temperature.toFixed(2);
  $("top_p-out").textContent = s.top_p.toFixed(2);
  $("shading").checked = s.shading;
  document.body.classList.toggle("shading", s.shading);
}

function bindSettings() {
  for (const name of ["temperature", "top_p", "max_tokens", "seed", "top_logprobs"]) {
    const input = $(name);
    input.addEventListener("input", () => {
      const value = clean(name, input.value);
      if (value === undefined) return; // half-typed: keep the last good value
      page.settings[name] = value;
      if (input.type === "range") $(name + "-out").textContent = value.toFixed(2);
      saveSettings();
    });
    input.addEventListener("change", showSettings); // leaving a field shows the value in use
  }
  $("shading").addEventListener("change", () => {
    page.settings.shading = $("shading").checked;
    document.body.classList.toggle("shading", page.settings.shading);
    saveSettings();
  });
  $("system").value = localStorage.getItem(SYSTEM_STORE) || "";
  if ($("system").value) $("system-box").open = true;
  $("system").addEventListener("input", () => localStorage.setItem(SYSTEM_STORE, $("system").value));
  if (matchMedia("(max-width: 760px)").matches) $("settings-box").open = false; // a phone: the answer first
}

// ---------------------------------------------------------------------------------------------------------------
// The server: the model card, the API key, errors in words

function headers() {
  const h = { "Content-Type": "application/json" };
  if (page.key) h.Authorization = "Bearer " + page.key;
  return h;
}

function askKey(problem) {
  const dialog = $("key-dialog");
  $("key-problem").textContent = problem || "";
  if (dialog.open) return new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
  $("key-input").value = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      page.key = $("key-input").value.trim();
      localStorage.setItem(KEY_STORE, page.key);
      resolve();
    }, { once: true });
  });
}

async function describe(response) {
  // An error answer in words: what kind of refusal, then the server's own message.
  let message = "";
  try {
    const body = await response.json();
    message = (body.error && body.error.message) || "";
  } catch (e) {
    message = "";
  }
  const kinds = {
    400: "The server refused the request",
    401: "The API key was not accepted",
    404: "Not found",
    413: "The request is too large",
    429: "The server is busy",
    503: "The server is shutting down",
  };
  const kind = kinds[response.status] || (response.status >= 500 ? "The server failed" : "The request failed");
  return `${kind} (${response.status})${message ? ": " + message : ""}`;
}

async function call(path, options) {
  try {
    return await fetch(path, options);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new PageError(`Cannot reach the server (${e.message}): is python -m gpt.serve still running?`);
  }
}

async function openModel() {
  for (;;) {
    const response = await call("v1/models", { headers: headers() });
    if (response.status === 401) {
      await askKey(page.key ? await describe(response) : "");
      continue;
    }
    if (!response.ok) throw new PageError(await describe(response));
    const models = await response.json();
    return models.data[0];
  }
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// ---------------------------------------------------------------------------------------------------------------
// Modes: chat needs a chat template; continuing text works with any model

function chatOff() {
  return page.model && page.model.chat_template === false;
}

function setMode(mode) {
  if (mode === "chat" && chatOff()) mode = "text";
  page.settings.mode = mode;
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const on = tab.dataset.mode === mode;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
  }
  $("chat-pane").hidden = mode !== "chat";
  $("text-pane").hidden = mode !== "text";
  const id = page.model ? page.model.id : "this model";
  $("mode-note").textContent = chatOff()
    ? `Chat is off: ${id} has no chat template (it was not tuned on conversations), so it can only continue text.`
    : mode === "chat"
      ? `${id} was tuned on conversations: your messages go through its chat template.`
      : `Your text goes to ${id} as it is, without the chat template: the model continues it.`;
  showError("");
  saveSettings();
  (mode === "chat" ? $("chat-input") : $("prompt")).focus();
}

function bindModes() {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => {
      if (tab.getAttribute("aria-disabled") !== "true") setMode(tab.dataset.mode);
    });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Streaming an answer: server-sent events, each chunk's text and its token's logprobs

function requestBody(extra) {
  const s = page.settings;
  const seed = s.seed === "" ? Math.floor(Math.random() * 2 ** 31) : s.seed;
  return {
    model: page.model.id, temperature: s.temperature, top_p: s.top_p, max_tokens: s.max_tokens, seed,
    stream: true, stream_options: { include_usage: true }, ...extra,
  };
}

function entriesOf(choice, chat) {
  // The chunk's tokens as {token, logprob, top: [{token, logprob}] likeliest first}, for either endpoint.
  const lp = choice.logprobs;
  if (!lp) return [];
  if (chat) {
    return (lp.content || []).map((e) => ({
      token: e.token, logprob: e.logprob, top: (e.top_logprobs || []).map((t) => ({ token: t.token, logprob: t.logprob })),
    }));
  }
  return (lp.tokens || []).map((token, i) => ({
    token, logprob: lp.token_logprobs[i],
    top: Object.entries(lp.top_logprobs[i] || {}).map(([t, v]) => ({ token: t, logprob: v }))
      .sort((a, b) => b.logprob - a.logprob), // (a JSON object's keys lose their order in JavaScript)
  }));
}

function setRunning(controller) {
  page.running = controller;
  for (const button of document.querySelectorAll(".stop")) button.disabled = !controller;
  for (const id of ["chat-send", "text-send", "new-chat"]) $(id).disabled = Boolean(controller);
  $("keep-text").disabled = Boolean(controller) || !$("completion").dataset.text;
}

async function stream(path, body, answer) {
  // Sends the request and feeds the answer view; returns how it ended: "stop", "length" or "stopped" (by you).
  const controller = new AbortController();
  setRunning(controller);
  const chat = path.includes("chat");
  let finish = null;
  try {
    const response = await call(path, { method: "POST", headers: headers(), body: JSON.stringify(body),
                                        signal: controller.signal });
    if (!response.ok) {
      if (response.status === 401) askKey(await describe(response.clone()));
      throw new PageError(await describe(response));
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return finish || "stop";
          const chunk = JSON.parse(data);
          if (chunk.error) throw new PageError(`The server failed while answering: ${chunk.error.message}`);
          if (chunk.usage) answer.usage(chunk.usage);
          for (const choice of chunk.choices || []) {
            const text = chat ? (choice.delta && choice.delta.content) || "" : choice.text || "";
            answer.add(text, entriesOf(choice, chat));
            if (choice.finish_reason) finish = choice.finish_reason;
          }
        }
      }
    }
    throw new PageError("The answer was cut off: the server closed the stream before its end.");
  } catch (e) {
    if (e.name === "AbortError") return "stopped";
    throw e;
  } finally {
    setRunning(null);
  }
}

function stop() {
  if (page.running) page.running.abort();
}

// ---------------------------------------------------------------------------------------------------------------
// An answer on the page: token spans shaded by probability, and a line of figures

function probability(logprob) {
  return logprob <= -9999 ? 0 : Math.exp(logprob);
}

function percent(p) {
  return p >= 0.9995 ? "100%" : p >= 0.001 ? (100 * p).toFixed(1) + "%" : p > 0 ? "<0.1%" : "0%";
}

function shown(token) {
  // A token as text you can see: spaces, new lines and tabs drawn.
  return token.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅";
}

class Answer {
  constructor(container, settings) {
    this.box = container;
    this.after = container; // where the figures go: after the answer
    this.box.classList.add("tokens");
    this.box.tabIndex = 0;
    this.box.setAttribute("aria-label", "The answer, token by token: use the arrow keys to see each token's probabilities");
    this.settings = settings; // what made this answer, for the inspector's words
    this.pending = []; // tokens whose text is held back (a split character): they join the next piece
    this.tokens = 0; // tokens received
    this.indexed = 0; // tokens shown (in spans)
    this.text = "";
    this.started = performance.now();
    this.first = null;
    this.counted = null; // usage from the server, when it came
    this.stats = document.createElement("p");
    this.stats.className = "stats";
    this.queue = document.createDocumentFragment(); // tokens not on the page yet: they go on once per frame
    this.frame = null;
  }

  flush() {
    this.frame = null;
    this.box.append(this.queue); // one layout per frame, however fast the tokens come
    followIfAtBottom();
  }

  add(text, entries) {
    if (entries.length) {
      this.tokens += entries.length;
      if (this.first === null) this.first = performance.now();
    }
    const steps = this.pending.concat(entries);
    if (!text) {
      this.pending = steps;
      return;
    }
    this.pending = [];
    this.text += text;
    const span = document.createElement("span");
    span.className = "tok";
    span.tabIndex = -1;
    const parts = text.split("\n");
    parts.forEach((part, i) => {
      if (i > 0) {
        const mark = document.createElement("span");
        mark.className = "nl";
        span.append(mark, "\n");
      }
      if (part) span.append(part);
    });
    if (steps.length) {
      span.steps = steps;
      span.dataset.step = String(this.indexed); // the answer's token number (from 0) of the span's first token
      this.indexed += steps.length;
      span.dataset.logprob = String(steps[steps.length - 1].logprob);
      span.style.setProperty("--p", String(probability(steps[steps.length - 1].logprob)));
    } else {
      span.classList.add("plain"); // text with no token of its own (e.g. held back until the end)
    }
    span.answer = this;
    this.queue.append(span);
    if (this.frame === null) this.frame = requestAnimationFrame(() => this.flush());
  }

  usage(usage) {
    this.counted = usage;
  }

  finish(how) {
    if (this.frame !== null) cancelAnimationFrame(this.frame);
    this.flush();
    const seconds = (performance.now() - this.started) / 1000;
    const tokens = this.counted ? this.counted.completion_tokens : this.tokens;
    const parts = [`${tokens} token${tokens === 1 ? "" : "s"} in ${seconds.toFixed(2)} s`];
    if (tokens > 0 && seconds > 0) parts.push(`${(tokens / seconds).toFixed(1)} tokens/s`);
    if (this.first !== null) parts.push(`first after ${Math.round(this.first - this.started)} ms`);
    if (this.counted) parts.push(`prompt ${this.counted.prompt_tokens} tokens`);
    parts.push(`seed ${this.settings.seed}`);
    const ends = { stop: this.settings.chat ? "the model ended its turn" : "the model ended the text",
                   length: "maximum tokens reached", stopped: "stopped by you" };
    parts.push(ends[how] || how);
    this.stats.textContent = parts.join(" · ");
    this.stats.dataset.tokens = String(tokens);
    this.stats.dataset.finish = how;
    this.after.after(this.stats);
  }
}

function followIfAtBottom() {
  const slack = 120;
  if (window.innerHeight + window.scrollY >= document.body.scrollHeight - slack) {
    window.scrollTo(0, document.body.scrollHeight);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The inspector: the alternatives at one step, and which one was drawn

let pinned = null; // a token tapped or clicked keeps its inspector open

function inspect(span) {
  const info = $("token-info");
  if (!span || !span.steps) {
    info.hidden = true;
    return;
  }
  for (const other of document.querySelectorAll(".tok.active")) other.classList.remove("active");
  span.classList.add("active");
  const settings = span.answer.settings;
  info.replaceChildren();
  span.steps.forEach((step, i) => {
    const p = probability(step.logprob);
    const head = document.createElement("p");
    head.className = "info-head";
    const n = Number(span.dataset.step) + 1 + i;
    head.append(`Token ${n}: the model drew `, code(shown(step.token)), ` — ${percent(p)} likely`);
    const table = document.createElement("table");
    let inTop = false;
    let held = 0;
    for (const alt of step.top) {
      const picked = alt.token === step.token;
      inTop = inTop || picked;
      held += probability(alt.logprob);
      table.append(row(alt, picked));
    }
    if (!inTop) table.append(row(step, true, "not among the top " + step.top.length));
    info.append(head, table);
    if (step.top.length) {
      const foot = document.createElement("p");
      foot.className = "info-foot";
      foot.textContent = `These ${step.top.length} hold ${percent(held)} of the probability`;
      info.append(foot);
    }
  });
  const how = document.createElement("p");
  how.className = "info-foot";
  how.textContent = settings.temperature === 0
    ? "Temperature 0: the likeliest token is always taken (the probabilities shown are at temperature 1)."
    : `Drawn at temperature ${settings.temperature}, top-p ${settings.top_p}.`;
  info.append(how);
  info.hidden = false;
  place(info, span);
}

function code(text) {
  const c = document.createElement("code");
  c.textContent = text;
  return c;
}

function row(alt, picked, note) {
  const tr = document.createElement("tr");
  const p = probability(alt.logprob);
  tr.className = picked ? "picked" : "";
  tr.dataset.token = alt.token;
  tr.dataset.logprob = String(alt.logprob);
  const token = document.createElement("td");
  token.append(code(shown(alt.token)));
  const bar = document.createElement("td");
  bar.className = "bar";
  const fill = document.createElement("span");
  fill.style.width = (100 * p).toFixed(1) + "%";
  bar.append(fill);
  const value = document.createElement("td");
  value.className = "p";
  value.textContent = percent(p);
  const mark = document.createElement("td");
  mark.className = "mark";
  mark.textContent = picked ? "◀ drawn" + (note ? ` (${note})` : "") : "";
  tr.append(token, bar, value, mark);
  return tr;
}

function place(info, span) {
  if (matchMedia("(max-width: 600px)").matches) return; // a phone: the inspector sits at the bottom (CSS)
  const r = span.getBoundingClientRect();
  const width = info.offsetWidth;
  const height = info.offsetHeight;
  const left = Math.min(Math.max(8, r.left), window.innerWidth - width - 8);
  const below = r.bottom + 6;
  const top = below + height > window.innerHeight - 8 && r.top - height - 6 > 8 ? r.top - height - 6 : below;
  info.style.left = left + window.scrollX + "px";
  info.style.top = top + window.scrollY + "px";
}

function hideInspector() {
  pinned = null;
  $("token-info").hidden = true;
  for (const other of document.querySelectorAll(".tok.active")) other.classList.remove("active");
}

function bindInspector() {
  document.addEventListener("mouseover", (e) => {
    const span = e.target.closest && e.target.closest(".tok[data-step]");
    if (span && span.answer && !pinned) inspect(span);
  });
  document.addEventListener("mouseout", (e) => {
    const span = e.target.closest && e.target.closest(".tok[data-step]");
    if (span && !pinned && !(e.relatedTarget && span.contains(e.relatedTarget))) hideInspector();
  });
  document.addEventListener("click", (e) => {
    const span = e.target.closest && e.target.closest(".tok[data-step]");
    if (span && span.answer) {
      pinned = span === pinned ? null : span;
      if (pinned) inspect(span);
      else hideInspector();
    } else if (!e.target.closest("#token-info")) {
      hideInspector();
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      if (!$("token-info").hidden) hideInspector();
      else stop();
      return;
    }
    const box = e.target.closest && e.target.closest(".tokens");
    if (!box || !["ArrowLeft", "ArrowRight", "Home", "End"].includes(e.key)) return;
    const spans = [...box.querySelectorAll(".tok[data-step]")];
    if (!spans.length) return;
    e.preventDefault();
    const at = spans.indexOf(box.querySelector(".tok.active"));
    const next = { ArrowLeft: Math.max(0, at - 1), ArrowRight: Math.min(spans.length - 1, at + 1), Home: 0,
                   End: spans.length - 1 }[e.key];
    pinned = spans[next];
    inspect(spans[next]);
    spans[next].scrollIntoView({ block: "nearest" });
  });
  document.addEventListener("focusin", (e) => {
    const box = e.target.classList && e.target.classList.contains("tokens") ? e.target : null;
    if (box && !box.querySelector(".tok.active")) {
      const first = box.querySelector(".tok[data-step]");
      if (first) {
        pinned = first;
        inspect(first);
      }
    }
  });
  document.addEventListener("focusout", (e) => {
    if (e.target.classList && e.target.classList.contains("tokens")) hideInspector();
  });
  window.addEventListener("resize", hideInspector);
}

// ---------------------------------------------------------------------------------------------------------------
// Chat

function bubble(role, text) {
  const message = document.createElement("div");
  message.className = "message " + role;
  const who = document.createElement("p");
  who.className = "who";
  who.textContent = role === "user" ? "You" : page.model.id;
  const body = document.createElement("div");
  body.className = "content";
  if (text) body.textContent = text;
  message.append(who, body);
  $("conversation").append(message);
  return body;
}

async function sendChat() {
  const input = $("chat-input");
  const text = input.value;
  if (!text.trim() || page.running) return;
  showError("");
  hideInspector();
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...page.conversation, { role: "user", content: text });
  const body = requestBody({ messages, logprobs: true, top_logprobs: page.settings.top_logprobs });
  input.value = "";
  const mine = bubble("user", text);
  const answer = new Answer(bubble("assistant", ""), { ...page.settings, seed: body.seed, chat: true });
  try {
    const how = await stream("v1/chat/completions", body, answer);
    answer.finish(how);
    if (answer.text) {
      page.conversation.push({ role: "user", content: text }, { role: "assistant", content: answer.text });
    } else { // a chat template takes no empty turn: this exchange stays on the page, out of the conversation
      answer.stats.textContent += " · nothing said: left out of the conversation";
      mine.parentElement.classList.add("left-out");
    }
  } catch (e) {
    // Nothing was said: the message goes back to the box, to be changed or sent again.
    mine.parentElement.remove();
    answer.box.parentElement.remove();
    input.value = text;
    showError(e.message);
  }
  input.focus();
}

function newChat() {
  stop();
  page.conversation = [];
  $("conversation").replaceChildren();
  hideInspector();
  showError("");
  $("chat-input").focus();
}

// ---------------------------------------------------------------------------------------------------------------
// Continue text

async function sendText() {
  const prompt = $("prompt").value;
  if (!prompt || page.running) return;
  showError("");
  hideInspector();
  const body = requestBody({ prompt, logprobs: page.settings.top_logprobs });
  const box = $("completion");
  box.hidden = false;
  box.replaceChildren();
  box.dataset.text = "";
  const given = document.createElement("span");
  given.className = "prompt-text";
  given.textContent = prompt;
  const generated = document.createElement("span");
  box.append(given, generated);
  for (const old of document.querySelectorAll("#text-pane .stats")) old.remove();
  const answer = new Answer(generated, { ...page.settings, seed: body.seed, chat: false });
  try {
    const how = await stream("v1/completions", body, answer);
    answer.after = box; // the figures go under the whole text
    answer.finish(how);
    box.dataset.text = prompt + answer.text;
  } catch (e) {
    box.hidden = true;
    showError(e.message);
  }
  $("keep-text").disabled = !box.dataset.text;
  $("prompt").focus();
}

// ---------------------------------------------------------------------------------------------------------------
// Start

function sendOnEnter(textarea, send) {
  textarea.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
}

async function start() {
  loadSettings();
  showSettings();
  bindSettings();
  bindModes();
  bindInspector();
  $("chat-form").addEventListener("submit", (e) => { e.preventDefault(); sendChat(); });
  $("text-form").addEventListener("submit", (e) => { e.preventDefault(); sendText(); });
  sendOnEnter($("chat-input"), sendChat);
  sendOnEnter($("prompt"), sendText);
  for (const button of document.querySelectorAll(".stop")) button.addEventListener("click", stop);
  $("new-chat").addEventListener("click", newChat);
  $("keep-text").addEventListener("click", () => {
    $("prompt").value = $("completion").dataset.text;
    $("prompt").focus();
  });
  try {
    page.model = await openModel();
  } catch (e) {
    showError(e.message);
    document.body.dataset.ready = "failed";
    return;
  }
  $("model-name").textContent = page.model.id;
  document.title = `gpt · ${page.model.id}`;
  if (page.model.max_tokens) $("max_tokens").max = page.model.max_tokens;
  page.settings.max_tokens = clean("max_tokens", page.settings.max_tokens);
  showSettings();
  const tab = $("tab-chat");
  if (chatOff()) {
    tab.setAttribute("aria-disabled", "true");
    tab.title = "This model has no chat template: it was not tuned on conversations";
  }
  setMode(page.settings.mode || (chatOff() ? "text" : "chat"));
  document.body.dataset.ready = "yes";
}

start();
