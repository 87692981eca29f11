"""Review in the page, in real headless Chromium against `medlora serve` on real vLLM with the
shipped demo: corrections made with the mouse and the keyboard are saved on the server as they
are made, survive a reload and a restart, and export as what `medlora train` and `medlora eval`
read (the export trains an adapter that the service then switches to); a batch opens least
certain first; a tab that is behind is told so instead of overwriting; a 30,000-character letter
with hundreds of marks renders in a measured time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from app.settings import DEMO_BASE_NAME, DEMO_DIR, REPO_ROOT
from app.tasks.manifests import load_tasks
from app.training.datasets import load_records, model_outputs
from tests.conftest import SCHEMAS_DIR, TASKS_DIR
from tests.e2e.conftest import LiveServer, free_port, recording_client, server_env, start_server, stop
from tests.e2e.test_live_ui import NOTES, QUESTION, annotate_in_page, marks, open_page, shoot

pytestmark = pytest.mark.e2e

LONG_LINE = (
    "Giorno {i}: febbre 38,{j} °C e tosse produttiva; in terapia con amoxicillina 1 g ogni 8 ore "
    "e paracetamolo 1000 mg al bisogno. "
)


@pytest.fixture(scope="module")
def api(demo_server: LiveServer) -> Iterator[httpx.Client]:
    # The recording client: what it sends is scanned for in the server's logs too.
    with recording_client(demo_server.url, timeout=900) as client:
        yield client


@contextmanager
def review_server(work: Path) -> Iterator[LiveServer]:
    """The shipped demo, its review store in `work` (kept across restarts)."""
    port = free_port()
    log_path = work / f"server-{port}.log"
    argv = [sys.executable, "-m", "app.cli", "serve"]
    proc, probes, seconds = start_server(argv, server_env(work, port), REPO_ROOT, log_path, port)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", DEMO_DIR / DEMO_BASE_NAME, None, log_path, seconds, probes)
    finally:
        stop(proc)


def medlora(*args: str) -> None:
    """A `medlora` command, as a user runs it; its output shown if it fails."""
    ran = subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=900
    )
    assert ran.returncode == 0, (args[0], ran.stderr[-3000:])


def saved(browser: WebDriver) -> str:
    """Wait until the page has saved what it holds; the save state it shows."""
    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "save-state").text.startswith(("Saved", "Not")))
    text = str(browser.find_element(By.ID, "save-state").text)
    assert text.startswith("Saved"), text
    return text


def press(browser: WebDriver, keys: str) -> None:
    """Keys typed with the note focused, one after the other."""
    doc = browser.find_element(By.ID, "doc")
    browser.execute_script("arguments[0].focus()", doc)
    for key in keys:
        browser.execute_script(
            "arguments[0].dispatchEvent(new KeyboardEvent('keydown', {key: arguments[1], bubbles: true}))", doc, key
        )


def select_text(browser: WebDriver, start: int, end: int) -> None:
    """Select [start, end) (code points) of the note in the page, as a mouse would."""
    browser.execute_script(
        """
        const root = document.querySelector('#doc .text');
        const text = root.textContent;
        const units = [0]; let at = 0; for (const c of text) { at += c.length; units.push(at); }
        const point = (unit) => {
          const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
          let seen = 0, node;
          while ((node = walker.nextNode())) {
            if (seen + node.length >= unit) return [node, unit - seen];
            seen += node.length;
          }
        };
        const range = document.createRange();
        range.setStart(...point(units[arguments[0]])); range.setEnd(...point(units[arguments[1]]));
        const selection = window.getSelection(); selection.removeAllRanges(); selection.addRange(range);
        """,
        start,
        end,
    )


def type_into(browser: WebDriver, selector: str, value: str) -> None:
    """Replace a field's value by typing, then leave it (Tab), which commits it."""
    browser.find_element(By.CSS_SELECTOR, selector).send_keys(Keys.CONTROL, "a")
    browser.find_element(By.CSS_SELECTOR, selector).send_keys(value, Keys.TAB)


def open_review(api: httpx.Client, review_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/reviews/items/{review_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def current_review_id(browser: WebDriver) -> str:
    return str(browser.execute_script("return JSON.parse(sessionStorage.getItem('medlora.open')).review"))


def annotated(browser: WebDriver, server: LiveServer, name: str) -> str:
    """The id of the review the page keeps of NOTES[name], annotated through it."""
    open_page(browser, server)
    annotate_in_page(browser, name, NOTES[name])
    return current_review_id(browser)


def shown_entities(browser: WebDriver) -> list[tuple[int, int, str, str]]:
    return sorted((m[0], m[1], m[2], m[3]) for m in marks(browser))


def test_corrections_in_the_page_are_saved_survive_a_restart_and_train_the_next_adapter(
    browser: WebDriver, tmp_path: Path
) -> None:
    name = "re-it-medication"
    note = NOTES[name]
    with review_server(tmp_path) as server, recording_client(server.url) as api:
        open_page(browser, server)
        annotate_in_page(browser, name, note)
        review_id = current_review_id(browser)
        model = open_review(api, review_id)
        entities = model["decision"]["entities"]
        assert len(entities) >= 3, "the demo found too little to correct"
        assert shown_entities(browser) == sorted((e["start"], e["end"], e["label"], e["text"]) for e in entities)

        # Keyboard: to an entity in no relation (a relation's argument keeps the labels its type
        # allows: relabelling one is refused, and the page says why); relabel it (l), widen its
        # end by a word (]); then the next one, deleted (d) with its relations.
        related = {r[side] for r in model["decision"]["relations"] for side in ("head", "tail")}
        index = next(i for i, e in enumerate(entities[:-1]) if e["id"] not in related)
        press(browser, "j" * (index + 1))
        first = entities[index]
        labels = next(t for t in api.get("/v1/tasks").json()["tasks"] if t["name"] == name)["labels"]
        press(browser, "l]")
        press(browser, "jd")
        saved(browser)
        decision = open_review(api, review_id)["decision"]
        relabelled = next(e for e in decision["entities"] if e["start"] == first["start"])
        assert relabelled["label"] == labels[(labels.index(first["label"]) + 1) % len(labels)]
        assert relabelled["end"] > first["end"] and note[relabelled["start"] : relabelled["end"]] == relabelled["text"]
        deleted = entities[index + 1]["id"]
        assert deleted not in {e["id"] for e in decision["entities"]}
        assert all(deleted not in (r["head"], r["tail"]) for r in decision["relations"])

        # Mouse: select a word no entity covers and add it with a chosen label, snapped to words.
        word = "domiciliare"
        start = note.index(word) + 2  # a selection that starts inside the word is snapped to it
        select_text(browser, start, start + 3)
        Select(browser.find_element(By.ID, "new-label")).select_by_value("DRUG")
        browser.find_element(By.ID, "add-span").click()
        saved(browser)
        decision = open_review(api, review_id)["decision"]
        added = next(e for e in decision["entities"] if e["text"] == word)
        at = note.index(word)
        assert (added["start"], added["end"], added["label"]) == (at, at + len(word), "DRUG")

        # A relation from the added entity to another, then one of the model's deleted.
        browser.find_element(By.CSS_SELECTOR, f'mark[data-start="{added["start"]}"]').click()
        # The page offers the types a DRUG heads, and for the chosen type the entities it may point to.
        offered = [o.text for o in Select(browser.find_element(By.ID, "relation-type")).options]
        assert offered == ["dosage", "frequency", "route", "duration"]
        tail = next(e for e in decision["entities"] if e["label"] in ("DOSAGE", "FREQUENCY", "ROUTE", "DURATION"))
        relation_type = tail["label"].lower()
        Select(browser.find_element(By.ID, "relation-type")).select_by_value(relation_type)
        tails = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "relation-tail")).options]
        assert tails == [e["id"] for e in decision["entities"] if e["label"] == tail["label"]]
        Select(browser.find_element(By.ID, "relation-tail")).select_by_value(tail["id"])
        browser.find_element(By.ID, "add-relation").click()
        saved(browser)
        decision = open_review(api, review_id)["decision"]
        assert {"type": relation_type, "head": added["id"], "tail": tail["id"]} in decision["relations"]
        before = len(decision["relations"])
        browser.find_elements(By.CSS_SELECTOR, "[data-delete-relation]")[0].click()
        saved(browser)
        decision = open_review(api, review_id)["decision"]
        assert len(decision["relations"]) == before - 1
        shown = browser.execute_script(
            "return [...document.querySelectorAll('[data-relation]')].map(r => [r.dataset.relation, r.dataset.head, "
            "r.dataset.tail])"
        )
        assert sorted(map(tuple, shown)) == sorted((r["type"], r["head"], r["tail"]) for r in decision["relations"])

        # Undo puts the last relation back, and that is saved too.
        press(browser, "z")
        saved(browser)
        decision = open_review(api, review_id)["decision"]
        assert len(decision["relations"]) == before
        expected = sorted((e["start"], e["end"], e["label"], e["text"]) for e in decision["entities"])
        assert shown_entities(browser) == expected

        # A reload of the page reopens the same note with the corrections.
        browser.refresh()
        WebDriverWait(browser, 30).until(lambda b: len(marks(b)) > 0)
        assert shown_entities(browser) == expected

    # The service restarts on the same store: the corrections are still there.
    with review_server(tmp_path) as server, recording_client(server.url) as api:
        open_page(browser, server)
        Select(browser.find_element(By.ID, "queues")).select_by_value(f"notes-{name}")
        browser.find_element(By.ID, "open-queue").click()
        WebDriverWait(browser, 30).until(lambda b: shown_entities(b) == expected)
        assert open_review(api, review_id)["decision"] == decision

        # Reviewed, then exported from the page: a file that train and eval read.
        press(browser, "r")
        WebDriverWait(browser, 30).until(lambda b: "reviewed 1 / 1" in b.find_element(By.ID, "progress").text)
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        browser.find_element(By.ID, "export").click()
        exported = downloads / f"notes-{name}.reviewed.jsonl"
        WebDriverWait(browser, 30).until(lambda b: exported.exists() and exported.stat().st_size > 0)
        (record,) = [json.loads(line) for line in exported.read_text(encoding="utf-8").splitlines()]
        assert record["review"]["model"]["adapter"] == model["model"]["adapter"]
        assert record["review"]["changes"]["added"] >= 1 and record["review"]["changes"]["deleted"] >= 1
        task = load_tasks(TASKS_DIR, SCHEMAS_DIR)[name]
        (loaded,) = load_records(task, exported)
        assert loaded.payload == {"text": note}
        assert model_outputs(task, loaded)  # what training teaches the model for this note

        # The command line exports the same file.
        by_cli = tmp_path / "cli.jsonl"
        medlora("review", "export", "--queue", f"notes-{name}", "--out", str(by_cli), "--url", server.url)
        assert by_cli.read_bytes() == exported.read_bytes()

        # The loop: train on the export, evaluate it against the current adapter, register, switch.
        adapter = tmp_path / "reviewed-adapter"
        medlora(
            *("train", "--task", name, "--data", str(exported), "--out", str(adapter)),
            *("--model", str(server.base_dir), "--max-steps", "2", "--batch-size", "1", "--version", "reviewed-1"),
        )
        registration = json.loads((adapter / "registration.json").read_text())
        assert api.post("/v1/adapters", json=registration).status_code == 201
        medlora(
            *("eval", "--task", name, "--data", str(exported), "--url", server.url),
            *("--adapter", f"{registration['name']}@{registration['version']}", "--out", str(tmp_path / "eval")),
        )
        assert (tmp_path / "eval" / "report.html").exists()
        assert (adapter / "eval-report.html").read_bytes() == (tmp_path / "eval" / "report.html").read_bytes()
        switched = api.put(
            f"/v1/tasks/{name}/adapter", json={"name": registration["name"], "version": registration["version"]}
        )
        assert switched.status_code == 200, switched.text

        # The page links the report of the task's adapter now in use; it downloads as it was written.
        open_page(browser, server)
        Select(browser.find_element(By.ID, "task")).select_by_value(name)
        browser.find_element(By.ID, "task").send_keys(Keys.TAB)
        report_button = browser.find_element(By.ID, "eval-report")
        assert registration["version"] in report_button.text
        report_button.click()
        report = downloads / f"{registration['name']}@{registration['version']}-report.html"
        WebDriverWait(browser, 30).until(lambda b: report.exists() and report.stat().st_size > 0)
        assert report.read_bytes() == (adapter / "eval-report.html").read_bytes()


@pytest.mark.parametrize("name", list(NOTES))
def test_every_task_types_reviewed_note_exports_as_train_and_eval_read_it(
    demo_server: LiveServer, api: httpx.Client, name: str, tmp_path: Path
) -> None:
    task = load_tasks(TASKS_DIR, SCHEMAS_DIR)[name]
    fields = {"context": NOTES[name], "question": QUESTION} if task.type == "qa" else {"text": NOTES[name]}
    item = {"id": "n", **fields}
    body = {"task": name, task.kind.items_field: [item]}
    created = api.post(f"/v1/reviews/annotate/{task.kind.endpoint}", json=body)
    assert created.status_code == 200, created.text
    review = created.json()["data"][0]
    assert review["decision"] == task.kind.gold_fields(review["answer"])
    saved_review = api.put(
        f"/v1/reviews/items/{review['id']}",
        json={"version": review["version"], "decision": review["decision"], "status": "reviewed"},
    )
    assert saved_review.status_code == 200, saved_review.text
    assert saved_review.json()["changes"]["edited"] == 0 and saved_review.json()["changes"]["added"] == 0
    export = api.get(f"/v1/reviews/queues/notes-{name}/export")
    path = tmp_path / "export.jsonl"
    path.write_bytes(export.content)
    records = {r.id: r for r in load_records(task, path)}
    assert records[review["id"]].payload == review["input"]
    for record in records.values():
        model_outputs(task, record)  # what training would teach for it: no error


def test_a_form_item_is_filled_and_cleared_in_the_page(
    browser: WebDriver, demo_server: LiveServer, api: httpx.Client
) -> None:
    note = NOTES["crf-it-dyspnea"]
    review_id = annotated(browser, demo_server, "crf-it-dyspnea")
    items = {i["name"]: i for i in open_review(api, review_id)["decision"]["items"]}
    filled = next(n for n, i in items.items() if i["status"] == "filled")
    browser.find_element(By.CSS_SELECTOR, f'[data-set-unknown="{filled}"]').click()
    saved(browser)
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-item="{filled}"]')
    assert (row.get_attribute("data-status"), row.find_element(By.CSS_SELECTOR, "[data-value]").text) == (
        "unknown",
        "unknown",
    )
    # dyspnea_days: an integer; its evidence "3 giorni", picked by selecting it in the note.
    start = note.index("3 giorni")
    select_text(browser, start, start + len("3 giorni"))
    browser.find_element(By.CSS_SELECTOR, '[data-evidence-from-selection="dyspnea_days"]').click()
    type_into(browser, '[data-edit-value="dyspnea_days"]', "3")
    saved(browser)
    decision = {i["name"]: i for i in open_review(api, review_id)["decision"]["items"]}
    assert decision[filled] == {"name": filled, "status": "unknown", "value": None, "evidence": []}
    days = decision["dyspnea_days"]
    assert (days["status"], days["value"]) == ("filled", 3)
    assert days["evidence"] == [{"start": start, "end": start + len("3 giorni"), "text": "3 giorni"}]
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-item="dyspnea_days"]')
    assert (row.get_attribute("data-status"), row.find_element(By.CSS_SELECTOR, "[data-value]").text) == ("filled", "3")


def test_a_value_out_of_its_kinds_bounds_is_not_saved_and_the_page_says_why(
    browser: WebDriver, demo_server: LiveServer, api: httpx.Client
) -> None:
    review_id = annotated(browser, demo_server, "crf-it-dyspnea")
    before = open_review(api, review_id)
    type_into(browser, '[data-edit-value="age"]', "999")
    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "save-state").text.startswith("Not saved"))
    assert "age" in browser.find_element(By.ID, "save-state").text  # says which item, and why
    assert open_review(api, review_id)["version"] == before["version"]


def test_a_tab_that_is_behind_is_told_so_and_overwrites_nothing(
    browser: WebDriver, demo_server: LiveServer, api: httpx.Client
) -> None:
    review_id = annotated(browser, demo_server, "ner-it-clinical")
    other_tab = open_review(api, review_id)
    body = {"version": other_tab["version"], "decision": {"entities": []}, "status": "pending"}
    assert api.put(f"/v1/reviews/items/{review_id}", json=body).status_code == 200
    press(browser, "jd")  # this tab, still at the old version, deletes an entity
    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "save-state").text.startswith("Not saved"))
    assert "another tab" in browser.find_element(By.ID, "save-state").text
    assert open_review(api, review_id)["decision"] == {"entities": []}


def run_batch(api: httpx.Client, notes: dict[str, str]) -> str:
    lines = [
        json.dumps(
            {
                "custom_id": note_id,
                "method": "POST",
                "url": "/v1/ner",
                "body": {"task": "ner-it-clinical", "documents": [{"id": note_id, "text": text}]},
            }
        )
        for note_id, text in notes.items()
    ]
    upload = api.post("/v1/files", files={"file": ("in.jsonl", "\n".join(lines).encode())}, data={"purpose": "batch"})
    body = {"input_file_id": upload.json()["id"], "endpoint": "/v1/ner", "completion_window": "24h"}
    batch = api.post("/v1/batches", json=body).json()
    deadline = time.monotonic() + 600
    while (status := api.get(f"/v1/batches/{batch['id']}").json()["status"]) != "completed":
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    return str(batch["id"])


def test_a_batch_opens_in_the_page_least_certain_first(
    browser: WebDriver, demo_server: LiveServer, api: httpx.Client, tmp_path: Path
) -> None:
    notes = {
        "a": NOTES["ner-it-clinical"],
        "b": "Paziente con tosse secca e febbre da tre giorni; in terapia con paracetamolo 1000 mg.",
        "c": "Nega dolore toracico. Diabete mellito di tipo 2 in terapia con metformina 500 mg due volte al giorno.",
        "d": "Frattura scomposta del radio distale sinistro dopo caduta accidentale.",
    }
    batch_id = run_batch(api, notes)
    open_page(browser, demo_server)
    browser.find_element(By.ID, "batch-id").send_keys(batch_id)
    browser.find_element(By.ID, "open-batch").click()
    WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#queue li")) == len(notes))
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#queue li')].map(li => li.dataset.confidence === undefined ? null : "
        "+li.dataset.confidence)"
    )
    known = [c for c in shown if c is not None]
    assert known == sorted(known) and shown == known + [None] * (len(shown) - len(known))
    queue = api.get(f"/v1/reviews/queues/{batch_id}").json()
    # The lowest confidence of a note is that of the least certain thing the model said in it.
    for item in queue["data"]:
        review = open_review(api, item["id"])
        confidences = [e["confidence"] for e in review["answer"]["entities"] if e["confidence"] is not None]
        assert item["min_confidence"] == (min(confidences) if confidences else None)
    assert f"reviewed 0 / {len(notes)}" in browser.find_element(By.ID, "progress").text
    # The least certain note is the one open, its text from the batch's input.
    assert (
        browser.execute_script("return document.querySelector('#doc .text').textContent")
        == notes[queue["data"][0]["source_id"]]
    )
    press(browser, "j")  # its first entity current: the tools for it shown
    shoot(browser, tmp_path, "review")


def test_a_medlora_annotate_run_opens_in_the_page_least_certain_first(
    browser: WebDriver, demo_server: LiveServer, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.jsonl"
    texts = [NOTES["ner-it-clinical"], "Paziente con tosse secca e febbre; in terapia con paracetamolo 1000 mg.", ""]
    notes.write_text("".join(json.dumps({"id": f"n{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    output = tmp_path / "annotated.jsonl"
    medlora(
        "annotate",
        "--task",
        "ner-it-clinical",
        "--input",
        str(notes),
        "--output",
        str(output),
        "--url",
        demo_server.url,
    )
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(lines) == 2  # the empty note is annotate's error, not its output
    open_page(browser, demo_server)
    Select(browser.find_element(By.ID, "task")).select_by_value("ner-it-clinical")
    browser.find_element(By.ID, "annotate-notes").send_keys(str(notes))
    browser.find_element(By.ID, "annotate-output").send_keys(str(output))
    browser.find_element(By.ID, "open-annotated").click()
    WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#queue li")) == len(lines))
    lowest = {line["id"]: min((e["confidence"] for e in line["entities"]), default=None) for line in lines}
    expected = sorted(lowest, key=lambda i: (lowest[i] is None, lowest[i] or 0))
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#queue [data-open]')].map(b => b.textContent)"
    )
    assert shown == expected
    assert "2 notes of annotated.jsonl" in browser.find_element(By.ID, "status").text


def test_a_30000_character_letter_with_hundreds_of_marks_renders_and_scrolls(
    browser: WebDriver, demo_server: LiveServer, api: httpx.Client, record_property: Any
) -> None:
    letter = "".join(LONG_LINE.format(i=i, j=i % 10) for i in range(240))[:30000]
    body = {"task": "ner-it-clinical", "documents": [{"id": "letter", "text": letter}]}
    created = api.post("/v1/reviews/annotate/ner", json=body, timeout=900)
    assert created.status_code == 200, created.text
    review = created.json()["data"][0]
    assert len(review["decision"]["entities"]) >= 200, "the demo found too few entities for this check"
    open_page(browser, demo_server)
    Select(browser.find_element(By.ID, "queues")).select_by_value("notes-ner-it-clinical")
    browser.find_element(By.ID, "open-queue").click()
    opener = f'#queue [data-open="{review["id"]}"]'
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, opener))
    # From the click that opens it to the last mark drawn, then a scroll through all of it.
    timing = browser.execute_async_script(
        """
        const [selector, expected, done] = arguments;
        document.getElementById('doc').replaceChildren();  // whatever note was open before
        const started = performance.now();
        document.querySelector(selector).click();
        const wait = () => {
          if (document.querySelectorAll('#doc mark, #overlaps mark').length === expected) {
            const drawn = performance.now() - started;
            const scrolling = performance.now();
            const bottom = document.documentElement.scrollHeight;
            for (let y = 0; y < bottom; y += 400) window.scrollTo(0, y);
            requestAnimationFrame(() => done([drawn, performance.now() - scrolling]));
          } else setTimeout(wait, 2);
        };
        wait();
        """,
        opener,
        len(review["decision"]["entities"]),
    )
    marks_shown = browser.execute_script("return document.querySelectorAll('#doc mark, #overlaps mark').length")
    assert marks_shown == len(review["decision"]["entities"])
    record_property("long_note_render_ms", timing[0])
    record_property("long_note_scroll_ms", timing[1])
    opened, scrolled = timing
    print(f"\n[ui] 30,000 characters, {marks_shown} marks: opened in {opened:.0f} ms, scrolled in {scrolled:.0f} ms")
    # A change on the long note (keyboard, one entity deleted) is drawn and saved as well.
    press(browser, "jd")
    saved(browser)
    count = "return document.querySelectorAll('#doc mark, #overlaps mark').length"
    assert browser.execute_script(count) == marks_shown - 1
    # Accept (a) marks the current entity accepted and moves on; it changes nothing to save.
    version = api.get(f"/v1/reviews/items/{review['id']}").json()["version"]
    press(browser, "a")
    accepted = browser.execute_script(
        "return [...document.querySelectorAll('mark[data-accepted]')].map(m => +m.dataset.index)"
    )
    current = browser.execute_script("return +document.querySelector('mark.current').dataset.index")
    assert (accepted, current) == ([0], 1)
    assert api.get(f"/v1/reviews/items/{review['id']}").json()["version"] == version
    # An attribute toggled on the current entity is saved as the decision's.
    browser.find_element(By.CSS_SELECTOR, '[data-attribute="negated"]').click()
    saved(browser)
    decided = api.get(f"/v1/reviews/items/{review['id']}").json()["decision"]["entities"]
    assert decided[1]["attributes"]["negated"] is not review["decision"]["entities"][2]["attributes"]["negated"]


def test_an_answer_and_a_class_are_corrected_in_the_page(
    browser: WebDriver, demo_server: LiveServer, api: httpx.Client
) -> None:
    note = NOTES["qa-it-clinical"]
    open_page(browser, demo_server)
    annotate_in_page(browser, "qa-it-clinical", note, QUESTION)
    review_id = current_review_id(browser)
    start = note.index("ramipril")
    select_text(browser, start, start + len("ramipril"))
    browser.find_element(By.ID, "answer-from-selection").click()
    saved(browser)
    answer = {"start": start, "end": start + len("ramipril"), "text": "ramipril"}
    assert open_review(api, review_id)["decision"] == {"answer": answer}
    assert marks(browser) == [(answer["start"], answer["end"], "ANSWER", "ramipril", None)]
    browser.find_element(By.ID, "no-answer").click()
    saved(browser)
    assert open_review(api, review_id)["decision"] == {"answer": None}

    review_id = annotated(browser, demo_server, "classify-it-note-type")
    chosen = open_review(api, review_id)["decision"]["labels"]
    other = next(b for b in browser.find_elements(By.CSS_SELECTOR, "[data-choose-class]") if not b.is_selected())
    label = other.get_attribute("value")
    other.click()
    saved(browser)
    decided = open_review(api, review_id)["decision"]["labels"]
    assert decided == [label] and decided != chosen  # single-label: a radio, one label
    shown = browser.find_element(By.CSS_SELECTOR, f'[data-class="{label}"]').get_attribute("data-chosen")
    assert shown == "yes"
