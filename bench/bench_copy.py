"""Binary COPY of metric points into PostgreSQL: the store's numpy encoder vs psycopg's own.

The store writes new metric points with `COPY metrics ... FROM STDIN (FORMAT BINARY)`. It can
build the binary stream itself, laid out by numpy (`copy_binary` below, the store's encoder until
this benchmark), or let psycopg 3 encode it row by row (`copy.set_types([...])`,
`copy.write_row(row)`: service.store.metrics_ingest.copy_points, what the store does now). The
hand-written encoder was worth keeping only if it was at least 1.5x faster; it was not.

Both get the same batches, as the worker's recorder sends them: 5 metric names x 4 ensemble
members x 5000 steps = 100k points, step-major, in batches of 1000 and of 20000 rows, each
batch one COPY and one commit (synchronous_commit off, as in ingestion). The two are
interleaved, each into fresh experiment ids of the same table. Timed: the encoding, the COPY and
the commit; the rows are validated into columns (`_Points`) beforehand, as ingest_metrics does
for both.

    .venv/bin/python bench/bench_copy.py [--repeat 3]

PostgreSQL: a database is created for the run and dropped after it, on the server of
GROKLAB_TEST_DATABASE_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test).
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.bench_metrics import drop_postgres, postgres_url  # noqa: E402
from service.infra.db import make_engine, migrate  # noqa: E402
from service.store.metrics_ingest import _COPY_SQL, _Points, copy_points  # noqa: E402

NAMES = ("train_loss", "val_loss", "train_acc", "val_acc", "weight_norm")
MEMBERS = 4
STEPS = 5000
BATCHES = (1000, 20_000)
GOAL = 1.5  # the hand-written encoder stays only if it is this much faster


def recorder_rows() -> list[dict]:
    """Step-major rows, every name of every member at each step, with a few NaN values."""
    rng = np.random.default_rng(0)
    values = rng.normal(size=(STEPS, MEMBERS, len(NAMES)))
    values[rng.random(values.shape) < 0.001] = np.nan
    table = values.tolist()
    return [
        {"step": step, "member": member, "name": name, "value": table[step][member][i]}
        for step in range(STEPS)
        for member in range(MEMBERS)
        for i, name in enumerate(NAMES)
    ]


_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension
_PGCOPY_TRAILER = b"\xff\xff"


def copy_binary(experiment_id: str, points: _Points) -> bytes:
    """The points in COPY's binary format, laid out by numpy: the rows of one metric name (and
    one NULL-ness of the value) share a fixed-size record, so each group is one array."""
    eid = experiment_id.encode()
    null = np.isnan(points.values)
    chunks = [_PGCOPY_HEADER]
    for (code, name), is_null in itertools.product(enumerate(points.unique_names), (False, True)):
        index = np.flatnonzero((points.name_code == code) & (null == is_null))
        if not len(index):
            continue
        encoded = name.encode()
        fields = [
            ("n_fields", ">i2"), ("eid_len", ">i4"), ("eid", f"S{len(eid)}"),
            ("name_len", ">i4"), ("name", f"S{len(encoded)}"),
            ("member_len", ">i4"), ("member", ">i4"), ("step_len", ">i4"), ("step", ">i4"),
            ("value_len", ">i4"),
        ]
        if not is_null:
            fields.append(("value", ">f8"))
        records = np.empty(len(index), dtype=np.dtype(fields))
        records["n_fields"] = 5
        records["eid_len"], records["eid"] = len(eid), eid
        records["name_len"], records["name"] = len(encoded), encoded
        records["member_len"], records["member"] = 4, points.members[index]
        records["step_len"], records["step"] = 4, points.steps[index]
        if is_null:
            records["value_len"] = -1  # NULL
        else:
            records["value_len"], records["value"] = 8, points.values[index]
        chunks.append(records.tobytes())
    chunks.append(_PGCOPY_TRAILER)
    return b"".join(chunks)




def copy_numpy(connection, experiment_id: str, points: _Points) -> None:
    with connection.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
        copy.write(copy_binary(experiment_id, points))
    connection.commit()


def copy_psycopg(connection, experiment_id: str, points: _Points) -> None:
    with connection.cursor() as cursor:
        copy_points(cursor, experiment_id, points)
    connection.commit()


VARIANTS = {"numpy encoder": copy_numpy, "psycopg write_row": copy_psycopg}


def run(connection, variant, batches: list[_Points]) -> tuple[float, float]:
    """(points per second, client CPU microseconds per point) for one pass over all batches,
    into a fresh experiment id."""
    experiment_id = str(uuid.uuid4())
    n = sum(map(len, batches))
    start, cpu = time.perf_counter(), time.process_time()
    for points in batches:
        variant(connection, experiment_id, points)
    return n / (time.perf_counter() - start), (time.process_time() - cpu) / n * 1e6


def encode_only(batches: list[_Points]) -> float:
    """Points per second of the numpy encoding alone, no server: the client's share of the cost."""
    experiment_id = str(uuid.uuid4())
    start = time.perf_counter()
    for points in batches:
        copy_binary(experiment_id, points)
    return sum(map(len, batches)) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="passes per variant and batch size")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    pg = postgres_url()
    if pg is None:
        return
    name, url = pg
    rows = recorder_rows()
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    try:
        migrate(url)
        engine = make_engine(url)
        raw = engine.raw_connection()
        connection = raw.driver_connection
        connection.execute("SET synchronous_commit = off")
        connection.commit()
        for batch in BATCHES:
            batches = [_Points(rows[i:i + batch]) for i in range(0, len(rows), batch)]
            run(connection, copy_numpy, batches[:2])  # warm up
            run(connection, copy_psycopg, batches[:2])
            for _ in range(args.repeat):
                for label, variant in VARIANTS.items():  # interleaved: drift hits both
                    results.setdefault((batch, label), []).append(run(connection, variant, batches))
            if batch == BATCHES[0]:
                encoded = encode_only(batches)
        raw.close()
        engine.dispose()
    finally:
        drop_postgres(name)

    print(f"\n{len(rows):,} points ({len(NAMES)} names x {MEMBERS} members x {STEPS} steps), "
          f"median of {args.repeat} passes; COPY + commit per batch")
    print(f"{'batch':>7s} {'numpy encoder':>16s} {'psycopg write_row':>18s} {'ratio':>7s}"
          f"   client CPU per point: numpy, psycopg")

    def median(batch: int, label: str, i: int) -> float:
        return statistics.median(r[i] for r in results[(batch, label)])

    for batch in BATCHES:
        numpy_rate, psycopg_rate = (median(batch, label, 0) for label in VARIANTS)
        numpy_cpu, psycopg_cpu = (median(batch, label, 1) for label in VARIANTS)
        print(f"{batch:>7,d} {numpy_rate:>12,.0f} p/s {psycopg_rate:>14,.0f} p/s "
              f"{numpy_rate / psycopg_rate:>6.2f}x   {numpy_cpu:.2f} us, {psycopg_cpu:.2f} us")
    print(f"numpy encoder alone (no server), batches of {BATCHES[0]}: {encoded:,.0f} points/s")
    ratio = median(BATCHES[0], "numpy encoder", 0) / median(BATCHES[0], "psycopg write_row", 0)
    verdict = "the numpy encoder pays" if ratio >= GOAL else "psycopg's copy (the store's choice)"
    print(f"goal: numpy encoder >= {GOAL}x psycopg's at the recorder's batch size -> {verdict}")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
