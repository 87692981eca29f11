"""`medlora annotate` / `medlora merge` gateway logic against the fake engine.

The same commands run against real vLLM (and a kill -9 mid-run) in tests/e2e/test_live_annotate.py.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.batch import annotate as an
from app.batch.journal import Journal, JournalError, recover
from app.engine.base import GenerationRequest
from app.main import app_for
from app.tasks.service import Service
from tests.conftest import FakeServiceFactory
from tests.fakes import last_input

ALL_FALSE = {"negated": False, "uncertain": False, "historical": False, "family": False}
TASK = "ner-it-clinical"


def ner_first_word(request: GenerationRequest) -> str:
    """Tags the note's first word as a DRUG: each output line shows which note it came from."""
    word = last_input(request).split()[0]
    return json.dumps({"entities": [[word, "DRUG"]]})


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def notes(n: int, start: int = 0) -> list[str]:
    return [json.dumps({"id": f"n{i}", "text": f"farmaco{i} 5 mg per os."}) for i in range(start, start + n)]


def run(
    service: Service,
    input_path: Path,
    output: Path,
    *,
    task: str = TASK,
    shard: an.Shard = an.ALL,
    concurrency: int = 8,
    backend: an.Backend | None = None,
    deid: an.Deid | None = None,
) -> an.Summary:
    kind = service.tasks[task].kind
    errors = an.default_errors_path(output)
    summary = an.Summary(task, str(input_path), str(output), str(errors))

    async def go() -> an.Summary:
        await service.start()
        try:
            return await an.annotate(
                lambda: an.read_input(input_path, kind.input_fields, an.Columns()),
                backend or an.in_process_backend(service),
                task=task,
                kind=kind,
                output=output,
                errors=errors,
                summary=summary,
                concurrency=concurrency,
                shard=shard,
                deid=deid,
            )
        finally:
            await service.stop()

    return asyncio.run(go())


def ids_of(path: Path) -> list[str]:
    return [r["id"] for r in recover(path)]


def test_every_line_ends_in_output_or_errors_with_a_reason(
    make_fake_service: FakeServiceFactory, tmp_path: Path
) -> None:
    service, _ = make_fake_service(ner_first_word)
    long_text = "farmacoL " + "Paziente stabile, parametri nella norma. " * 200  # several chunks, not rejected
    src = write_lines(
        tmp_path / "in.jsonl",
        [
            *notes(3),
            json.dumps({"id": "n1", "text": "farmacoDup"}),  # duplicate id
            json.dumps({"id": "empty", "text": "  \n"}),
            "{not json",
            b'{"id": "bad-utf8", "text": "caff\xe8"}',
            json.dumps({"text": "no id"}),
            "",  # blank lines are not records
            json.dumps({"id": 7, "text": "farmaco7 numeric id"}),
            json.dumps({"id": "long", "text": long_text}),
        ],
    )
    out = tmp_path / "out.jsonl"
    summary = run(service, src, out)

    lines = {r["id"]: r for r in recover(out)}
    assert sorted(lines) == ["7", "long", "n0", "n1", "n2"]
    assert lines["n1"]["entities"][0]["text"] == "farmaco1"  # the first n1, not the duplicate
    assert lines["n0"]["model"]["adapter"] == "ner-it-clinical"
    assert lines["long"]["entities"][0] == {
        "start": 0,
        "end": 8,
        "text": "farmacoL",
        "label": "DRUG",
        "attributes": ALL_FALSE,
        "confidence": None,  # the fake engine returns no log-probabilities here
        "codes": [],  # a DRUG: no terminology
    }
    errors = {e["position"]: e for e in recover(tmp_path / "out.errors.jsonl")}
    slugs = {pos: e["error"]["type"].rsplit(":", 1)[-1] for pos, e in errors.items()}
    assert slugs == {
        "line 4": "duplicate-id",
        "line 5": "empty-text",
        "line 6": "invalid-line",
        "line 7": "invalid-line",
        "line 8": "invalid-line",
    }
    assert "UTF-8" in errors["line 7"]["error"]["detail"] and errors["line 7"]["id"] is None
    assert errors["line 4"]["id"] == "n1"
    assert (summary.records, summary.annotated, summary.failed) == (10, 5, 5)
    assert summary.error_types == {"duplicate-id": 1, "empty-text": 1, "invalid-line": 3}


def test_rerun_skips_done_lines_and_repairs_a_torn_last_line(
    make_fake_service: FakeServiceFactory, tmp_path: Path
) -> None:
    src = write_lines(tmp_path / "in.jsonl", [*notes(6), "{broken"])
    out = tmp_path / "out.jsonl"
    service, engine = make_fake_service(ner_first_word)
    run(service, src, out, concurrency=1)
    # What a kill -9 can leave: two finished lines and a torn third (the error line stays).
    finished = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(finished[:2]) + finished[2][:15])
    service, engine = make_fake_service(ner_first_word)
    summary = run(service, src, out)

    assert sorted(ids_of(out)) == [f"n{i}" for i in range(6)]  # each exactly once
    assert len(engine.calls) == 4  # the torn one and the three never written; finished ones not redone
    assert [e["position"] for e in recover(tmp_path / "out.errors.jsonl")] == ["line 7"]
    assert (summary.already_done, summary.annotated, summary.failed) == (3, 4, 0)


def test_shards_partition_the_input_and_merge_checks_exactly_once(
    make_fake_service: FakeServiceFactory, tmp_path: Path
) -> None:
    src = write_lines(tmp_path / "in.jsonl", [*notes(20), json.dumps({"id": "n3", "text": "dup"}), "{bad"])
    outputs = []
    for i in range(3):
        service, _ = make_fake_service(ner_first_word)
        out = tmp_path / f"shard-{i}.jsonl"
        run(service, src, out, shard=an.Shard.parse(f"{i}/3"))
        outputs.append(out)
    per_shard = [set(ids_of(o)) for o in outputs]
    assert (
        all(per_shard)
        and sum(len(s) for s in per_shard) == 20
        and set().union(*per_shard) == {f"n{i}" for i in range(20)}
    )

    records = an.read_input(src, ("text",), an.Columns())
    globbed = sorted(tmp_path.glob("shard-*.jsonl"))  # as a shell glob gives them: errors files included
    assert len(globbed) == 6
    report = an.merge_shards(records, globbed, tmp_path / "all.jsonl", tmp_path / "all.errors.jsonl")
    assert report.complete and (report.records, report.annotated, report.failed) == (22, 20, 2)
    assert sorted(ids_of(tmp_path / "all.jsonl")) == sorted(f"n{i}" for i in range(20))

    # A lost line and a line written twice are both caught.
    lines = outputs[0].read_text().splitlines()
    outputs[0].write_text("\n".join([*lines[1:], lines[-1]]) + "\n")
    report = an.merge_shards(
        an.read_input(src, ("text",), an.Columns()), outputs, tmp_path / "all.jsonl", tmp_path / "all.errors.jsonl"
    )
    assert not report.complete
    assert report.missing == [json.loads(lines[0])["id"]] and report.duplicated == [json.loads(lines[-1])["id"]]


@pytest.mark.parametrize("bad", ["1/1", "3/2", "a/b", "-1/2", "0/0"])
def test_shard_spec_is_validated(bad: str) -> None:
    with pytest.raises(an.AnnotateError):
        an.Shard.parse(bad)


def test_csv_and_folder_inputs(make_fake_service: FakeServiceFactory, tmp_path: Path) -> None:
    csv_path = tmp_path / "notes.csv"
    csv_path.write_bytes(b'note_id,body\nc1,"farmacoA, con virgola\nsu due righe"\nc2,\nc3,farmaco\xe8C\nc4,farmacoD\n')
    service, _ = make_fake_service(ner_first_word)
    kind = service.tasks[TASK].kind
    records = list(an.read_input(csv_path, kind.input_fields, an.Columns(id="note_id", text="body")))
    assert [(r.position, r.id, r.problem.kind.slug if r.problem else None) for r in records] == [
        ("row 1", "c1", None),
        ("row 2", "c2", "empty-text"),
        ("row 3", "c3", "invalid-line"),
        ("row 4", "c4", None),
    ]
    assert records[0].payload == {"text": "farmacoA, con virgola\nsu due righe"}
    with pytest.raises(an.AnnotateError, match="missing column"):
        list(an.read_input(csv_path, kind.input_fields, an.Columns()))

    folder = tmp_path / "notes"
    (folder / "ward").mkdir(parents=True)
    (folder / "a.txt").write_text("farmacoA")
    (folder / "ward" / "b.txt").write_text("farmacoB 1 cp")
    (folder / "skip.md").write_text("not a note")
    out = tmp_path / "out.jsonl"
    run(service, folder, out)
    assert {r["id"]: r["entities"][0]["text"] for r in recover(out)} == {"a": "farmacoA", "ward/b": "farmacoB"}


def test_many_notes_are_in_flight_at_once(make_fake_service: FakeServiceFactory, tmp_path: Path) -> None:
    service, engine = make_fake_service(ner_first_word, delay_s=0.05)
    active = peak = 0
    original = engine.generate

    async def counting(request: GenerationRequest) -> Any:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            return await original(request)
        finally:
            active -= 1

    engine.generate = counting  # type: ignore[method-assign]
    run(service, write_lines(tmp_path / "in.jsonl", notes(40)), tmp_path / "out.jsonl", concurrency=16)
    assert peak == 16
    assert {c.priority for c in engine.calls} == {10}  # batch work yields to interactive requests


def test_url_mode_goes_through_the_http_api(make_fake_service: FakeServiceFactory, tmp_path: Path) -> None:
    def respond(request: GenerationRequest) -> str:
        if "farmaco2" in last_input(request):
            return ""  # unparsable: 502 for this line only
        return ner_first_word(request)

    service, _ = make_fake_service(respond)
    transport = httpx.ASGITransport(app=app_for(service))  # no lifespan: run() starts the service
    client = httpx.AsyncClient(base_url="http://medlora.test", transport=transport)
    out = tmp_path / "out.jsonl"
    summary = run(service, write_lines(tmp_path / "in.jsonl", notes(4)), out, backend=an.remote_backend(client))
    assert sorted(ids_of(out)) == ["n0", "n1", "n3"]
    (error,) = recover(tmp_path / "out.errors.jsonl")
    assert error["id"] == "n2" and error["error"]["type"] == "urn:medlora:problem:generation-failed"
    assert error["error"]["status"] == 502
    assert summary.failed == 1


def test_url_mode_stops_on_errors_that_hit_every_line(make_fake_service: FakeServiceFactory, tmp_path: Path) -> None:
    service, _ = make_fake_service(ner_first_word)
    client = httpx.AsyncClient(base_url="http://medlora.test", transport=httpx.ASGITransport(app=app_for(service)))
    out = tmp_path / "out.jsonl"
    with pytest.raises(an.AnnotateError, match="404"):
        run(service, write_lines(tmp_path / "in.jsonl", notes(3)), out, task=TASK, backend=_wrong_task(client))
    assert not ids_of(out) and not recover(tmp_path / "out.errors.jsonl")


def _wrong_task(client: httpx.AsyncClient) -> an.Backend:
    remote = an.remote_backend(client)

    async def call(endpoint: str, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        return await remote(endpoint, {**body, "task": "no-such-task"}, request_id)

    return call


def test_journal_cuts_a_torn_tail_and_refuses_foreign_content(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        assert journal.open() == []
        journal.append({"id": "a", "text": "è"})
    path.write_bytes(path.read_bytes() + b'{"id": "b", "tex')
    with Journal(path) as journal:
        assert journal.open() == [{"id": "a", "text": "è"}]
        journal.append({"id": "b"})
    assert path.read_text(encoding="utf-8") == '{"id":"a","text":"è"}\n{"id":"b"}\n'
    path.write_text('{"id":"a"}\nnot json\n')
    with pytest.raises(JournalError, match=r"j\.jsonl:2"):
        recover(path)


def test_cli_reports_summary_and_rejects_bad_arguments(
    make_fake_service: FakeServiceFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    service, _ = make_fake_service(ner_first_word)
    monkeypatch.setattr(an, "build_service", lambda settings: service)
    src = write_lines(tmp_path / "in.jsonl", [*notes(3), "{bad"])
    parser = argparse.ArgumentParser()
    an.add_annotate_arguments(parser)
    out = tmp_path / "out.jsonl"
    args = parser.parse_args(["--task", TASK, "--input", str(src), "--output", str(out)])
    assert an.annotate_main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["annotated"], summary["failed"], summary["errors"]) == (3, 1, str(tmp_path / "out.errors.jsonl"))

    def no_engine(settings: object) -> None:
        raise AssertionError("input errors must stop the run before the engine starts")

    monkeypatch.setattr(an, "build_service", no_engine)
    bad_csv = tmp_path / "notes.csv"
    bad_csv.write_text("note,body\nx,farmaco\n")
    for argv, message in [
        (["--input", str(bad_csv)], "missing column"),
        (["--shard", "2/2"], "--shard"),
        (["--input", str(tmp_path / "missing.jsonl")], "no such file"),
        (["--task", "nope"], "no task"),
    ]:
        base = {"--task": TASK, "--input": str(src), "--output": str(out)}
        base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
        args = parser.parse_args([x for kv in base.items() for x in kv])
        assert an.annotate_main(args) == 2
        assert message in capsys.readouterr().err


def test_relation_and_form_tasks_are_annotated_with_their_own_output_shapes(
    make_fake_service: FakeServiceFactory, tmp_path: Path
) -> None:
    def respond(request: GenerationRequest) -> str:
        prompt = bytes(request.prompt_token_ids).decode()
        word = last_input(request).split()[0]
        if "Relations [type, head, tail]" in prompt:
            return json.dumps({"entities": [[word, "DRUG"], ["5 mg", "DOSAGE"]], "relations": [["dosage", 0, 1]]})
        return json.dumps({"working_diagnosis": word} if "- working_diagnosis (" in prompt else {})

    service, _ = make_fake_service(respond)
    source = write_lines(tmp_path / "in.jsonl", notes(3))
    relations = run(service, source, tmp_path / "re.jsonl", task="re-it-medication")
    assert (relations.annotated, relations.failed) == (3, 0)
    for row in recover(tmp_path / "re.jsonl"):
        assert [e["text"] for e in row["entities"]] == [f"farmaco{row['id'][1:]}", "5 mg"]
        assert row["relations"] == [{"type": "dosage", "head": "e1", "tail": "e2", "confidence": None}]
    form = run(service, source, tmp_path / "crf.jsonl", task="crf-it-dyspnea")
    assert (form.annotated, form.failed) == (3, 0)
    for row in recover(tmp_path / "crf.jsonl"):
        items = {i["name"]: i for i in row["items"]}
        assert len(items) == 28 and items["working_diagnosis"]["value"] == f"farmaco{row['id'][1:]}"


# -- defects: each test below failed on the code before its fix ----------------------------


def test_an_id_that_is_not_valid_unicode_is_an_error_line_and_reruns_resume_past_it(
    make_fake_service: FakeServiceFactory, tmp_path: Path
) -> None:
    jsonl_input = write_lines(
        tmp_path / "in.jsonl",
        [*notes(1), json.dumps({"id": "n\ud800", "text": "farmacoS"}), *notes(1, start=1)],  # the escape \ud800
    )
    csv_input = tmp_path / "in.csv"
    csv_input.write_bytes(b"id,text\nc1,farmacoA\nc\xe8,farmacoB\nc3,farmacoC\n")  # a Latin-1 byte in an id
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("farmacoA")
    (folder / os.fsdecode(b"caff\xe8.txt")).write_text("farmacoB")  # a file name that is not UTF-8
    for source, bad_position, good in (
        (jsonl_input, "line 2", ["n0", "n1"]),
        (csv_input, "row 2", ["c1", "c3"]),
        (folder, "file caff\\xe8.txt (name not UTF-8)", ["a"]),
    ):
        out = tmp_path / f"out-{source.name}.jsonl"
        for rerun in (False, True):
            service, engine = make_fake_service(ner_first_word)
            summary = run(service, source, out)
            assert sorted(ids_of(out)) == good
            (error,) = recover(an.default_errors_path(out))
            assert (error["position"], error["id"]) == (bad_position, None)
            assert error["error"]["type"] == "urn:medlora:problem:invalid-line"
            if rerun:  # everything was already done
                assert (summary.already_done, summary.annotated, summary.failed, len(engine.calls)) == (
                    len(good) + 1,
                    0,
                    0,
                    0,
                )
        an.default_errors_path(out).read_bytes().decode("utf-8")  # valid UTF-8 throughout


def test_a_csv_or_jsonl_with_a_byte_order_mark_is_read(make_fake_service: FakeServiceFactory, tmp_path: Path) -> None:
    service, _ = make_fake_service(ner_first_word)
    csv_input = tmp_path / "in.csv"
    csv_input.write_bytes(b"\xef\xbb\xbfid,text\nc1,farmacoA\n")  # as Excel saves "CSV UTF-8"
    jsonl_input = write_lines(tmp_path / "in.jsonl", [b"\xef\xbb\xbf" + notes(1)[0].encode()])
    for source in (csv_input, jsonl_input):
        out = tmp_path / f"out-{source.suffix[1:]}.jsonl"
        summary = run(service, source, out)
        assert (summary.annotated, summary.failed) == (1, 0)


def test_a_failed_journal_write_leaves_no_partial_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "j.jsonl"
    real_write = os.write

    def full_disk(fd: int, data: Any) -> int:
        real_write(fd, bytes(data)[:7])
        raise OSError(errno.ENOSPC, "No space left on device")

    with Journal(path) as journal:
        journal.open()
        journal.append({"id": "a"})
        monkeypatch.setattr(os, "write", full_disk)
        with pytest.raises(OSError):
            journal.append({"id": "b", "text": "lost"})
        monkeypatch.setattr(os, "write", real_write)
        journal.append({"id": "c"})  # space was freed: the journal goes on
    assert recover(path) == [{"id": "a"}, {"id": "c"}]


def test_a_journal_that_cannot_cut_a_failed_write_refuses_more_and_its_reopening_cuts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j.jsonl"
    real_write = os.write

    def short(fd: int, data: Any) -> int:
        return real_write(fd, bytes(data)[:5])

    def broken(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with Journal(path) as journal:
        journal.open()
        journal.append({"id": "a"})
        monkeypatch.setattr(os, "write", short)
        monkeypatch.setattr(os, "ftruncate", broken)
        with pytest.raises(OSError):
            journal.append({"id": "b"})
        monkeypatch.undo()
        with pytest.raises(OSError):  # appending now would bury the torn line in the middle
            journal.append({"id": "c"})
    with Journal(path) as journal:
        assert journal.open() == [{"id": "a"}]
        journal.append({"id": "c"})
    assert recover(path) == [{"id": "a"}, {"id": "c"}]


def test_a_record_that_is_not_valid_unicode_is_still_journaled_as_a_valid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.open()
        journal.append({"id": "x\udce8", "text": "è"})
        journal.append({"id": "y"})
    path.read_bytes().decode("utf-8")
    assert recover(path) == [{"id": "x\udce8", "text": "è"}, {"id": "y"}]


def test_deid_archive_holds_only_ids_and_masked_text_and_resumes(
    make_fake_service: FakeServiceFactory, tmp_path: Path
) -> None:
    def name_first(request: GenerationRequest) -> str:
        return json.dumps({"entities": [[last_input(request).split()[0], "NAME"]]})

    service, _ = make_fake_service(name_first)
    rows = [
        json.dumps({"id": f"p{i}", "text": f"Rossi{i} nato il 0{i + 1}/03/1950, CF RSSMRA85T10A562S."})
        for i in range(4)
    ]
    src = write_lines(tmp_path / "in.jsonl", rows[:2])
    out = tmp_path / "deid.jsonl"
    run(service, src, out, task="deid-clinical", deid=an.Deid("mask"))
    src = write_lines(tmp_path / "in.jsonl", rows)
    summary = run(service, src, out, task="deid-clinical", deid=an.Deid("mask"))
    assert (summary.already_done, summary.annotated) == (2, 2)  # resumed: the first two not sent again
    lines = list(recover(out))
    assert sorted(line["id"] for line in lines) == ["p0", "p1", "p2", "p3"]
    for line in lines:
        assert set(line) == {"id", "text"}
        assert line["text"] == "[NAME] nato il [DATE], CF [CODICE_FISCALE]."
    assert "Rossi" not in out.read_text()
