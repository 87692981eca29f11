"""The page at /ui in real headless Chromium (Debian's chromium and chromedriver, driven by
Selenium) against the shipped demo on real vLLM: every task type annotated through the page
shows exactly what the API answers for the same text, offsets survive emoji, astral characters
and CRLF, and a note full of markup executes nothing.

MEDLORA_UI_SCREENSHOTS=DIR keeps the screenshots (docs/ui-*.png were taken so); otherwise
they go to the test's temporary folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.e2e.conftest import LiveServer, recording_client
from tests.support.volume import ENDPOINTS

pytestmark = pytest.mark.e2e

NOTES = {
    "ner-it-clinical": "Paziente di 72 anni con febbre e tosse produttiva; nega dolore toracico. "
    "Terapia: amoxicillina 1 g per os ogni 8 ore.",
    "re-it-medication": "Terapia domiciliare: furosemide 25 mg per os al mattino; amoxicillina 1 g ogni 8 ore "
    "per 7 giorni; enoxaparina 4000 UI sc una volta al giorno.",
    "crf-it-dyspnea": "Accesso in PS del 12/03/2024. Dispnea da 3 giorni, SpO2 86% in aria ambiente, "
    "TC 38,2 °C. Avviata ossigenoterapia. RX torace: congestione polmonare. Diagnosi: scompenso cardiaco.",
    "classify-it-note-type": "Lettera di dimissione. Ricoverato per polmonite basale destra, dimesso in "
    "buone condizioni con terapia antibiotica.",
    "qa-it-clinical": "Dimesso con furosemide 25 mg al mattino e ramipril 5 mg la sera.",
}
QUESTION = "Quale diuretico assume il paziente?"
# Emoji (a ZWJ sequence), an astral ideograph and CRLF: where code points and UTF-16 part ways.
AWKWARD = "👩\u200d⚕️ Visita: febbre 38,5 °C\r\n𩃅 tosse produttiva;\r\nnega dolore toracico. Amoxicillina 1 g."
XSS = (
    "Paziente con febbre. <script>window.__xss = 1</script> "
    '<img src=x onerror="window.__xss = 2"> <a href="javascript:window.__xss = 3">link</a> '
    '<b onmouseover="window.__xss = 4">tosse</b>; nega dolore toracico.'
)


@pytest.fixture(scope="module")
def api(demo_server: LiveServer) -> Iterator[httpx.Client]:
    # The recording client: the notes the page sends are scanned for in the server's logs too.
    with recording_client(demo_server.url) as client:
        yield client


@pytest.fixture(scope="module")
def tasks(api: httpx.Client) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in api.get("/v1/tasks").json()["tasks"]}


def open_page(browser: WebDriver, server: LiveServer) -> None:
    browser.get(f"{server.url}/ui")
    WebDriverWait(browser, 30).until(lambda b: len(Select(b.find_element(By.ID, "task")).options) > 0)


def annotate_in_page(browser: WebDriver, task: str, note: str, question: str = "") -> str:
    """Run `task` on `note` through the page, as a user would; returns the text the page sent."""
    Select(browser.find_element(By.ID, "task")).select_by_value(task)
    # A file keeps the note's exact characters (a textarea would turn CRLF into LF).
    browser.execute_script(
        "const file = new File([arguments[0]], 'note.txt', {type: 'text/plain'});"
        "const input = document.getElementById('file'); const data = new DataTransfer();"
        "data.items.add(file); input.files = data.files; input.dispatchEvent(new Event('change'));",
        note,
    )
    WebDriverWait(browser, 10).until(lambda b: "sent as read" in b.find_element(By.ID, "status").text)
    if question:
        field = browser.find_element(By.ID, "question")
        field.clear()
        field.send_keys(question)
    browser.find_element(By.ID, "annotate").click()
    WebDriverWait(browser, 300).until(
        lambda b: b.find_element(By.ID, "status").text.startswith(("Done", "The service"))
    )
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("Done"), status
    return note


def marks(browser: WebDriver) -> list[tuple[int, int, str, str, str | None]]:
    found = browser.execute_script(
        "return [...document.querySelectorAll('#doc mark, #overlaps mark')].map(m => "
        "[+m.dataset.start, +m.dataset.end, m.dataset.label, m.textContent, m.dataset.id || null])"
    )
    return sorted(tuple(m) for m in found)


def api_answer(api: httpx.Client, task: dict[str, Any], note: str, question: str = "") -> dict[str, Any]:
    item = (
        {"id": "note", "context": note, "question": question} if task["type"] == "qa" else {"id": "note", "text": note}
    )
    body = {"task": task["name"], ("items" if task["type"] == "qa" else "documents"): [item]}
    response = api.post(f"/v1/{ENDPOINTS[task['type']]}", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return dict(response.json())


def expected_marks(task: dict[str, Any], answer: dict[str, Any]) -> list[tuple[int, int, str, str, str | None]]:
    if task["type"] == "qa":
        a = answer["items"][0]["answer"]
        return [] if a is None else [(a["start"], a["end"], "ANSWER", a["text"], None)]
    doc = answer["documents"][0]
    if task["type"] in ("ner", "relations"):
        return sorted((e["start"], e["end"], e["label"], e["text"], e.get("id")) for e in doc["entities"])
    if task["type"] == "form":
        return sorted(
            (ev["start"], ev["end"], i["name"], ev["text"], None) for i in doc["items"] for ev in i["evidence"]
        )
    return []


def shoot(browser: WebDriver, tmp_path: Path, name: str) -> None:
    folder = Path(os.environ.get("MEDLORA_UI_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(folder / f"ui-{name}.png"))


@pytest.mark.parametrize("name", list(NOTES))
def test_every_task_type_shows_in_the_page_what_the_api_answers(
    browser: WebDriver,
    demo_server: LiveServer,
    api: httpx.Client,
    tasks: dict[str, dict[str, Any]],
    name: str,
    tmp_path: Path,
) -> None:
    task = tasks[name]
    question = QUESTION if task["type"] == "qa" else ""
    open_page(browser, demo_server)
    sent = annotate_in_page(browser, name, NOTES[name], question)
    answer = api_answer(api, task, sent, question)
    assert marks(browser) == expected_marks(task, answer)
    for mark in marks(browser):
        assert sent[mark[0] : mark[1]] == mark[3]  # code point offsets into the note sent
    # The note itself is all there, once: the marks only wrap its characters.
    assert browser.execute_script("return document.querySelector('#doc .text').textContent") == sent
    if task["type"] == "relations":
        doc = answer["documents"][0]
        shown = browser.execute_script(
            "return [...document.querySelectorAll('[data-relation]')].map(r => "
            "[r.dataset.relation, r.dataset.head, r.dataset.tail])"
        )
        assert sorted(map(tuple, shown)) == sorted((r["type"], r["head"], r["tail"]) for r in doc["relations"])
        assert all(r["head"] in {e["id"] for e in doc["entities"]} for r in doc["relations"])
        if doc["relations"]:
            # Focus the first head entity: its arcs are drawn, one per relation it takes part in.
            head = doc["relations"][0]["head"]
            browser.find_element(By.CSS_SELECTOR, f'button[data-focus="{head}"]').click()
            arcs = browser.execute_script("return document.querySelectorAll('#arcs path').length")
            assert arcs == sum(head in (r["head"], r["tail"]) for r in doc["relations"])
        shoot(browser, tmp_path, "relations")
    if task["type"] == "form":
        rows = browser.execute_script(
            "return [...document.querySelectorAll('tr[data-item]')].map(r => "
            "[r.dataset.item, r.dataset.status, r.querySelector('[data-value]').textContent])"
        )
        items = answer["documents"][0]["items"]
        assert [r[0] for r in rows] == [i["name"] for i in items]  # declared order, every item
        assert [r[1] for r in rows] == [i["status"] for i in items]
        for (_, status, value), item in zip(rows, items, strict=True):
            if status == "unknown":
                assert value == "unknown"
            else:
                expected = ", ".join(item["value"]) if isinstance(item["value"], list) else str(item["value"])
                assert value == (expected.lower() if isinstance(item["value"], bool) else expected)
        shoot(browser, tmp_path, "form")
    if task["type"] == "classification":
        shown = browser.execute_script(
            "return [...document.querySelectorAll('[data-class]')].map(c => [c.dataset.class, c.dataset.chosen])"
        )
        doc = answer["documents"][0]
        # Every label of the task, to choose from; the model's choice checked, its scores shown.
        assert sorted(map(tuple, shown)) == sorted((k, "yes" if k in doc["labels"] else "no") for k in task["labels"])
        scores = browser.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('[data-class][data-confidence]')]"
            ".map(c => [c.dataset.class, +c.dataset.confidence]))"
        )
        assert scores == pytest.approx(doc["scores"])
    if task["type"] == "ner":
        shoot(browser, tmp_path, "ner")
        # The threshold dims, and says in words, what the model was less sure of than it.
        entities = answer["documents"][0]["entities"]
        cut = sorted(e["confidence"] for e in entities)[len(entities) // 2] if entities else 0.5
        browser.execute_script(
            "const t = document.getElementById('threshold'); t.value = arguments[0];"
            "t.dispatchEvent(new Event('input'));",
            cut,
        )
        low = browser.execute_script(
            "return [...document.querySelectorAll('#doc mark')].map(m => [+m.dataset.start, m.dataset.low || ''])"
        )
        step = round(cut * 20) / 20  # the range input's step is 0.05
        expected_low = sorted((e["start"], "low" if e["confidence"] < step else "") for e in entities)
        assert sorted(map(tuple, low)) == expected_low


def test_offsets_stay_exact_with_emoji_astral_characters_and_crlf(
    browser: WebDriver, demo_server: LiveServer, api: httpx.Client, tasks: dict[str, dict[str, Any]]
) -> None:
    open_page(browser, demo_server)
    sent = annotate_in_page(browser, "ner-it-clinical", AWKWARD)
    answer = api_answer(api, tasks["ner-it-clinical"], sent)
    expected = expected_marks(tasks["ner-it-clinical"], answer)
    assert expected, "the demo found nothing to check offsets with"
    assert marks(browser) == expected
    assert not browser.find_element(By.ID, "mismatches").text
    assert browser.execute_script("return document.querySelector('#doc .text').textContent") == AWKWARD


def test_a_note_full_of_markup_is_shown_as_text_and_executes_nothing(
    browser: WebDriver, demo_server: LiveServer, api: httpx.Client, tasks: dict[str, dict[str, Any]]
) -> None:
    response = api.get("/ui")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe-inline" not in policy
    open_page(browser, demo_server)
    annotate_in_page(browser, "ner-it-clinical", XSS)
    doc = browser.find_element(By.ID, "doc")
    for tag in ("script", "img", "a", "b"):
        assert not doc.find_elements(By.TAG_NAME, tag), tag
    assert browser.execute_script("return document.querySelector('#doc .text').textContent") == XSS
    for index in range(len(doc.find_elements(By.TAG_NAME, "mark"))):
        # Clicking a mark makes it the current one: the note is drawn again, so find it anew.
        mark = browser.find_elements(By.CSS_SELECTOR, "#doc mark")[index]
        browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('mouseover', {bubbles: true}))", mark)
        mark.click()
    assert browser.execute_script("return window.__xss") is None
    # Nor did the page itself run anything the policy refused (an inline script would be reported).
    refused = [e for e in browser.get_log("browser") if "Content Security Policy" in e.get("message", "")]
    assert not refused, refused
