"""The lake on object storage: DeltaStore over `s3://` against moto's S3 server on loopback.

Credentials and endpoint only from the environment (what delta-rs reads itself); no locking
provider and no AWS_S3_ALLOW_UNSAFE_RENAME: commits use S3 conditional put (If-None-Match: *),
which this server honours (checked first, since a server that ignored it would lose commits).
"""

from __future__ import annotations

import multiprocessing as mp
import uuid

import duckdb
import polars as pl
import pytest

from rtmap_assets.lake.delta_store import DeltaStore, register_lake_views
try:
    from rtmap_assets_tests.lake_tables import METRICS, _writer, metrics_rows
except ImportError:  # pytest's rootdir-relative import mode
    from lake_tables import METRICS, _writer, metrics_rows

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")


def _serve_s3(ready, stop) -> None:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    ready.put(server.get_host_and_port())
    stop.wait()
    server.stop()


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on a free loopback port, in its own process: some delta-rs calls keep the
    GIL while they wait for the server (QueryBuilder.execute, is_deltatable), so a server thread in
    this process would never answer them."""
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve_s3, args=(ready, stop), daemon=True)
    proc.start()
    try:
        host, port = ready.get(timeout=120)
        yield f"http://{host}:{port}"
    finally:
        stop.set()
        proc.join(20)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    """A fresh bucket; AWS_* variables set the way a deployment would (spawned writers inherit them)."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_S3_ALLOW_UNSAFE_RENAME", "AWS_S3_LOCKING_PROVIDER"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")  # the loopback server speaks plain http
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    name = f"lake-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    return client, name


def _keys(client, bucket: str, prefix: str) -> list[str]:
    out = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in out.get("Contents", []))


@pytest.mark.slow  # the S3 server process starts in 2–8 s
def test_server_honours_conditional_put(bucket):
    client, name = bucket
    client.put_object(Bucket=name, Key="probe", Body=b"1", IfNoneMatch="*")
    with pytest.raises(client.exceptions.ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=name, Key="probe", Body=b"2", IfNoneMatch="*")


@pytest.mark.slow
def test_replace_read_maintain_on_s3(bucket):
    client, name = bucket
    store = DeltaStore(f"s3://{name}/trial")
    assert store.uri(METRICS) == f"s3://{name}/trial/metrics"
    assert not store.exists(METRICS) and store.read(METRICS).height == 0
    assert store.replace_patient(METRICS, "P1", metrics_rows("P1", 3)) == 0
    assert store.replace_patient(METRICS, "P2", metrics_rows("P2", 2)) == 1
    assert store.replace_patient(METRICS, "P1", metrics_rows("P1", 1, run=4)) == 2
    assert store.read(METRICS, patient_id="P1").equals(metrics_rows("P1", 1, run=4))
    assert store.read(METRICS).height == 3
    data_keys = [k for k in _keys(client, name, "trial/metrics/") if k.endswith(".parquet") and "_delta_log" not in k]
    assert len(data_keys) == 3  # P1 v0 (now unreferenced), P2, P1 v2

    out = store.maintain(METRICS, vacuum_retention_hours=0)
    assert (out["files_before"], out["files_after"], out["files_vacuumed"]) == (2, 1, 3)  # 2 compacted + P1 v0
    data_keys = [k for k in _keys(client, name, "trial/metrics/") if k.endswith(".parquet") and "_delta_log" not in k]
    assert len(data_keys) == 1
    assert store.read(METRICS).sort("patient_id").get_column("patient_id").to_list() == ["P1", "P2", "P2"]

    con = duckdb.connect()
    register_lake_views(con, store, [METRICS])
    assert con.execute("SELECT sum(n_voxels) FROM metrics").fetchall() == [(10,)]


@pytest.mark.slow
def test_concurrent_replace_on_s3_both_land(bucket):
    client, name = bucket
    root = f"s3://{name}/trial"
    store = DeltaStore(root)
    for pid in ("P0", "PA", "PB"):
        store.replace_patient(METRICS, pid, metrics_rows(pid, 3))
    store.maintain(METRICS, vacuum_retention_hours=0)  # one shared file: the writers conflict for real
    start_version = store.version(METRICS)
    ctx = mp.get_context("spawn")
    retries = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(root, pid, 5, 2, retries)) for pid in ("PA", "PB")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    (r1, v1), (r2, v2) = retries.get(timeout=5), retries.get(timeout=5)
    print(f"commit retries on s3: {r1 + r2}")
    assert sorted(v1 + v2) == list(range(start_version + 1, start_version + 11))
    got = store.read(METRICS)
    for pid in ("PA", "PB"):
        rows = got.filter(pl.col("patient_id") == pid)
        assert rows.height == 2 and rows.get_column("run").unique().to_list() == [4]
    assert got.filter(pl.col("patient_id") == "P0").height == 3
    assert store.version(METRICS) == start_version + 10
    # Every commit is its own log object: none was overwritten by the other writer.
    commits = [k for k in _keys(client, name, "trial/metrics/_delta_log/") if k.endswith(".json")]
    assert len(commits) == start_version + 11
