"""The Python client of a running groklab service (httpx): experiments, metrics, checkpoints,
analysis, live events and sweeps. Import it from the package: `from service.client import Client`
(see service/client/__init__.py).

Every failure raises GroklabError: `status` is the HTTP status (None when the service could not
be reached or a download failed its check) and `detail` is the server's own `detail`.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from service.client.sse import parse_sse
from service.contract.spec import deep_merge

DEFAULT_URL = "http://127.0.0.1:8000"
API = "/api/v1"
FINISHED = ("succeeded", "failed", "cancelled", "pruned")
# Where wait() stops: a finished job, or a paused one (it moves again only when resumed).
STOPPED = (*FINISHED, "paused")
# Reconnects of an events stream in a row that may fail before events() gives up.
EVENTS_RETRIES = 5


class GroklabError(Exception):
    """A request that failed: the HTTP status (None: no answer, or a failed download check) and
    the server's `detail` (a string, or FastAPI's list of {loc, msg} for a 422)."""

    def __init__(self, status: int | None, detail: Any):
        self.status = status
        self.detail = detail
        super().__init__(f"{status if status is not None else 'error'}: {_describe(detail)}")


def _describe(detail: Any) -> str:
    """A 422's list of field errors as `body.task.p: msg; ...`; anything else as it is."""
    if isinstance(detail, list) and all(isinstance(e, dict) and "msg" in e for e in detail):
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', []))}: {e['msg']}" for e in detail
        )
    return detail if isinstance(detail, str) else json.dumps(detail)


def _names(names: str | Iterable[str] | None) -> str | None:
    return names if names is None or isinstance(names, str) else ",".join(names)


class Client:
    """A session with one groklab service. `url` and `token` default to GROKLAB_URL (else
    http://127.0.0.1:8000) and GROKLAB_TOKEN. `http`: an httpx.Client to send through instead
    (its base URL and headers are used as they are)."""

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 30.0,
        *, http: httpx.Client | None = None,
    ):
        self._owns_http = http is None
        if http is None:
            url = (url or os.environ.get("GROKLAB_URL") or DEFAULT_URL).rstrip("/")
            token = token or os.environ.get("GROKLAB_TOKEN")
            if not token:
                raise GroklabError(
                    None, "no token: set GROKLAB_TOKEN or pass token= (make one with "
                    "`groklab token create --owner NAME --scope write`)"
                )
            http = httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
            )
        self.http = http
        self.url = str(http.base_url).rstrip("/")

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- requests --------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, f"{API}{path}", **kwargs)
        except httpx.HTTPError as exc:
            raise GroklabError(None, f"cannot reach {self.url}: {exc}") from exc
        _raise_for_status(response)
        return response

    @contextmanager
    def _stream(self, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A GET whose body is read as it arrives; errors as _request's."""
        try:
            with self.http.stream("GET", f"{API}{path}", **kwargs) as response:
                if not response.is_success:
                    response.read()
                    _raise_for_status(response)
                yield response
        except httpx.HTTPError as exc:
            raise GroklabError(None, f"connection to {self.url} failed: {exc}") from exc

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _pages(self, path: str, params: dict) -> Iterator[dict]:
        """Every item of a cursor-paged listing to the last page: {items, next_cursor} pages,
        or a JSON list with the next cursor in the X-Next-Cursor header (checkpoints)."""
        params = {k: v for k, v in params.items() if v is not None}
        while True:
            response = self._request("GET", path, params=params)
            page = response.json()
            if isinstance(page, list):
                items, cursor = page, response.headers.get("X-Next-Cursor")
            else:
                items, cursor = page["items"], page["next_cursor"]
            yield from items
            if not cursor:
                return
            params["cursor"] = cursor

    # ---- experiments ------------------------------------------------------------------------

    def submit(self, spec: dict | None = None, *, preset: str | None = None, **overrides: Any) -> dict:
        """Submit a spec (a dict as in a spec file), a preset, or both; keyword arguments
        override fields, sections merged: `submit(preset="ci-small", training={"steps": 600})`.
        Returns the queued job."""
        body = dict(spec or {})
        if preset is not None:
            body["preset"] = preset
        return self._json("POST", "/experiments", json=deep_merge(body, overrides))

    def get(self, experiment_id: str) -> dict:
        """A job: status, spec, progress, timestamps, error, summary."""
        return self._json("GET", f"/experiments/{experiment_id}")

    def list(
        self, status: str | None = None, name: str | None = None, *, sweep_id: str | None = None,
        owner: str | None = None, limit: int | None = None, with_spec: bool = False,
    ) -> Iterator[dict]:
        """Every job that matches, newest first, fetched `limit` per page (default 50); each
        without its spec unless `with_spec` (get() always has it)."""
        return self._pages("/experiments", {
            "status": status, "name": name, "sweep_id": sweep_id, "owner": owner, "limit": limit,
            "fields": "spec" if with_spec else None,
        })

    def cancel(self, experiment_id: str) -> dict:
        """Cancel a queued job at once, a running one at its next step (`cancel_requested`).
        409 when it had already finished."""
        return self._json("POST", f"/experiments/{experiment_id}/cancel")

    def pause(self, experiment_id: str) -> dict:
        """Pause a job: a queued one is `paused` at once; a running one gets `pause_requested`,
        and its worker checkpoints it and marks it `paused` within a few seconds (wait() returns
        then). 409 when it had already finished."""
        return self._json("POST", f"/experiments/{experiment_id}/pause")

    def resume(self, experiment_id: str) -> dict:
        """Resume a paused job: `queued` again, it continues from its checkpoint (a running job
        whose pause was requested trains on). 409 when it is not paused; 429 when it would put
        the owner over its active-jobs quota."""
        return self._json("POST", f"/experiments/{experiment_id}/resume")

    def wait(
        self, experiment_id: str, timeout: float | None = None, progress: bool = True,
        poll_s: float = 1.0,
    ) -> dict:
        """Poll the job until it is finished (succeeded, failed, cancelled, or pruned by its
        sweep's early stopping: summary["pruning"] says why) or paused, and
        return it: a paused job moves again only when resumed, so waiting stops there too
        (check `status`; resume() and wait() again to follow it on). With `progress`, a
        progress bar on stderr. GroklabError (status None) after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with _ProgressBar(progress) as bar:
            while True:
                job = self.get(experiment_id)
                bar.show(job)
                if job["status"] in STOPPED:
                    return job
                if deadline is not None and time.monotonic() > deadline:
                    raise GroklabError(
                        None, f"experiment {experiment_id} still {job['status']} after {timeout}s"
                    )
                time.sleep(poll_s)

    def events(self, experiment_id: str, last_event_id: str | None = None) -> Iterator[tuple[str, Any]]:
        """The job's live events as (event, data) until `end`: `status` (the job as get()
        returns it, less its spec), `metrics` ({step, points: [{name, member, step, value}]})
        and `end` (the finished job). A dropped connection is resumed from the last event id it saw."""
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_event_id is not None:
                headers["Last-Event-ID"] = last_event_id
            received, why = False, "the stream ended before `end`"
            try:
                with self._stream(f"/experiments/{experiment_id}/events", headers=headers) as response:
                    for sse in parse_sse(response.iter_lines()):
                        received = True
                        if sse.id is not None:
                            last_event_id = sse.id
                        yield sse.event, _json_or_text(sse.data)
                        if sse.event == "end":
                            return
            except GroklabError as exc:
                if exc.status is not None:
                    raise
                why = exc.detail
            # Dropped: resume from last_event_id; give up after EVENTS_RETRIES fruitless tries.
            failures = 1 if received else failures + 1
            if failures > EVENTS_RETRIES:
                raise GroklabError(
                    None, f"events of experiment {experiment_id}: lost the connection to "
                    f"{self.url} {failures} times in a row ({why})"
                )
            time.sleep(min(0.2 * 2**failures, 5.0))

    # ---- metrics, checkpoints, analysis ---------------------------------------------------

    def metrics_series(
        self, experiment_id: str, names: str | Iterable[str] | None = None, *,
        max_points: int | None = None, from_step: int | None = None, to_step: int | None = None,
        member: int | None = None, format: str = "json",
    ) -> Any:
        """The server's metrics response: {series: [{name, member, steps, values}], ...}, or
        with format="csv" the CSV text (name,member,step,value). Downsampled on the server to
        `max_points` per series."""
        params = {
            "names": _names(names), "max_points": max_points, "from_step": from_step,
            "to_step": to_step, "member": member, "format": format,
        }
        response = self._request(
            "GET", f"/experiments/{experiment_id}/metrics",
            params={k: v for k, v in params.items() if v is not None},
        )
        return response.text if format == "csv" else response.json()

    def metrics(self, experiment_id: str, names: str | Iterable[str] | None = None, **query: Any):
        """The metrics as one row per point (name, member, step, value): a pandas DataFrame
        when pandas is installed, else a list of dicts. `query`: as metrics_series()."""
        data = self.metrics_series(experiment_id, names, **query)
        rows = [
            {"name": s["name"], "member": s["member"], "step": step, "value": value}
            for s in data["series"] for step, value in zip(s["steps"], s["values"])
        ]
        try:
            import pandas
        except ImportError:
            return rows
        return pandas.DataFrame(rows, columns=["name", "member", "step", "value"])

    def checkpoints(self, experiment_id: str, *, limit: int | None = None) -> list[dict]:
        """Every stored checkpoint by step (size, sha256, created_at, metadata), fetched
        `limit` per page."""
        return list(self._pages(f"/experiments/{experiment_id}/checkpoints", {"limit": limit}))

    def download_checkpoint(
        self, experiment_id: str, step: int, path: str | Path, expected_sha256: str | None = None,
    ) -> Path:
        """Write the checkpoint (safetensors) to `path`, streamed, and checked against the
        sha256 the server sends (X-Checksum-Sha256) and `expected_sha256` when given; on a
        mismatch or a broken download nothing is left at `path` and GroklabError is raised."""
        path = Path(path)
        partial = path.with_name(f"{path.name}.part")
        digest = hashlib.sha256()
        try:
            with self._stream(f"/experiments/{experiment_id}/checkpoints/{step}") as response:
                served = response.headers.get("X-Checksum-Sha256")
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes():
                        digest.update(chunk)
                        out.write(chunk)
            for source, expected in (("X-Checksum-Sha256", served),
                                     ("expected_sha256", expected_sha256)):
                if expected is not None and expected.lower() != digest.hexdigest():
                    raise GroklabError(
                        None, f"checkpoint {step} of experiment {experiment_id}: sha256 "
                        f"{digest.hexdigest()} does not match {source} {expected}; nothing written"
                    )
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        return path

    def export_checkpoint(
        self, experiment_id: str, step: int, path: str | Path, *, member: int = 0,
        format: str = "transformer_lens",
    ) -> Path:
        """Write one ensemble member of a checkpoint as a TransformerLens state dict."""
        response = self._request(
            "GET", f"/experiments/{experiment_id}/checkpoints/{step}/export",
            params={"format": format, "member": member},
        )
        path = Path(path)
        path.write_bytes(response.content)
        return path

    def analysis(self, experiment_id: str, **thresholds: Any) -> dict:
        """The grokking summary, latest Fourier measures and phases; keyword arguments are the
        endpoint's threshold parameters (e.g. generalization_acc=0.95)."""
        return self._json("GET", f"/experiments/{experiment_id}/analysis", params=thresholds)

    # ---- the circuit of a checkpoint (computed by a worker on first request) ------------------

    def _computed(self, path: str, params: dict, timeout: float) -> dict:
        """GET an analysis a worker computes on demand: while it answers 202 (pending), ask
        again after its Retry-After; GroklabError (status None) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            response = self._request("GET", path, params=params)
            if response.status_code != 202:
                return response.json()
            if time.monotonic() > deadline:
                raise GroklabError(None, f"{path} still pending after {timeout}s: "
                                   f"{response.json().get('detail')}")
            time.sleep(float(response.headers.get("Retry-After", "2")))

    def embedding(
        self, experiment_id: str, step: int, *, member: int = 0, timeout: float = 300.0
    ) -> dict:
        """The embedding's clocks at a checkpoint: per key frequency, the residues' points."""
        return self._computed(f"/experiments/{experiment_id}/checkpoints/{step}/embedding",
                              {"member": member}, timeout)

    def neurons(
        self, experiment_id: str, step: int, *, member: int = 0, timeout: float = 300.0
    ) -> dict:
        """Every MLP neuron's best frequency and the share of its variance it explains."""
        return self._computed(f"/experiments/{experiment_id}/checkpoints/{step}/neurons",
                              {"member": member}, timeout)

    def waves(
        self, experiment_id: str, step: int, *, member: int = 0,
        neurons: Iterable[int] | str | None = None, answer: int = 0, timeout: float = 300.0,
    ) -> dict:
        """Chosen neurons' activations (indices, or "3,17"; default: the top 4 of distinct
        frequencies) and the logit of `answer` over all (a, b) pairs."""
        params: dict[str, Any] = {"member": member, "answer": answer}
        if neurons is not None:
            params["neurons"] = (neurons if isinstance(neurons, str)
                                 else ",".join(str(n) for n in neurons))
        return self._computed(f"/experiments/{experiment_id}/checkpoints/{step}/waves",
                              params, timeout)

    def attention(
        self, experiment_id: str, step: int, *, member: int = 0, timeout: float = 300.0
    ) -> dict:
        """The '=' position's attention to a and to b over all pairs, per layer and head."""
        return self._computed(f"/experiments/{experiment_id}/checkpoints/{step}/attention",
                              {"member": member}, timeout)

    def llc(self, experiment_id: str, step: int | None = None, *, timeout: float = 1800.0) -> dict:
        """The local learning coefficient of every member: at one checkpoint (step), or as
        series over the stored checkpoints (step None), waiting while workers estimate it."""
        at = "" if step is None else f"/checkpoints/{step}"
        return self._computed(f"/experiments/{experiment_id}{at}/llc", {}, timeout)

    # ---- sweeps -----------------------------------------------------------------------------

    def submit_sweep(self, spec: dict) -> dict:
        """Submit a sweep ({name, base, grid, pack_size, early_stopping}); returns it with its
        experiment_ids."""
        return self._json("POST", "/sweeps", json=spec)

    def sweep(self, sweep_id: str) -> dict:
        return self._json("GET", f"/sweeps/{sweep_id}")

    def sweeps(self, *, owner: str | None = None, limit: int | None = None) -> Iterator[dict]:
        """Every sweep, newest first, fetched `limit` per page."""
        return self._pages("/sweeps", {"owner": owner, "limit": limit})

    def cancel_sweep(self, sweep_id: str) -> dict:
        return self._json("POST", f"/sweeps/{sweep_id}/cancel")

    def pause_sweep(self, sweep_id: str) -> dict:
        """Pause every member that has not finished (as pause() does each); 409 when every
        member had finished."""
        return self._json("POST", f"/sweeps/{sweep_id}/pause")

    def resume_sweep(self, sweep_id: str) -> dict:
        """Resume every paused member (as resume() does each); 409 when none is paused, 429
        when they would put the owner over its active-jobs quota."""
        return self._json("POST", f"/sweeps/{sweep_id}/resume")

    def phase_diagram(
        self, sweep_id: str, x: str, y: str | None = None, *, format: str = "json",
    ) -> Any:
        """Cells over axis x (and y): counts by phase, grokked fraction, median steps; the CSV
        text with format="csv"."""
        params = {"x": x, "format": format, **({"y": y} if y is not None else {})}
        response = self._request("GET", f"/sweeps/{sweep_id}/phase-diagram", params=params)
        return response.text if format == "csv" else response.json()

    def sweep_members(self, sweep_id: str, *, format: str = "json") -> Any:
        """One row per member: experiment id, status, axis values, summary; CSV with
        format="csv"."""
        response = self._request("GET", f"/sweeps/{sweep_id}/members", params={"format": format})
        return response.text if format == "csv" else response.json()

    # ---- reproductions ------------------------------------------------------------------------

    def reproductions(self) -> list[dict]:
        """Every reproduction: its paper, claims and the sweep of each scale."""
        return self._json("GET", "/reproductions")["items"]

    def reproduce(self, name: str, scale: str = "ci") -> dict:
        """Submit a reproduction's sweep at this scale ("ci" or "paper"); returns the run, whose
        sweep.id reproduction_run() takes."""
        return self._json("POST", f"/reproductions/{name}", json={"scale": scale})

    def reproduction_run(self, name: str, sweep_id: str) -> dict:
        """The run: its sweep, members and, once every member has finished, verdict and claims."""
        return self._json("GET", f"/reproductions/{name}/runs/{sweep_id}")

    def sweep_report(self, sweep_id: str) -> dict:
        """The same report found from the sweep alone (HTTPError 404: not a reproduction's run)."""
        return self._json("GET", f"/sweeps/{sweep_id}/report")

    def wait_reproduction(
        self, name: str, sweep_id: str, *, poll_s: float = 2.0, timeout_s: float | None = None,
        on_progress: Any = None,
    ) -> dict:
        """Poll the run until it has a verdict (every member finished); on_progress(run) after
        each poll. TimeoutError after timeout_s."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            run = self.reproduction_run(name, sweep_id)
            if on_progress is not None:
                on_progress(run)
            if run["verdict"] is not None:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"reproduction {name} run {sweep_id} still {run['sweep']['status']}")
            time.sleep(poll_s)


def _raise_for_status(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text or response.reason_phrase
    raise GroklabError(response.status_code, detail)


def _json_or_text(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data


class _ProgressBar:
    """A job's steps under a Rich progress bar on stderr; nothing when not shown."""

    def __init__(self, shown: bool):
        self._bar = None
        if shown:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(),
                TextColumn("{task.completed}/{task.total} steps"), TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(), console=Console(stderr=True),
            )
            self._task = self._bar.add_task("queued", total=None, rate="")

    def __enter__(self) -> _ProgressBar:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def show(self, job: dict) -> None:
        if self._bar is None:
            return
        prog = job.get("progress") or {}
        rate = prog.get("steps_per_s")
        self._bar.update(
            self._task, description=job["status"], total=prog.get("total_steps"),
            completed=prog.get("step") or 0, rate=f"{rate:.1f} steps/s" if rate else "",
        )
