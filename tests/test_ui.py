"""The page at /ui as the gateway serves it: its own assets only, a strict Content-Security-Policy,
and no data without a key (what it shows in a browser: tests/e2e/test_live_ui.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from app.api.auth import hash_key
from tests.fakes import ner_output

ASSETS = {"/ui": "text/html", "/ui/ui.js": "text/javascript", "/ui/ui.css": "text/css"}


def test_the_page_and_its_assets_are_served_by_the_gateway_with_a_strict_policy(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output())
    for path, media_type in ASSETS.items():
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(media_type), path
        policy = r.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
        assert "unsafe" not in policy
        assert r.headers["x-content-type-options"] == "nosniff"
        # Air-gapped: nothing the page loads or calls names another origin (the one URL is SVG's
        # XML namespace, an identifier that is never fetched).
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"')]*", r.text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (path, urls)


def test_the_page_holds_no_inline_script_or_style(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output())
    html = client.get("/ui").text
    assert re.findall(r"<script[^>]*>", html) == ['<script src="ui/ui.js" defer>']
    assert " style=" not in html and "<style" not in html
    assert not re.search(r"\son[a-z]+\s*=", html)  # no inline event handlers


def test_the_page_is_not_in_the_api_contract(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output())
    assert not [p for p in client.get("/openapi.json").json()["paths"] if p.startswith("/ui")]


def test_with_keys_on_the_page_shell_loads_but_the_data_it_shows_needs_a_key(client_for: Any, tmp_path: Path) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text(f"reader {hash_key('a-reader-key-0123456789abcdef')}\n")
    client, _ = client_for(lambda r: ner_output(), api_keys_file=keys)
    assert client.get("/ui").status_code == 200  # a shell without data: it asks for the key
    assert client.get("/v1/tasks").status_code == 401
    r = client.get("/v1/tasks", headers={"authorization": "Bearer a-reader-key-0123456789abcdef"})
    assert r.status_code == 200 and r.json()["tasks"]
