"""steerlab serve from the CLI and from other clients: `steerlab serve` in-process and as a real
process, steerlab's own OpenAI judge against it, and the embedded smollm2 (slow)."""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
import typer
from cli_helpers import assert_user_error
from serve_helpers import chat
from typer.testing import CliRunner

from steerlab import SteeringVector
from steerlab.cli.app import app as cli_app
from steerlab.serve import ServeConfig, background_server, create_app
from steerlab.serve.config import API_KEY_ENV, DEFAULTS, flag
from steerlab.steering.generation import generate_batch
from steerlab.steering.steerer import SteeringSpec

# --- interop and CLI ------------------------------------------------------------------------------


def test_steerlab_judge_talks_to_the_server(url):
    from steerlab.judge import make_judge

    judge = make_judge("openai:tiny", base_url=f"{url}/v1", cache_dir=False, max_retries=0)
    scores = judge.score(["Rate this answer from 0 to 100: yes"])
    assert len(scores) == 1 and (scores[0] is None or 0 <= scores[0] <= 100)


def _captured_uvicorn(monkeypatch):
    """Replace uvicorn.run (the one call that blocks) by a recorder: the CLI's whole chain up to it
    (config, model, create_app, runner) runs for real."""
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    return calls


def test_cli_serve_builds_the_configured_app(monkeypatch, tiny_dir, vectors_dir, tmp_path):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    calls = _captured_uvicorn(monkeypatch)
    runner = CliRunner()
    assert runner.invoke(cli_app, ["serve", "--help"]).exit_code == 0
    params = {opt: p for p in typer.main.get_command(cli_app).commands["serve"].params for opt in p.opts}
    for field in dataclasses.fields(ServeConfig):  # every setting is a flag, with the config's default
        option = params[flag(field.name)]
        assert field.name == "api_key" or option.default == getattr(DEFAULTS, field.name), field.name
    assert params["--api-key"].envvar == API_KEY_ENV
    result = runner.invoke(
        cli_app,
        [
            "serve",
            "--model",
            str(tiny_dir),
            "--vectors",
            str(vectors_dir),
            "--port",
            "8123",
            "--max-batch",
            "8",
            "--max-queue",
            "5",
            "--max-n",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    app, kw = calls[-1]
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8123  # loopback unless told
    state = app.state.steerlab
    assert state.lm.n_layers == 4
    assert state.config == ServeConfig(
        vectors_dir=vectors_dir, port=8123, max_batch=8, max_queue=5, max_n=3, api_key=None
    )
    assert state.batcher.max_batch == 8 and state.batcher.max_queue == 5
    # the API key from the flag, or from the environment
    result = runner.invoke(cli_app, ["serve", "--model", str(tiny_dir), "--api-key", "s3cret"])
    assert result.exit_code == 0, result.output
    assert calls[-1][0].state.steerlab.config.api_key == "s3cret"
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    result = runner.invoke(cli_app, ["serve", "--model", str(tiny_dir)])
    assert result.exit_code == 0, result.output
    assert calls[-1][0].state.steerlab.config.api_key == "from-env"
    # bad settings: one error naming the flag, before the model loads
    n_calls = len(calls)
    for args, needle in [
        (["--vectors", str(tmp_path / "none")], "--vectors"),
        (["--max-queue", "0"], "--max-queue"),
        (["--max-n", "0"], "--max-n"),
        (["--port", "70000"], "--port"),
        (["--default-max-tokens", "300", "--max-tokens-limit", "200"], "--default-max-tokens"),
    ]:
        result = runner.invoke(cli_app, ["serve", "--model", str(tmp_path / "no-model"), *args])
        assert_user_error(result, needle)
    assert len(calls) == n_calls


def test_serve_warns_when_exposed_without_a_key(monkeypatch, tiny_llama, caplog):
    from steerlab.serve import serve

    calls = _captured_uvicorn(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="steerlab.serve"):
        serve(tiny_llama, host="0.0.0.0", port=8124, api_key=None)
        serve(tiny_llama, host="0.0.0.0", api_key="k")
        serve(tiny_llama, api_key=None)
    warnings = [r.getMessage() for r in caplog.records if "without an API key" in r.getMessage()]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0] and "8124" in warnings[0]
    assert [kw["host"] for _, kw in calls] == ["0.0.0.0", "0.0.0.0", "127.0.0.1"]


def test_serve_package_exports_resolve_and_stay_light():
    """Every name steerlab.serve exports resolves (the CLI once called a name the package did not
    have); importing the CLI command does not import the web stack."""
    import subprocess
    import sys

    import steerlab.serve

    for name in steerlab.serve.__all__:
        assert getattr(steerlab.serve, name) is not None, name
    code = "import sys, steerlab.cli.serve; print(sorted(m for m in ('fastapi', 'uvicorn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out


def test_cli_serve_process(tiny_dir, vectors_dir):
    """`steerlab serve --api-key` as a real process: /health answers without the key, the API only with
    it, and SIGINT stops it with status 0."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = "import steerlab.cli.serve; from steerlab.cli import main; main()"
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "serve",
            "--model",
            str(tiny_dir),
            "--vectors",
            str(vectors_dir),
            "--port",
            str(port),
            "--api-key",
            "k3y",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "STEERLAB_PROGRESS": "0", "HF_HUB_OFFLINE": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        assert httpx.get(f"{base}/v1/models", timeout=10).status_code == 401
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="k3y", max_retries=0, timeout=60)
        got = chat(client, "yes", [{"vector": "rand", "layer": 2, "coeff": 3}], max_tokens=4)
        assert got.usage.completion_tokens >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    output = proc.stdout.read()
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output


@pytest.mark.slow
def test_smollm2_steered_chat(smollm2, tmp_path):
    torch.manual_seed(0)
    vec = SteeringVector(torch.randn(smollm2.n_layers, smollm2.d_model), {"method": "random"})
    vec.save(tmp_path / "random.safetensors")
    app = create_app(smollm2, tmp_path, batch_window_ms=20, api_key=None)
    with background_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
        steering = [{"vector": "random", "layer": 10, "coeff": 4.0, "scale": "unit"}]
        with ThreadPoolExecutor(2) as pool:
            got = list(
                pool.map(lambda s: chat(client, "How do I keep bread fresh?", s, max_tokens=12), [steering, None])
            )
    want = generate_batch(
        smollm2,
        ["How do I keep bread fresh?"] * 2,
        max_new_tokens=12,
        steering=SteeringSpec(vec, 10, [4.0, 0.0], scale="unit"),
    )
    assert [g.choices[0].message.content for g in got] == [w.text for w in want]
