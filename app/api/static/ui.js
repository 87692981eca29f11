// medlora's page: calls the service's own public API, shows each answer on its note, and lets a
// reviewer correct it; every correction is saved on the server (/v1/reviews) as it is made.
// Every piece of note or model text goes into the page as a text node (textContent), never as
// HTML; the server's Content-Security-Policy allows no inline script and no other origin.
"use strict";

const ENDPOINTS = { ner: "ner", qa: "qa", classification: "classify", relations: "relations", form: "forms" };
const KEY_STORE = "medlora.key";
const OPEN_STORE = "medlora.open"; // the queue and note open in this tab: ids only, never text
const SAVE_DELAY_MS = 300;

// review: the server's review object; decision: the reviewer's working copy (gold fields);
// history: earlier decisions, for undo; current: the item the keys act on.
// fileText: a file's text exactly as read. A textarea turns CRLF into LF, which would shift
// every offset after the first line break; the file's own text is what is sent.
const state = {
  tasks: [],
  review: null,
  decision: null,
  history: [],
  current: -1,
  accepted: new Set(),
  spans: [],
  relations: [],
  focus: null,
  fileText: null,
  queue: null,
  queueItems: [],
  relationType: null,
  save: { timer: null, running: false, again: false, blocked: false },
};

function $(id) {
  return document.getElementById(id);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === "") continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function say(message, isError) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", Boolean(isError));
}

function saveState(message, isError) {
  const node = $("save-state");
  node.textContent = message;
  node.classList.toggle("error", Boolean(isError));
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

// The code point at or before a UTF-16 offset (a unit inside a surrogate pair belongs to its pair).
function codePointAt(units, unit) {
  let lo = 0;
  let hi = units.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (units[mid] <= unit) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// Every {start, end, text} object anywhere in a record whose text is not what its offsets hold.
function spanMismatches(text, node, found = []) {
  const units = codePointUnits(text);
  const walk = (value, where) => {
    if (Array.isArray(value)) value.forEach((v, i) => walk(v, `${where}[${i}]`));
    else if (value && typeof value === "object") {
      if ("start" in value && "end" in value && "text" in value) {
        if (sliceCodePoints(text, units, value.start, value.end) !== value.text) found.push(`${where} [${value.start}, ${value.end})`);
      }
      for (const [k, v] of Object.entries(value)) if (typeof v === "object") walk(v, where ? `${where}.${k}` : k);
    }
  };
  walk(node, "");
  return found;
}

// -- API ----------------------------------------------------------------------------------------
async function api(path, body, method) {
  const headers = { accept: "application/json" };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.authorization = "Bearer " + key;
  const init = { method: method || (body === undefined ? "GET" : "POST"), headers, cache: "no-store" };
  if (body instanceof FormData) {
    init.body = body; // multipart: the browser writes its content type and boundary
  } else if (body !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const type = response.headers.get("content-type") || "";
  let payload = null;
  if (type.includes("json")) {
    try {
      payload = await response.json();
    } catch (_) {
      payload = null;
    }
  } else {
    payload = await response.text();
  }
  if (!response.ok) {
    const detail = payload && (payload.detail || payload.title);
    const error = new Error(`${response.status}: ${detail || response.statusText}`);
    error.status = response.status;
    error.problem = payload;
    throw error;
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
  await loadQueues();
  await restoreOpen();
}

function taskNamed(name) {
  return state.tasks.find((task) => task.name === name);
}

function currentTask() {
  return taskNamed($("task").value);
}

function reviewTask() {
  return state.review ? taskNamed(state.review.task) : null;
}

function showTaskInfo() {
  const task = currentTask();
  $("question-row").hidden = !task || task.type !== "qa";
  $("task-info").textContent = task ? `${task.type}; labels: ${task.labels.join(", ") || "none"}` : "";
  const link = $("report-link");
  link.replaceChildren();
  if (task && task.adapter_report) {
    const name = `${task.adapter.name}@${task.adapter.version}`;
    link.append(el("button", { type: "button", id: "eval-report", "data-report": task.adapter_report }, `Evaluation report of ${name}`));
  }
}

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

// Fetched with the key (a plain link could not carry it) and saved as the one self-contained
// file it is, to open offline.
async function downloadReport(path) {
  const task = currentTask();
  try {
    const page = await api(path.replace(/^\//, ""));
    download(new Blob([page], { type: "text/html" }), `${task.adapter.name}@${task.adapter.version}-report.html`);
  } catch (error) {
    say(`The report could not be fetched (${error.message}).`, true);
  }
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
    const created = await api(`v1/reviews/annotate/${ENDPOINTS[task.type]}`, body);
    const review = created.data[0];
    await openQueue(created.queue, review.id);
    say(`Done in ${Math.round(performance.now() - started)} ms (${review.model.adapter}@${review.model.adapter_version}); kept for review.`);
  } catch (error) {
    say(`The service refused: ${error.message}`, true);
  } finally {
    button.disabled = false;
  }
}

// -- queues -----------------------------------------------------------------------------------
async function loadQueues() {
  let queues = [];
  try {
    queues = (await api("v1/reviews/queues")).data;
  } catch (error) {
    say(`Review queues could not be loaded (${error.message}).`, true);
    return;
  }
  const picker = $("queues");
  const chosen = picker.value;
  picker.replaceChildren(
    ...queues.map((q) => el("option", { value: q.queue }, `${q.queue} (${q.task}): ${q.reviewed}/${q.total} reviewed`)),
  );
  if (chosen) picker.value = chosen;
}

async function openQueue(queue, reviewId) {
  state.queue = queue;
  const body = await api(`v1/reviews/queues/${encodeURIComponent(queue)}`);
  state.queueItems = body.data;
  renderQueue(body);
  $("export").disabled = false;
  await loadQueues();
  $("queues").value = queue;
  const next = reviewId || (body.data.find((r) => r.status === "pending") || body.data[0] || {}).id;
  if (next) await openReview(next);
  remember();
}

function renderQueue(body) {
  $("progress").textContent = `${body.queue}: reviewed ${body.reviewed} / ${body.total}`;
  $("queue").replaceChildren(
    ...body.data.map((r) =>
      el(
        "li",
        {
          "data-review": r.id,
          "data-status": r.status,
          "data-confidence": r.min_confidence,
          "aria-current": state.review && state.review.id === r.id ? "true" : null,
        },
        el("button", { type: "button", class: "open-review", "data-open": r.id }, r.source_id),
        ` ${r.status}, lowest confidence ${confidenceText(r.min_confidence)}`,
      ),
    ),
  );
}

async function refreshQueue() {
  if (!state.queue) return;
  const body = await api(`v1/reviews/queues/${encodeURIComponent(state.queue)}`);
  state.queueItems = body.data;
  renderQueue(body);
}

async function openBatch() {
  const batchId = $("batch-id").value.trim();
  if (!batchId) return;
  try {
    const opened = await api("v1/reviews/imports", { batch_id: batchId });
    await openQueue(opened.queue);
    say(`Batch ${opened.queue}: ${opened.total} notes, least certain first.`);
  } catch (error) {
    say(`The batch could not be opened: ${error.message}`, true);
  }
}

async function openAnnotated() {
  const task = currentTask();
  const notes = $("annotate-notes").files[0];
  const output = $("annotate-output").files[0];
  if (!task || !notes || !output) {
    say("Choose the task, the notes file annotate read and the output it wrote.", true);
    return;
  }
  const form = new FormData();
  form.append("task", task.name);
  form.append("notes", notes);
  form.append("annotations", output);
  try {
    const opened = await api("v1/reviews/imports/annotate", form);
    await openQueue(opened.queue);
    const skipped = opened.skipped_count
      ? ` ${opened.skipped_count} line(s) not opened: ${opened.skipped.map((s) => `${s.file} line ${s.line}: ${s.reason}`).join("; ")}`
      : "";
    say(`${opened.total} notes of ${output.name}, least certain first.${skipped}`, Boolean(opened.skipped_count));
  } catch (error) {
    say(`The run could not be opened: ${error.message}`, true);
  }
}

async function openReview(id) {
  await flushSave();
  const review = await api(`v1/reviews/items/${encodeURIComponent(id)}`);
  state.review = review;
  state.decision = structuredClone(review.decision);
  state.history = [];
  state.current = -1;
  state.accepted = new Set();
  state.focus = null;
  state.save.blocked = false;
  const task = reviewTask();
  if (task) $("task").value = task.name;
  showTaskInfo();
  $("mark-reviewed").disabled = false;
  saveState(`${review.status === "reviewed" ? "Reviewed" : "Not reviewed yet"} (version ${review.version}).`);
  show();
  for (const li of document.querySelectorAll("#queue li")) {
    li.setAttribute("aria-current", li.getAttribute("data-review") === id ? "true" : "false");
  }
  remember();
}

function remember() {
  const open = { queue: state.queue, review: state.review ? state.review.id : null };
  sessionStorage.setItem(OPEN_STORE, JSON.stringify(open));
}

async function restoreOpen() {
  let open = null;
  try {
    open = JSON.parse(sessionStorage.getItem(OPEN_STORE) || "null");
  } catch (_) {
    open = null;
  }
  if (!open || !open.queue) return;
  try {
    await openQueue(open.queue, open.review || undefined);
  } catch (error) {
    say(`The note open before could not be reopened (${error.message}).`, true);
  }
}

// -- saving -----------------------------------------------------------------------------------
function scheduleSave() {
  clearTimeout(state.save.timer);
  state.save.timer = setTimeout(runSave, SAVE_DELAY_MS);
  saveState("Changed; saving...");
}

async function flushSave() {
  if (state.save.timer) {
    clearTimeout(state.save.timer);
    state.save.timer = null;
    await runSave();
  }
  await saveSettled();
}

async function saveSettled() {
  while (state.save.running) await new Promise((resolve) => setTimeout(resolve, 20));
}

// One save at a time, each naming the version it edits: a tab that is behind gets a conflict
// and is told so, instead of overwriting what another tab saved.
async function runSave(status) {
  state.save.timer = null;
  if (!state.review || state.save.blocked) return false;
  if (state.save.running) {
    state.save.again = true;
    return false;
  }
  const text = sourceText();
  const mismatches = spanMismatches(text, state.decision);
  if (mismatches.length) {
    saveState(`Not saved: offsets do not match their text at ${mismatches.join("; ")}.`, true);
    return false;
  }
  state.save.running = true;
  const review = state.review;
  try {
    const saved = await api(
      `v1/reviews/items/${encodeURIComponent(review.id)}`,
      { version: review.version, decision: state.decision, status: status || review.status },
      "PUT",
    );
    // The page keeps its own working copy (state.decision); the review gives the version.
    if (state.review && state.review.id === saved.id) state.review = saved;
    saveState(`Saved (version ${saved.version}${saved.status === "reviewed" ? ", reviewed" : ""}).`);
    return true;
  } catch (error) {
    if (error.status === 409) {
      state.save.blocked = true;
      saveState(`Not saved: this note was changed in another tab (now version ${error.problem.current_version}). Reopen it to see that version.`, true);
    } else {
      saveState(`Not saved: ${error.message}`, true);
    }
    return false;
  } finally {
    state.save.running = false;
    if (state.save.again) {
      state.save.again = false;
      scheduleSave();
    }
  }
}

async function markReviewed() {
  if (!state.review) return;
  clearTimeout(state.save.timer);
  await saveSettled();
  if (!(await runSave("reviewed"))) return;
  await refreshQueue();
  await loadQueues();
  const next = state.queueItems.find((r) => r.status === "pending" && r.id !== state.review.id);
  if (next) await openReview(next.id);
}

// -- the decision, and changes to it -----------------------------------------------------------
function sourceField(task) {
  return task.type === "qa" ? "context" : "text";
}

function sourceText() {
  const task = reviewTask();
  return state.review.input[sourceField(task)];
}

function change(mutate) {
  if (!state.review) return;
  state.history.push(JSON.stringify(state.decision));
  mutate(state.decision);
  $("undo").disabled = false;
  show();
  scheduleSave();
}

function undo() {
  if (!state.history.length) return;
  state.decision = JSON.parse(state.history.pop());
  $("undo").disabled = state.history.length === 0;
  show();
  scheduleSave();
}

function bounds() {
  return state.review.bounds;
}

// The selection in the note as code point offsets, snapped as grounding snaps: whitespace
// trimmed, then out to the nearest word boundaries. Null when nothing of the note is selected.
function selectedSpan() {
  const selection = window.getSelection();
  const root = document.querySelector("#doc .text");
  if (!selection || !selection.rangeCount || !root) return null;
  const range = selection.getRangeAt(0);
  if (range.collapsed || !root.contains(range.startContainer) || !root.contains(range.endContainer)) return null;
  const unitsTo = (container, offset) => {
    const before = document.createRange();
    before.selectNodeContents(root);
    before.setEnd(container, offset);
    return before.toString().length;
  };
  const text = sourceText();
  const units = codePointUnits(text);
  let start = codePointAt(units, unitsTo(range.startContainer, range.startOffset));
  const endUnit = unitsTo(range.endContainer, range.endOffset);
  let end = codePointAt(units, endUnit);
  if (units[end] < endUnit) end += 1; // an end inside a surrogate pair takes the whole pair
  const chars = [...text];
  while (start < end && /\s/.test(chars[start])) start += 1;
  while (end > start && /\s/.test(chars[end - 1])) end -= 1;
  if (start >= end) return null;
  const edges = bounds();
  start = Math.max(...edges.filter((b) => b <= start));
  end = Math.min(...edges.filter((b) => b >= end));
  return { start, end, text: sliceCodePoints(text, units, start, end) };
}

function spanText(start, end) {
  const text = sourceText();
  return sliceCodePoints(text, codePointUnits(text), start, end);
}

// The next word boundary from `at` in `direction` (+1 or -1) that keeps the span non-empty and
// free of edge whitespace, or `at` itself when there is none.
function nextEdge(at, direction, other, isStart) {
  const edges = bounds();
  const ordered = direction > 0 ? edges.filter((b) => b > at) : edges.filter((b) => b < at).reverse();
  for (const edge of ordered) {
    const [s, e] = isStart ? [edge, other] : [other, edge];
    if (s >= e) return at;
    const piece = spanText(s, e);
    if (piece !== null && piece === piece.trim()) return edge;
  }
  return at;
}

function entities() {
  return state.decision.entities || [];
}

function newEntityId() {
  const used = new Set(entities().map((e) => e.id));
  let n = entities().length + 1;
  while (used.has(`r${n}`)) n += 1;
  return `r${n}`;
}

function addSpan() {
  const task = reviewTask();
  const span = selectedSpan();
  if (!task || !span) {
    saveState("Select some text of the note first.", true);
    return;
  }
  if (task.type === "ner" || task.type === "relations") {
    const label = $("new-label") ? $("new-label").value : task.labels[0];
    const entity = { start: span.start, end: span.end, text: span.text, label, attributes: Object.fromEntries(task.attributes.map((a) => [a, false])) };
    if (task.type === "relations") entity.id = newEntityId();
    change((d) => {
      d.entities.push(entity);
      d.entities.sort((a, b) => a.start - b.start || a.end - b.end);
    });
    state.current = entities().indexOf(entities().find((e) => e.start === entity.start && e.end === entity.end && e.label === label));
    show();
  } else if (task.type === "qa") {
    change((d) => {
      d.answer = span;
    });
  }
}

function currentEntity() {
  return entities()[state.current] || null;
}

function deleteCurrent() {
  const task = reviewTask();
  if (!task || state.current < 0) return;
  if (task.type === "form") {
    setUnknown(state.decision.items[state.current].name);
    return;
  }
  const entity = currentEntity();
  if (!entity) return;
  change((d) => {
    d.entities.splice(state.current, 1);
    if (d.relations) d.relations = d.relations.filter((r) => r.head !== entity.id && r.tail !== entity.id);
  });
  state.current = Math.min(state.current, entities().length - 1);
  show();
}

function relabel(label) {
  const entity = currentEntity();
  if (!entity || entity.label === label) return;
  const index = state.current;
  change((d) => {
    d.entities[index].label = label;
  });
}

function cycleLabel() {
  const task = reviewTask();
  const entity = currentEntity();
  if (!task || !entity) return;
  relabel(task.labels[(task.labels.indexOf(entity.label) + 1) % task.labels.length]);
}

function moveEdge(isStart, direction) {
  const entity = currentEntity();
  if (!entity) return;
  const at = isStart ? entity.start : entity.end;
  const edge = nextEdge(at, direction, isStart ? entity.end : entity.start, isStart);
  if (edge === at) return;
  const index = state.current;
  change((d) => {
    const e = d.entities[index];
    if (isStart) e.start = edge;
    else e.end = edge;
    e.text = spanText(e.start, e.end);
  });
}

function toggleAttribute(name) {
  const index = state.current;
  if (!currentEntity()) return;
  change((d) => {
    const attributes = d.entities[index].attributes || {};
    attributes[name] = !attributes[name];
    d.entities[index].attributes = attributes;
  });
}

function addRelation(type, head, tail) {
  if (!type || !head || !tail || head === tail) return;
  if ((state.decision.relations || []).some((r) => r.type === type && r.head === head && r.tail === tail)) return;
  change((d) => {
    d.relations.push({ type, head, tail });
  });
}

function deleteRelation(index) {
  change((d) => {
    d.relations.splice(index, 1);
  });
}

function formItem(name) {
  return state.decision.items.find((item) => item.name === name);
}

function setUnknown(name) {
  change(() => {
    Object.assign(formItem(name), { status: "unknown", value: null, evidence: [] });
  });
}

function setValue(name, value) {
  change(() => {
    const item = formItem(name);
    item.status = "filled";
    item.value = value;
  });
}

function setEvidence(name) {
  const span = selectedSpan();
  if (!span) {
    saveState("Select the evidence in the note first.", true);
    return;
  }
  const spec = taskItemSpec(name);
  change(() => {
    const item = formItem(name);
    item.evidence = [span];
    if (spec && spec.kind === "text") {
      item.value = span.text;
      item.status = "filled";
    }
  });
}

function taskItemSpec(name) {
  const task = reviewTask();
  return task && task.items ? task.items.find((item) => item.name === name) : null;
}

function setLabels(labels) {
  change((d) => {
    d.labels = labels;
  });
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

function sameSpan(a, b) {
  return a.start === b.start && a.end === b.end;
}

// The model's confidence in what the decision holds, where the decision kept the model's answer;
// null for what a reviewer added or changed.
function modelEntityConfidence(entity) {
  const found = (state.review.answer.entities || []).find((e) => sameSpan(e, entity) && e.label === entity.label);
  return found ? found.confidence : null;
}

function modelItem(name) {
  return (state.review.answer.items || []).find((item) => item.name === name) || null;
}

// The spans of the decision, whatever its type: {start, end, text, label, confidence, index, id?, flags}.
function decisionSpans(task) {
  const d = state.decision;
  if (task.type === "qa") {
    const a = d.answer;
    const model = state.review.answer.answer;
    return a ? [{ ...a, label: "ANSWER", index: 0, confidence: model && sameSpan(model, a) ? model.confidence : null }] : [];
  }
  if (task.type === "ner" || task.type === "relations") {
    return d.entities.map((e, index) => ({ ...e, index, flags: flags(e.attributes), confidence: modelEntityConfidence(e) }));
  }
  if (task.type === "form") {
    return d.items.flatMap((item, index) =>
      item.evidence.map((ev) => ({ ...ev, label: item.name, item: item.name, index, confidence: (modelItem(item.name) || {}).confidence })),
    );
  }
  return [];
}

function show() {
  const task = reviewTask();
  if (!task || !state.decision) return;
  const text = sourceText();
  const units = codePointUnits(text);
  const mismatches = [];
  const spans = [];
  for (const span of decisionSpans(task)) {
    if (sliceCodePoints(text, units, span.start, span.end) !== span.text) {
      mismatches.push(`[${span.start}, ${span.end}) ${span.label}`);
    } else {
      spans.push(span);
    }
  }
  state.spans = spans;
  state.relations = task.type === "relations" ? state.decision.relations : [];
  const counts = new Map();
  for (const r of state.relations) {
    counts.set(r.head, (counts.get(r.head) || 0) + 1);
    counts.set(r.tail, (counts.get(r.tail) || 0) + 1);
  }
  renderText(text, units, spans, counts);
  renderSide(task);
  $("mismatches").textContent = mismatches.length
    ? `Not shown: ${mismatches.length} span(s) whose offsets do not match their text: ${mismatches.join("; ")}`
    : "";
  applyThreshold();
  markCurrent();
  drawArcs();
}

function markFor(span, relationCount) {
  return el("mark", {
    "data-start": span.start,
    "data-end": span.end,
    "data-label": span.label,
    "data-id": span.id,
    "data-index": span.index,
    "data-flags": span.flags || null,
    "data-item": span.item,
    "data-confidence": typeof span.confidence === "number" ? span.confidence : null,
    "data-relations": relationCount ? `${relationCount} rel` : null,
    "data-accepted": state.accepted.has(span.index) ? "yes" : null,
    title: `${span.label}${span.flags ? " (" + span.flags + ")" : ""}, confidence ${confidenceText(span.confidence)}`,
    tabindex: span.id ? 0 : null,
  });
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
    const mark = markFor(span, counts.get(span.id));
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
          const mark = markFor(span, counts.get(span.id));
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

function labelPicker(id, labels, chosen) {
  return el("select", { id }, ...labels.map((label) => el("option", { value: label, selected: label === chosen }, label)));
}

function renderSide(task) {
  const side = $("side");
  side.replaceChildren();
  if (task.type === "ner" || task.type === "relations") {
    renderEntityTools(side, task);
    if (task.type === "relations") renderRelations(side, task);
  } else if (task.type === "qa") {
    const a = state.decision.answer;
    side.append(
      el("h2", {}, "Answer"),
      el("p", { "data-answer": a ? "found" : "none" }, a ? a.text : "No answer in the note.", a ? ` (confidence ${confidenceText((state.spans[0] || {}).confidence)})` : ""),
      el("div", { class: "row" },
        el("button", { type: "button", id: "answer-from-selection" }, "Answer: the selected text"),
        el("button", { type: "button", id: "no-answer" }, "No answer"),
      ),
    );
  } else if (task.type === "classification") {
    const scores = state.review.answer.scores || {};
    const chosen = new Set(state.decision.labels);
    side.append(
      el("h2", {}, "Classes"),
      el(
        "ul",
        { class: "classes" },
        ...task.labels.map((label) =>
          el(
            "li",
            { "data-class": label, "data-confidence": scores[label], "data-chosen": chosen.has(label) ? "yes" : "no" },
            el("label", {},
              el("input", { type: task.multi_label ? "checkbox" : "radio", name: "class", value: label, checked: chosen.has(label), "data-choose-class": label }),
              chosen.has(label) ? " chosen: " : " ",
              label,
            ),
            ` ${confidenceText(scores[label])}`,
          ),
        ),
      ),
    );
  } else if (task.type === "form") {
    renderForm(side, task);
  }
}

function renderEntityTools(side, task) {
  const entity = currentEntity();
  const tools = el("div", { class: "tools", id: "span-tools" },
    el("h2", {}, `${entities().length} entities`),
    el("div", { class: "row" },
      el("label", { for: "new-label" }, "New span label"),
      labelPicker("new-label", task.labels, task.labels[0]),
      el("button", { type: "button", id: "add-span" }, "Add selected text (s)"),
    ),
  );
  if (entity) {
    tools.append(
      el("div", { class: "row current-tools", "aria-label": "The current entity" },
        el("strong", {}, `Current: ${entity.text}`),
        el("label", { for: "relabel" }, "label"),
        labelPicker("relabel", task.labels, entity.label),
        el("button", { type: "button", id: "accept" }, "Accept (a)"),
        el("button", { type: "button", id: "delete" }, "Delete (d)"),
        el("button", { type: "button", id: "widen-start", title: "[" }, "⟵ start"),
        el("button", { type: "button", id: "narrow-start", title: "{" }, "start ⟶"),
        el("button", { type: "button", id: "narrow-end", title: "}" }, "⟵ end"),
        el("button", { type: "button", id: "widen-end", title: "]" }, "end ⟶"),
      ),
      el("div", { class: "row" },
        ...task.attributes.map((name) =>
          el("label", {}, el("input", { type: "checkbox", "data-attribute": name, checked: Boolean((entity.attributes || {})[name]) }), ` ${name}`),
        ),
      ),
    );
  }
  side.append(tools);
  if (task.type === "ner") {
    side.append(
      el(
        "ol",
        { class: "entities" },
        ...state.spans.map((span) =>
          el(
            "li",
            { "data-confidence": span.confidence, "data-entity": span.index, "aria-current": span.index === state.current ? "true" : null },
            el("button", { type: "button", class: "evidence", "data-select": span.index }, span.text),
            ` ${span.label}${span.flags ? " (" + span.flags + ")" : ""} ${span.confidence === null ? "added or edited" : confidenceText(span.confidence)}`,
            state.accepted.has(span.index) ? " accepted" : "",
          ),
        ),
      ),
    );
  }
}

function renderRelations(side, task) {
  side.append(el("h2", {}, `${state.relations.length} relations, by head entity`));
  const heads = [...new Set(state.relations.map((r) => r.head))].sort(
    (a, b) => state.spans.findIndex((s) => s.id === a) - state.spans.findIndex((s) => s.id === b),
  );
  const modelRelations = state.review.answer.relations || [];
  const groups = heads.map((head) =>
    el(
      "li",
      { "data-group": head },
      el("button", { type: "button", class: "focus", "data-focus": head }, entityName(head)),
      el(
        "ul",
        {},
        ...state.relations
          .map((r, index) => [r, index])
          .filter(([r]) => r.head === head)
          .map(([r, index]) => {
            const model = modelRelations.find((m) => m.type === r.type && m.head === r.head && m.tail === r.tail);
            return el(
              "li",
              { "data-relation": r.type, "data-head": r.head, "data-tail": r.tail, "data-confidence": model ? model.confidence : null },
              `${r.type} → ${entityName(r.tail)} `,
              el("span", { class: "conf" }, model ? confidenceText(model.confidence) : "added"),
              " ",
              el("button", { type: "button", "data-delete-relation": index, "aria-label": `Delete ${r.type} relation` }, "delete"),
            );
          }),
      ),
    ),
  );
  side.append(el("ul", { class: "relations" }, ...groups));
  // Only what the task allows: types whose head takes this entity's label, tails of that type's labels.
  const entity = currentEntity();
  const types = (task.relation_types || []).filter((t) => entity && t.head.includes(entity.label));
  if (entity && entity.id && types.length) {
    const type = types.find((t) => t.name === state.relationType) || types[0];
    const tails = state.spans.filter((s) => s.id && s.id !== entity.id && type.tail.includes(s.label));
    side.append(
      el("div", { class: "row", id: "relation-tools" },
        el("span", {}, `New relation from ${entity.text}:`),
        labelPicker("relation-type", types.map((t) => t.name), type.name),
        el("select", { id: "relation-tail", "aria-label": "Tail entity" },
          ...tails.map((s) => el("option", { value: s.id }, `${s.text} (${s.label})`)),
        ),
        el("button", { type: "button", id: "add-relation", disabled: tails.length ? null : true }, "Add relation"),
      ),
    );
  }
}

function formValue(value) {
  if (value === null || value === undefined) return "unknown";
  if (Array.isArray(value)) return value.join(", ");
  return String(value);
}

function valueEditor(item, spec) {
  const attrs = { "data-edit-value": item.name, "aria-label": `Value of ${item.name}` };
  if (!spec) return el("span", {});
  if (spec.kind === "boolean" || spec.kind === "choice") {
    const options = spec.kind === "boolean" ? ["true", "false"] : spec.options;
    const current = Array.isArray(item.value) ? item.value.map(String) : item.value === null ? [] : [String(item.value)];
    return el("select", { ...attrs, multiple: spec.multiple ? true : null },
      spec.multiple ? null : el("option", { value: "" }, "(choose)"),
      ...options.map((o) => el("option", { value: o, selected: current.includes(o) }, o)),
    );
  }
  if (spec.kind === "integer" || spec.kind === "decimal") {
    const step = spec.kind === "integer" ? 1 : 1 / 10 ** (spec.decimals || 0);
    return el("input", { ...attrs, type: "number", min: spec.min, max: spec.max, step, value: item.value === null ? "" : item.value });
  }
  if (spec.kind === "date") {
    return el("input", { ...attrs, type: "text", placeholder: "YYYY-MM-DD", pattern: "\\d{4}-\\d{2}-\\d{2}", value: item.value || "" });
  }
  return el("span", { class: "hint" }, "the evidence's text");
}

function readValue(input, spec) {
  if (spec.kind === "choice" && spec.multiple) return [...input.selectedOptions].map((o) => o.value);
  const raw = input.value.trim();
  if (raw === "") return null;
  if (spec.kind === "boolean") return raw === "true";
  if (spec.kind === "integer" || spec.kind === "decimal") return Number(raw);
  return raw;
}

function renderForm(side, task) {
  const rows = state.decision.items.map((item, index) => {
    const model = modelItem(item.name) || { alternatives: [], conflict: false };
    const spec = taskItemSpec(item.name);
    const evidence = item.evidence.map((ev) =>
      el("button", { type: "button", class: "evidence", "data-goto": `${ev.start}:${ev.end}` }, ev.text),
    );
    const alternatives = (model.alternatives || []).length
      ? el("div", { class: "alternatives" }, "also: ", model.alternatives.map((a) => `${formValue(a.value)} (${confidenceText(a.confidence)})`).join("; "))
      : "";
    return el(
      "tr",
      { "data-item": item.name, "data-status": item.status, "data-confidence": model.confidence, "aria-current": index === state.current ? "true" : null },
      el("th", { scope: "row" }, item.name),
      el("td", {}, el("span", { "data-value": "" }, formValue(item.value)), model.conflict ? el("strong", { class: "conflict" }, " conflict") : "",
        model.evidence_mismatch ? el("strong", { class: "conflict", "data-mismatch": "" }, " not what its evidence says") : "", alternatives,
        el("div", { class: "edit" }, valueEditor(item, spec))),
      el("td", {}, item.status),
      el("td", {}, confidenceText(model.confidence)),
      el("td", {}, ...evidence,
        el("button", { type: "button", "data-evidence-from-selection": item.name }, "evidence: selection"),
        el("button", { type: "button", "data-set-unknown": item.name }, "unknown"),
      ),
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

// -- current item, threshold, focus and arcs ---------------------------------------------------
function itemCount() {
  const task = reviewTask();
  if (!task || !state.decision) return 0;
  if (task.type === "form") return state.decision.items.length;
  return (state.decision.entities || []).length;
}

function markCurrent() {
  for (const mark of document.querySelectorAll("#doc mark, #overlaps mark")) {
    const current = Number(mark.getAttribute("data-index")) === state.current;
    mark.classList.toggle("current", current);
    if (current) mark.setAttribute("aria-current", "true");
    else mark.removeAttribute("aria-current");
  }
}

function select(index) {
  const count = itemCount();
  if (!count) return;
  state.current = Math.max(0, Math.min(count - 1, index));
  const entity = currentEntity();
  if (entity && entity.id) state.focus = entity.id;
  show();
  const mark = document.querySelector(`#doc mark[data-index="${state.current}"]`);
  if (mark) mark.scrollIntoView({ block: "nearest" });
}

function accept() {
  if (state.current < 0) {
    select(0);
    return;
  }
  state.accepted.add(state.current);
  select(state.current + 1);
}

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
  const index = entities().findIndex((e) => e.id === id);
  if (index >= 0 && state.focus) state.current = index;
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

// -- export -------------------------------------------------------------------------------------
async function exportQueue() {
  if (!state.queue) return;
  await flushSave();
  const body = await api(`v1/reviews/queues/${encodeURIComponent(state.queue)}/export`);
  const lines = String(body).split("\n").filter((line) => line.trim());
  // Checked here too: every span of every record must be what its offsets hold in its note.
  const bad = [];
  for (const line of lines) {
    const record = JSON.parse(line);
    const text = typeof record.text === "string" ? record.text : record.context;
    const { review, ...gold } = record;
    if (spanMismatches(text, gold).length) bad.push(record.id);
  }
  if (bad.length) {
    say(`Not exported: ${bad.length} record(s) whose offsets do not match their text (${bad.join(", ")}).`, true);
    return;
  }
  const blob = new Blob([lines.map((line) => line + "\n").join("")], { type: "application/octet-stream" });
  download(blob, `${state.queue}.reviewed.jsonl`);
  say(`Exported ${lines.length} reviewed note(s) of ${state.queue}.`);
}

// -- wiring -------------------------------------------------------------------------------------
function typing(target) {
  return target.closest && target.closest("input, textarea, select");
}

const KEYS = {
  j: () => select(state.current + 1),
  k: () => select(state.current - 1),
  a: accept,
  d: deleteCurrent,
  Delete: deleteCurrent,
  l: cycleLabel,
  "[": () => moveEdge(true, -1),
  "{": () => moveEdge(true, +1),
  "]": () => moveEdge(false, +1),
  "}": () => moveEdge(false, -1),
  s: addSpan,
  z: undo,
  r: markReviewed,
};

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
  $("open-queue").addEventListener("click", () => $("queues").value && openQueue($("queues").value));
  $("open-batch").addEventListener("click", openBatch);
  $("open-annotated").addEventListener("click", openAnnotated);
  $("export").addEventListener("click", exportQueue);
  $("undo").addEventListener("click", undo);
  $("mark-reviewed").addEventListener("click", markReviewed);
  $("file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    state.fileText = await file.text();
    $("note").value = state.fileText;
    say(`${file.name}: ${[...state.fileText].length} characters, sent as read.`);
  });
  document.addEventListener("click", (event) => {
    const target = event.target.closest(
      "[data-focus], #doc mark, #overlaps mark, [data-goto], [data-open], [data-select], [data-delete-relation], " +
        "[data-set-unknown], [data-evidence-from-selection], [data-report], button[id]",
    );
    if (!target) return;
    const id = target.id;
    const actions = {
      "add-span": addSpan,
      accept,
      delete: deleteCurrent,
      "widen-start": () => moveEdge(true, -1),
      "narrow-start": () => moveEdge(true, +1),
      "widen-end": () => moveEdge(false, +1),
      "narrow-end": () => moveEdge(false, -1),
      "add-relation": () => addRelation($("relation-type").value, (currentEntity() || {}).id, $("relation-tail").value),
      "answer-from-selection": addSpan,
      "no-answer": () => change((d) => { d.answer = null; }),
    };
    if (actions[id]) actions[id]();
    else if (target.hasAttribute("data-report")) downloadReport(target.getAttribute("data-report"));
    else if (target.hasAttribute("data-open")) openReview(target.getAttribute("data-open"));
    else if (target.hasAttribute("data-goto")) gotoEvidence(target.getAttribute("data-goto"));
    else if (target.hasAttribute("data-select")) select(Number(target.getAttribute("data-select")));
    else if (target.hasAttribute("data-delete-relation")) deleteRelation(Number(target.getAttribute("data-delete-relation")));
    else if (target.hasAttribute("data-set-unknown")) setUnknown(target.getAttribute("data-set-unknown"));
    else if (target.hasAttribute("data-evidence-from-selection")) setEvidence(target.getAttribute("data-evidence-from-selection"));
    else if (target.hasAttribute("data-focus")) focusEntity(target.getAttribute("data-focus"));
    else if (target.matches("mark")) {
      if (target.hasAttribute("data-id")) focusEntity(target.getAttribute("data-id"));
      const index = Number(target.getAttribute("data-index"));
      if (Number.isInteger(index) && window.getSelection().isCollapsed) {
        state.current = index;
        show();
      }
    }
  });
  document.addEventListener("change", (event) => {
    const target = event.target;
    if (target.id === "relabel") relabel(target.value);
    else if (target.id === "relation-type") {
      state.relationType = target.value;
      show();
    }
    else if (target.hasAttribute("data-attribute")) toggleAttribute(target.getAttribute("data-attribute"));
    else if (target.hasAttribute("data-choose-class")) {
      setLabels([...document.querySelectorAll("[data-choose-class]")].filter((box) => box.checked).map((box) => box.value));
    } else if (target.hasAttribute("data-edit-value")) {
      const name = target.getAttribute("data-edit-value");
      if (!target.checkValidity()) {
        // Within the kind's bounds, or not at all: the item keeps its value.
        saveState(`Not saved: ${name}: ${target.validationMessage}`, true);
        return;
      }
      const value = readValue(target, taskItemSpec(name));
      if (value === null || (Array.isArray(value) && !value.length)) setUnknown(name);
      else setValue(name, value);
    }
  });
  document.addEventListener("keydown", (event) => {
    if (typing(event.target) || event.ctrlKey || event.metaKey || event.altKey) {
      if ((event.ctrlKey || event.metaKey) && event.key === "z" && !typing(event.target)) {
        event.preventDefault();
        undo();
      }
      return;
    }
    const mark = event.target.closest && event.target.closest("#doc mark[data-id]");
    if (mark && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      focusEntity(mark.getAttribute("data-id"));
      return;
    }
    const action = KEYS[event.key];
    if (action && state.review) {
      event.preventDefault();
      action();
    }
  });
  window.addEventListener("resize", drawArcs);
  window.addEventListener("beforeunload", (event) => {
    if (state.save.timer || state.save.running) event.preventDefault();
  });
  loadTasks();
}

document.addEventListener("DOMContentLoaded", init);
