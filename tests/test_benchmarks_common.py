"""benchmarks/common.py: the report header, the atomic writer, and a benchmark run from
another directory that writes through both."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_common():
    spec = importlib.util.spec_from_file_location("bench_common", BENCHMARKS / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def git_head() -> str | None:
    done = subprocess.run(
        ["git", "-C", str(BENCHMARKS), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else None


def test_header_names_machine_torch_threads_commit_and_command():
    import torch

    common = load_common()
    head = common.header("unit", threads=3)
    assert head["benchmark"] == "unit"
    assert head["torch"] == torch.__version__
    assert head["threads"] == 3
    assert common.header("unit")["threads"] == torch.get_num_threads()
    assert set(head["machine"]) == {"platform", "processor", "cpus", "device"}
    assert head["command"].split()[0] == Path(sys.argv[0]).name
    commit = git_head()
    if commit is None:
        assert head["commit"] is None
    else:
        assert head["commit"].removesuffix("+dirty") == commit


def test_write_json_replaces_whole_or_leaves_the_old_file(tmp_path):
    common = load_common()
    out = tmp_path / "deep" / "r.json"
    common.write_json(out, {"a": 1})
    assert json.loads(out.read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        common.write_json(out, {"a": object()})  # fails half-way through serialising
    assert json.loads(out.read_text()) == {"a": 1}
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]  # no temporary left behind


def test_a_benchmark_runs_from_another_directory(tmp_path):
    out = tmp_path / "throughput.json"
    script = BENCHMARKS / "data_throughput.py"
    cmd = [sys.executable, str(script), "--repeats", "1", "--steps", "1", "--batch", "2"]
    done = subprocess.run(
        [*cmd, "--json", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["benchmark"] == "data_throughput"
    assert report["command"].startswith("data_throughput.py --repeats 1")
    assert {"commit", "machine", "torch", "threads"} <= set(report)
