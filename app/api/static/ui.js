// medlora's page: calls the service's own public API and shows each answer on its note.
// Every piece of note or model text goes into the page as a text node (textContent), never as
// HTML; the server's Content-Security-Policy allows no inline script and no other origin.
"use strict";

const ENDPOINTS = { ner: "ner", qa: "qa", classification: "classify", relations: "relations", form: "forms" };
const KEY_STORE = "medlora.key";

// fileText: a file's text exactly as read. A textarea turns CRLF into LF, which would shift
// every offset after the first line break; the file's own text is what is sent.
const state = { tasks: [], spans: [], relations: [], focus: null, fileText: null };

function $(id) {
  return document.getElementById(id);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function say(message, isError) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", Boolean(isError));
}

// -- offsets: the API counts Unicode code points, the DOM counts UTF-16 units -----------------
// The one place they are converted: `units[k]` is where code point k starts in UTF-16.
function codePointUnits(text) {
  const units = [0];
  let at = 0;
  for (const char of text) {
    at += char.length;
    units.push(at);
  }
  return units;
}

// The text of [start, end) in code points, or null when the offsets are not in the note.
function sliceCodePoints(text, units, start, end) {
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end < start || end >= units.length) {
    return null;
  }
  return text.slice(units[start], units[end]);
}

// -- API ----------------------------------------------------------------------------------------
async function api(path, body) {
  const headers = { accept: "application/json" };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.authorization = "Bearer " + key;
  const init = { method: body === undefined ? "GET" : "POST", headers, cache: "no-store" };
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let payload = null;
  try {
    payload = await response.json();
  } catch (_) {
    payload = null;
  }
  if (!response.ok) {
    const detail = payload && (payload.detail || payload.title);
    throw new Error(`${response.status}: ${detail || response.statusText}`);
  }
  return payload;
}

async function loadTasks() {
  const picker = $("task");
  try {
    const body = await api("v1/tasks");
    state.tasks = body.tasks;
  } catch (error) {
    say(`Tasks could not be loaded (${error.message}). With authentication on, enter a key.`, true);
    return;
  }
  picker.replaceChildren(
    ...state.tasks.map((task) => el("option", { value: task.name }, `${task.name} (${task.type})`)),
  );
  showTaskInfo();
  say(`${state.tasks.length} tasks.`);
}

function currentTask() {
  return state.tasks.find((task) => task.name === $("task").value);
}

function showTaskInfo() {
  const task = currentTask();
  $("question-row").hidden = !task || task.type !== "qa";
  $("task-info").textContent = task ? `${task.type}; labels: ${task.labels.join(", ") || "none"}` : "";
}

async function annotate() {
  const task = currentTask();
  if (!task) {
    say("Choose a task first.", true);
    return;
  }
  const text = state.fileText !== null ? state.fileText : $("note").value;
  const item = task.type === "qa" ? { id: "note", context: text, question: $("question").value } : { id: "note", text };
  const body = { task: task.name, [task.type === "qa" ? "items" : "documents"]: [item] };
  const button = $("annotate");
  button.disabled = true;
  say("Annotating...");
  try {
    const started = performance.now();
    const answer = await api(`v1/${ENDPOINTS[task.type]}`, body);
    render(task, text, answer);
    say(`Done in ${Math.round(performance.now() - started)} ms (${answer.model.adapter}@${answer.model.adapter_version}).`);
  } catch (error) {
    say(`The service refused: ${error.message}`, true);
  } finally {
    button.disabled = false;
  }
}

// -- rendering ----------------------------------------------------------------------------------
function confidenceText(value) {
  return typeof value === "number" ? value.toFixed(2) : "n/a";
}

function flags(attributes) {
  return Object.entries(attributes || {})
    .filter(([, on]) => on === true)
    .map(([name]) => name)
    .join(" ");
}

// The spans of one answer, whatever its type: {start, end, text, label, confidence, id?, flags}.
function spansOf(task, answer) {
  if (task.type === "qa") {
    const a = answer.items[0].answer;
    return a ? [{ ...a, label: "ANSWER" }] : [];
  }
  const doc = answer.documents[0];
  if (task.type === "ner" || task.type === "relations") {
    return doc.entities.map((e) => ({ ...e, flags: flags(e.attributes) }));
  }
  if (task.type === "form") {
    return doc.items.flatMap((item) =>
      item.evidence.map((ev) => ({ ...ev, label: item.name, confidence: item.confidence, item: item.name })),
    );
  }
  return [];
}

function render(task, text, answer) {
  const units = codePointUnits(text);
  const mismatches = [];
  const spans = [];
  for (const span of spansOf(task, answer)) {
    if (sliceCodePoints(text, units, span.start, span.end) !== span.text) {
      mismatches.push(`[${span.start}, ${span.end}) ${span.label}`);
    } else {
      spans.push(span);
    }
  }
  state.spans = spans;
  state.relations = task.type === "relations" ? answer.documents[0].relations : [];
  state.focus = null;
  const counts = new Map();
  for (const r of state.relations) {
    counts.set(r.head, (counts.get(r.head) || 0) + 1);
    counts.set(r.tail, (counts.get(r.tail) || 0) + 1);
  }
  renderText(text, units, spans, counts);
  renderSide(task, answer, spans);
  $("mismatches").textContent = mismatches.length
    ? `Not shown: ${mismatches.length} span(s) whose offsets do not match their text: ${mismatches.join("; ")}`
    : "";
  applyThreshold();
  drawArcs();
}

function markFor(span, text, units, relationCount) {
  const mark = el("mark", {
    "data-start": span.start,
    "data-end": span.end,
    "data-label": span.label,
    "data-id": span.id,
    "data-flags": span.flags || null,
    "data-item": span.item,
    "data-confidence": typeof span.confidence === "number" ? span.confidence : null,
    "data-relations": relationCount ? `${relationCount} rel` : null,
    title: `${span.label}${span.flags ? " (" + span.flags + ")" : ""}, confidence ${confidenceText(span.confidence)}`,
    tabindex: span.id ? 0 : null,
  });
  return mark;
}

// The note as text nodes and <mark>s: nested spans nest; a span that crosses one already open
// cannot nest, so it is listed under the note (with its own text) rather than drawn wrong.
function renderText(text, units, spans, counts) {
  const ordered = [...spans].sort((a, b) => a.start - b.start || b.end - a.end);
  const root = el("div", { class: "text" });
  const overlaps = [];
  const stack = [{ node: root, end: Infinity }];
  let at = 0;
  const emit = (upTo) => {
    if (upTo > at) {
      stack[stack.length - 1].node.append(document.createTextNode(text.slice(units[at], units[upTo])));
      at = upTo;
    }
  };
  for (const span of ordered) {
    while (stack.length > 1 && stack[stack.length - 1].end <= span.start) {
      emit(stack[stack.length - 1].end);
      stack.pop();
    }
    if (span.end > stack[stack.length - 1].end) {
      overlaps.push(span);
      continue;
    }
    emit(span.start);
    const mark = markFor(span, text, units, counts.get(span.id));
    stack[stack.length - 1].node.append(mark);
    stack.push({ node: mark, end: span.end });
  }
  while (stack.length > 1) {
    emit(stack[stack.length - 1].end);
    stack.pop();
  }
  emit(units.length - 1);
  $("doc").replaceChildren(root);
  const list = $("overlaps");
  list.replaceChildren();
  if (overlaps.length) {
    list.append(
      el("h2", {}, "Spans that overlap another one"),
      el(
        "ul",
        {},
        ...overlaps.map((span) => {
          const mark = markFor(span, text, units, counts.get(span.id));
          mark.append(document.createTextNode(span.text));
          return el("li", {}, mark, ` at ${span.start}-${span.end}`);
        }),
      ),
    );
  }
}

function entityName(id) {
  const span = state.spans.find((s) => s.id === id);
  return span ? `${span.text} (${span.label})` : id;
}

function renderSide(task, answer, spans) {
  const side = $("side");
  side.replaceChildren();
  if (task.type === "ner") {
    side.append(
      el("h2", {}, `${spans.length} entities`),
      el(
        "ol",
        { class: "entities" },
        ...spans.map((span) =>
          el(
            "li",
            { "data-confidence": span.confidence },
            el("button", { type: "button", class: "evidence", "data-goto": `${span.start}:${span.end}` }, span.text),
            ` ${span.label}${span.flags ? " (" + span.flags + ")" : ""} ${confidenceText(span.confidence)}`,
          ),
        ),
      ),
    );
  } else if (task.type === "relations") {
    renderRelations(side);
  } else if (task.type === "qa") {
    const a = answer.items[0].answer;
    side.append(
      el("h2", {}, "Answer"),
      el("p", { "data-answer": a ? "found" : "none" }, a ? a.text : "No answer in the note.", a ? ` (confidence ${confidenceText(a.confidence)})` : ""),
    );
  } else if (task.type === "classification") {
    const doc = answer.documents[0];
    side.append(
      el("h2", {}, "Classes"),
      el(
        "ul",
        { class: "classes" },
        ...Object.entries(doc.scores)
          .sort((a, b) => b[1] - a[1])
          .map(([label, score]) =>
            el(
              "li",
              { "data-class": label, "data-confidence": score, "data-chosen": doc.labels.includes(label) ? "yes" : "no" },
              doc.labels.includes(label) ? "chosen: " : "",
              label,
              ` ${confidenceText(score)}`,
            ),
          ),
      ),
    );
  } else if (task.type === "form") {
    renderForm(side, answer.documents[0].items);
  }
}

function renderRelations(side) {
  side.append(el("h2", {}, `${state.relations.length} relations, by head entity`));
  const heads = [...new Set(state.relations.map((r) => r.head))].sort(
    (a, b) => state.spans.findIndex((s) => s.id === a) - state.spans.findIndex((s) => s.id === b),
  );
  const groups = heads.map((head) =>
    el(
      "li",
      { "data-group": head },
      el("button", { type: "button", class: "focus", "data-focus": head }, entityName(head)),
      el(
        "ul",
        {},
        ...state.relations
          .filter((r) => r.head === head)
          .map((r) =>
            el(
              "li",
              { "data-relation": r.type, "data-head": r.head, "data-tail": r.tail, "data-confidence": r.confidence },
              `${r.type} → ${entityName(r.tail)} `,
              el("span", { class: "conf" }, confidenceText(r.confidence)),
            ),
          ),
      ),
    ),
  );
  side.append(el("ul", { class: "relations" }, ...groups));
}

function formValue(value) {
  if (value === null || value === undefined) return "unknown";
  if (Array.isArray(value)) return value.join(", ");
  return String(value);
}

function renderForm(side, items) {
  const rows = items.map((item) => {
    const evidence = item.evidence.map((ev) =>
      el("button", { type: "button", class: "evidence", "data-goto": `${ev.start}:${ev.end}` }, ev.text),
    );
    const alternatives = item.alternatives.length
      ? el("div", { class: "alternatives" }, "also: ", item.alternatives.map((a) => `${formValue(a.value)} (${confidenceText(a.confidence)})`).join("; "))
      : "";
    return el(
      "tr",
      { "data-item": item.name, "data-status": item.status, "data-confidence": item.confidence },
      el("th", { scope: "row" }, item.name),
      el("td", {}, el("span", { "data-value": "" }, formValue(item.value)), item.conflict ? el("strong", { class: "conflict" }, " conflict") : "", alternatives),
      el("td", {}, item.status),
      el("td", {}, confidenceText(item.confidence)),
      el("td", {}, ...evidence),
    );
  });
  side.append(
    el("h2", {}, "Form"),
    el(
      "table",
      { class: "form" },
      el("thead", {}, el("tr", {}, ...["item", "value", "status", "confidence", "evidence"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...rows),
    ),
  );
}

// -- threshold, focus and arcs -----------------------------------------------------------------
function applyThreshold() {
  const threshold = Number($("threshold").value);
  $("threshold-value").textContent = threshold.toFixed(2);
  for (const node of document.querySelectorAll("[data-confidence]")) {
    const low = Number(node.getAttribute("data-confidence")) < threshold;
    node.classList.toggle("low", low);
    if (low) node.setAttribute("data-low", "low");
    else node.removeAttribute("data-low");
  }
}

function focusEntity(id) {
  state.focus = state.focus === id ? null : id;
  for (const mark of document.querySelectorAll("#doc mark[data-id]")) {
    const id2 = mark.getAttribute("data-id");
    const related = state.relations.some(
      (r) => (r.head === state.focus && r.tail === id2) || (r.tail === state.focus && r.head === id2),
    );
    mark.classList.toggle("focused", id2 === state.focus);
    mark.classList.toggle("related", related);
  }
  drawArcs();
}

// Arcs only for the entity in focus: every relation at once is unreadable on a medication list.
function drawArcs() {
  const svg = $("arcs");
  svg.replaceChildren();
  if (!state.focus) return;
  const box = $("doc").getBoundingClientRect();
  svg.setAttribute("width", String(box.width));
  svg.setAttribute("height", String(box.height));
  const centre = (id) => {
    const mark = document.querySelector(`#doc mark[data-id="${CSS.escape(id)}"]`);
    if (!mark) return null;
    const r = mark.getClientRects()[0];
    return r ? { x: r.left - box.left + r.width / 2, y: r.top - box.top } : null;
  };
  const ns = "http://www.w3.org/2000/svg";
  for (const r of state.relations) {
    if (r.head !== state.focus && r.tail !== state.focus) continue;
    const a = centre(r.head);
    const b = centre(r.tail);
    if (!a || !b) continue;
    const lift = Math.min(40, 12 + Math.abs(b.x - a.x) / 8);
    const path = document.createElementNS(ns, "path");
    path.setAttribute("d", `M${a.x},${a.y} C${a.x},${a.y - lift} ${b.x},${b.y - lift} ${b.x},${b.y}`);
    path.setAttribute("class", "arc");
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", String((a.x + b.x) / 2));
    label.setAttribute("y", String(Math.min(a.y, b.y) - lift + 8));
    label.textContent = r.type;
    svg.append(path, label);
  }
}

function gotoEvidence(range) {
  const [start, end] = range.split(":");
  const mark = document.querySelector(`#doc mark[data-start="${start}"][data-end="${end}"]`);
  if (mark) {
    mark.scrollIntoView({ block: "center" });
    mark.classList.add("focused");
    setTimeout(() => mark.classList.remove("focused"), 1500);
  }
}

// -- wiring -------------------------------------------------------------------------------------
function init() {
  const saved = sessionStorage.getItem(KEY_STORE);
  if (saved) $("key").value = saved;
  $("save-key").addEventListener("click", () => {
    const key = $("key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
    loadTasks();
  });
  $("task").addEventListener("change", showTaskInfo);
  $("note").addEventListener("input", () => {
    state.fileText = null; // edited by hand: the text area is the note now
  });
  $("annotate").addEventListener("click", annotate);
  $("threshold").addEventListener("input", applyThreshold);
  $("file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    state.fileText = await file.text();
    $("note").value = state.fileText;
    say(`${file.name}: ${[...state.fileText].length} characters, sent as read.`);
  });
  document.addEventListener("click", (event) => {
    const target = event.target.closest("[data-focus], #doc mark[data-id], [data-goto]");
    if (!target) return;
    if (target.hasAttribute("data-goto")) gotoEvidence(target.getAttribute("data-goto"));
    else focusEntity(target.getAttribute("data-focus") || target.getAttribute("data-id"));
  });
  document.addEventListener("keydown", (event) => {
    const mark = event.target.closest && event.target.closest("#doc mark[data-id]");
    if (mark && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      focusEntity(mark.getAttribute("data-id"));
    }
  });
  window.addEventListener("resize", drawArcs);
  loadTasks();
}

document.addEventListener("DOMContentLoaded", init);
