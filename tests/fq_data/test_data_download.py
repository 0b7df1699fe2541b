"""prepare_fitzpatrick17k against a local http.server on 127.0.0.1 serving generated JPEGs: 404s,
slow responses, short reads, undecodable payloads, flaky 500s, and an interrupted run resumed.
Real URLs are never contacted: every url is rebased onto the local server."""

from __future__ import annotations

import collections
import contextlib
import http.server
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from fq_data import DataError, _download, load_fitzpatrick17k, prepare_fitzpatrick17k
from fq_data.__main__ import main


class _Server:
    """Serves ``/<anything>/<md5>.jpg`` according to ``behaviour[md5]``; counts requests."""

    def __init__(self, payloads: dict[str, bytes], behaviour: dict[str, str]):
        self.payloads, self.behaviour = payloads, behaviour
        self.hits: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                md5 = Path(self.path).stem
                with outer.lock:
                    outer.hits[md5] += 1
                    n = outer.hits[md5]
                mode = outer.behaviour.get(md5, "ok")
                data = outer.payloads.get(md5)
                if data is None or mode == "404":
                    self.send_error(404)
                    return
                if mode == "slow" or (mode == "slow_once" and n == 1):
                    time.sleep(0.6)  # the client times out at 0.25 s
                if mode == "flaky500" and n == 1:
                    self.send_error(500)
                    return
                body = data
                if mode == "bad_jpeg":  # complete response, but the JPEG is cut in half
                    body = data[: len(data) // 2]
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(data) if mode == "short" else len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body[: len(body) // 2] if mode == "short" else body)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # client gone after a timeout
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def csv_and_payloads(tmp_path, data_helpers):
    rows = data_helpers.fitz_rows(per_type=4, n_unknown=1)  # 25 real rows
    payloads = {}
    data_helpers.write_fitz_images(rows, tmp_path / "src")
    for h in rows["md5hash"]:
        payloads[h] = (tmp_path / "src" / f"{h}.jpg").read_bytes()
    # urls keep their real paths (with the md5 as the file name) but are rebased on the server
    rows = rows.with_columns(
        (pl.lit("https://example.invalid/img/") + pl.col("md5hash") + pl.lit(".jpg")).alias("url")
    )
    rows.write_csv(tmp_path / "fitzpatrick17k.csv")
    return tmp_path / "fitzpatrick17k.csv", rows, payloads


FAST = dict(workers=4, retries=2, backoff=0.01, timeout=0.25)


def _prepare_cli(csv: Path, out: Path, url: str, *flags: str) -> int:
    """``python -m fq_data prepare fitzpatrick17k`` as a user would type it; its exit code."""
    return main(["prepare", "fitzpatrick17k", "--csv", str(csv), "--out", str(out),
                 "--base-url", url, *flags])  # fmt: skip


def test_download_failures_manifest_and_shards_load(csv_and_payloads, tmp_path):
    csv, rows, payloads = csv_and_payloads
    h = rows["md5hash"].to_list()
    behaviour = {
        h[0]: "404",
        h[1]: "slow",
        h[2]: "short",
        h[3]: "bad_jpeg",
        h[4]: "slow_once",
        h[5]: "flaky500",
    }
    out = tmp_path / "out"
    with _Server(payloads, behaviour) as srv:
        res = prepare_fitzpatrick17k(csv, out, base_url=srv.url, **FAST)
        hits = dict(srv.hits)
    failed = {h[0]: "HTTP 404", h[1]: "timeout", h[2]: "IncompleteRead", h[3]: "corrupt"}
    assert res.rows == 25 and res.failed == 4 and res.downloaded == 21
    manifest = pl.read_csv(res.manifest)
    got = dict(zip(manifest["md5hash"], manifest["reason"], strict=True))
    assert set(got) == set(failed)
    for k, word in failed.items():
        assert word.lower() in got[k].lower(), (k, got[k])
    # 404 is permanent (one request); transient failures are retried (1 + 2 retries)
    assert hits[h[0]] == 1 and hits[h[1]] == 3 and hits[h[2]] == 3 and hits[h[3]] == 3
    assert hits[h[4]] == 2 and hits[h[5]] == 2  # recovered on the retry
    assert (out / "images" / f"{h[4]}.jpg").read_bytes() == payloads[h[4]]
    assert not (out / "images" / f"{h[0]}.jpg").exists()
    assert not list((out / "images").glob(".*"))  # no temp file left
    # the shards are a source that load_fitzpatrick17k (via datasets) reads
    dd = load_fitzpatrick17k(out, label_col="three_partition_label")
    ids = set(dd["train"]["id"]) | set(dd["test"]["id"])
    known_ok = set(rows.filter(pl.col("fitzpatrick_scale") != "-1")["md5hash"]) - set(failed)
    assert ids == known_ok
    assert dd["train"][0]["image"].size == (32, 32)


def test_resume_fetches_only_what_is_missing_or_invalid(csv_and_payloads, tmp_path):
    csv, rows, payloads = csv_and_payloads
    h = rows["md5hash"].to_list()
    out = tmp_path / "out"
    with _Server(payloads, {}) as srv:
        first = prepare_fitzpatrick17k(csv, out, base_url=srv.url, limit=10, **FAST)
        assert first.downloaded == 10 and first.failed == 0
        assert all(srv.hits[x] == 1 for x in h[:10])
        # a damaged copy, and a temp file as left by a killed process
        (out / "images" / f"{h[0]}.jpg").write_bytes(payloads[h[0]][:100])
        (out / "images" / f".{h[1]}.jpg.abc.part").write_bytes(b"partial")
        # the CLI, as a user would resume
        flags = ["--workers", "4", "--backoff", "0.01", "--timeout", "0.25", "--quiet"]
        assert _prepare_cli(csv, out, srv.url, *flags) == 0
        hits = dict(srv.hits)
    assert hits[h[0]] == 2  # the damaged file was fetched again
    assert all(hits[x] == 1 for x in h[1:])  # valid files were not re-fetched
    assert (out / "images" / f"{h[0]}.jpg").read_bytes() == payloads[h[0]]
    assert not list((out / "images").glob(".*.part"))
    assert len(list((out / "data").glob("train-*.parquet"))) == 1


def test_interrupted_run_leaves_nothing_half_written_and_resumes(
    csv_and_payloads, tmp_path, monkeypatch
):
    csv, rows, payloads = csv_and_payloads
    out = tmp_path / "out"
    real_fetch = _download.fetch_image
    calls = {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] > 6:
            raise KeyboardInterrupt
        return real_fetch(*a, **k)

    with _Server(payloads, {}) as srv:
        monkeypatch.setattr(_download, "fetch_image", interrupted)
        with pytest.raises(KeyboardInterrupt):
            prepare_fitzpatrick17k(csv, out, base_url=srv.url, workers=1, retries=0)
        assert not (out / "data").exists() and not (out / "failures.csv").exists()
        done = sorted(p.stem for p in (out / "images").glob("*.jpg"))
        assert len(done) == 6 and not list((out / "images").glob(".*"))
        monkeypatch.setattr(_download, "fetch_image", real_fetch)
        res = prepare_fitzpatrick17k(csv, out, base_url=srv.url, **FAST)
        hits = dict(srv.hits)
    assert res.already_present == 6 and res.downloaded == 19
    assert all(hits[x] == 1 for x in rows["md5hash"])


def test_strict_fails_without_writing_shards(csv_and_payloads, tmp_path):
    csv, rows, payloads = csv_and_payloads
    out = tmp_path / "out"
    with _Server(payloads, {rows["md5hash"][0]: "404"}) as srv:
        with pytest.raises(DataError, match=r"1 image\(s\) could not be fetched"):
            prepare_fitzpatrick17k(csv, out, base_url=srv.url, strict=True, **FAST)
        assert _prepare_cli(csv, out, srv.url, "--strict", "--quiet", "--timeout", "0.25") == 2
    assert not (out / "data").exists()
    assert pl.read_csv(out / "failures.csv")["reason"].to_list() == ["HTTP 404"]
    with pytest.raises(ValueError, match="workers must be an int >= 1"):
        prepare_fitzpatrick17k(csv, out, workers=0)
