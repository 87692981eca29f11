"""The Kubernetes manifests in deploy/ drive the real CLI: their command lines must parse."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from app.batch.annotate import Shard, add_annotate_arguments, add_merge_arguments
from app.settings import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((K8S / name).read_text())
    return doc


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of container args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], arg)


def container_env(container: dict[str, Any], index: int) -> dict[str, str]:
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    field = next(e for e in container["env"] if e["name"] == "SHARD_INDEX")["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    return {**env, "SHARD_INDEX": str(index)}


def test_indexed_job_gives_each_pod_its_own_shard_of_the_same_input() -> None:
    job = load("annotate-indexed-job.yaml")
    spec = job["spec"]
    assert (job["kind"], spec["completionMode"]) == ("Job", "Indexed")
    (container,) = spec["template"]["spec"]["containers"]
    assert container["command"] == ["medlora", "annotate"]
    parser = parser_for_annotate()
    shards, outputs, inputs = set(), set(), set()
    for index in range(spec["completions"]):
        env = container_env(container, index)
        args = parser.parse_args([expand(a, env) for a in container["args"]])
        shard = Shard.parse(args.shard)
        shards.add((shard.index, shard.count))
        outputs.add(str(args.output))
        inputs.add(str(args.input))
    n = spec["completions"]
    assert spec["parallelism"] == n and shards == {(i, n) for i in range(n)}  # N shards, one per index
    assert len(outputs) == n and len(inputs) == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_merge_job_reads_what_the_shards_wrote() -> None:
    job = load("annotate-indexed-job.yaml")
    (shard_container,) = job["spec"]["template"]["spec"]["containers"]
    merge = load("annotate-merge-job.yaml")
    (container,) = merge["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    argv = shlex.split(container["args"][0].replace('"$TASK"', env["TASK"]))
    assert argv[:3] == ["exec", "medlora", "merge"]
    parser = argparse.ArgumentParser()
    add_merge_arguments(parser)
    args = parser.parse_args(argv[3:])
    shard_args = parser_for_annotate().parse_args(
        [expand(a, container_env(shard_container, 0)) for a in shard_container["args"]]
    )
    assert args.task == shard_args.task and args.input == shard_args.input
    (pattern,) = [str(p) for p in args.shards]
    assert Path(shard_args.output).match(pattern) and not Path(args.output).match(pattern)


def parser_for_annotate() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_annotate_arguments(parser)
    return parser
