"""The OpenAPI document against what the API answers: schemathesis with every check
(`st run --checks all`: status codes, response bodies and headers, content types, schema-valid
requests accepted, schema-violating ones refused, 405 with the right Allow, auth ignored or
not...) against a live API process, a bounded number of cases per operation. The exceptions
the document cannot express as schema are listed, with why, in schemathesis.toml."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.access import auth
from service.contract.settings import Settings
from service.infra.db import make_engine, make_sessionmaker, migrate

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = 3  # per operation in the fuzzing phase; the coverage phase adds ~1,500 boundary cases


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_api_answers_as_its_openapi_document_says(tmp_path):
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis's `st` command is installed with the dev extras"
    settings = Settings(data_dir=tmp_path)
    migrate(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    with make_sessionmaker(engine)() as session:
        token = auth.create_token(session, "contract", "admin")[1]
    engine.dispose()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROKLAB_")}
    env["GROKLAB_DATA_DIR"] = str(tmp_path)
    # A live-event stream of a queued experiment stays open (with keep-alives) until its
    # lifetime ends: one second here, as a reconnecting client would see it end, rather than
    # each stream holding a schemathesis worker until its request timeout (~90 s of the test).
    env["GROKLAB_EVENTS_MAX_LIFETIME_S"] = "1"
    api = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "api", "--port", str(port)], env=env, cwd=ROOT,
        stdout=open(tmp_path / "api.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and api.poll() is None, (tmp_path / "api.log").read_text()
            time.sleep(0.2)
        run = subprocess.run(
            [st, "--config-file", str(ROOT / "schemathesis.toml"), "run",
             f"http://127.0.0.1:{port}/openapi.json", "--checks", "all",
             "--max-examples", str(MAX_EXAMPLES), "--seed", "1", "--no-color", "--workers", "2",
             "-H", f"Authorization: Bearer {token}"],
            capture_output=True, text=True, timeout=540, cwd=tmp_path,
        )
    finally:
        os.killpg(api.pid, signal.SIGTERM)
        api.wait(timeout=30)
    summary = run.stdout[run.stdout.find("SUMMARY"):]
    assert run.returncode == 0, run.stdout[-6000:]
    assert "Tested: " in summary and "failures" not in summary.splitlines()[-1], summary
