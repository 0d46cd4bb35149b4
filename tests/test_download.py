"""Downloads against a local HTTP server whose behaviour each test scripts."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from medbench.cli import main
from medbench.data import SIZES, dataset_info, download_dataset, load_dataset
from medbench.data.catalogue import medmnist_info
from medbench.data.download import download_url
from medbench.data.synthetic import write_synthetic_like
from medbench.errors import MedbenchError

FAST = {"backoff_seconds": 0.001, "progress": False, "timeout_seconds": 5}


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.files`; `server.script[path]` lists one behaviour per request (the
    last repeats): ok (honours Range), no-range (ignores it), 404, 500, corrupt (other
    bytes), truncate (half the promised body), drop:N (N bytes, then the line goes dead)."""

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        steps = srv.script.get(self.path, ["ok"])
        step = steps[min(srv.counts[self.path], len(steps) - 1)]
        srv.counts[self.path] += 1
        body = srv.files.get(self.path)
        if body is None or step == "404":
            return self.send_error(404)
        if step == "500":
            return self.send_error(500)
        if step == "corrupt":
            body = bytes(b ^ 0xFF for b in body)
        start, rng = 0, self.headers.get("Range")
        if rng and step != "no-range":
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                return self.send_error(416)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if step == "truncate":
            payload = payload[: len(payload) // 2]
        elif step.startswith("drop:"):
            payload = payload[: int(step.split(":")[1])]
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.script, srv.requests, srv.counts = {}, {}, [], Counter()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def served(server, tmp_path, monkeypatch) -> bytes:
    """A synthetic breastmnist.npz on the server, made 'official' by listing its MD5 in the
    catalogue medbench reads (medmnist's INFO) for the length of the test."""
    body = write_synthetic_like(tmp_path / "src", "breastmnist").read_bytes()
    server.files["/breastmnist.npz"] = body
    md5 = hashlib.md5(body).hexdigest()
    entry = medmnist_info().INFO["breastmnist"]
    for size in SIZES:
        monkeypatch.setitem(entry, "MD5" if size == 28 else f"MD5_{size}", md5)
    return body


def _target(data_dir: Path) -> Path:
    return data_dir / "breastmnist.npz"


def test_download_puts_the_verified_file_under_its_official_name(server, served, tmp_path):
    path = download_dataset("breastmnist", data_dir=tmp_path, mirror=server.url, **FAST)
    assert path == _target(tmp_path)
    assert path.read_bytes() == served
    assert not (tmp_path / "breastmnist.npz.part").exists()


def test_existing_file_is_used_and_never_downloaded_over(server, served, tmp_path):
    _target(tmp_path).write_bytes(b"my own file")
    download_dataset("breastmnist", data_dir=tmp_path, mirror=server.url, **FAST)
    assert _target(tmp_path).read_bytes() == b"my own file"
    assert server.requests == []


def test_404_fails_at_once_and_leaves_no_file(server, tmp_path):
    with pytest.raises(MedbenchError, match="HTTP 404"):
        download_dataset("breastmnist", data_dir=tmp_path, mirror=server.url, **FAST)
    assert len(server.requests) == 1
    assert not _target(tmp_path).exists()


def test_server_error_is_retried(server, served, tmp_path):
    server.script["/breastmnist.npz"] = ["500", "ok"]
    download_dataset("breastmnist", data_dir=tmp_path, mirror=server.url, **FAST)
    assert _target(tmp_path).read_bytes() == served
    assert len(server.requests) == 2


def test_retries_wait_with_exponential_backoff(server, tmp_path):
    server.files["/breastmnist.npz"] = b"x"
    server.script["/breastmnist.npz"] = ["500"]
    waits = []
    with pytest.raises(MedbenchError, match="after 4 attempts"):
        download_dataset("breastmnist", data_dir=tmp_path, mirror=server.url, retries=3,
                         backoff_seconds=0.5, progress=False, sleep=waits.append)  # fmt: skip
    assert waits == [0.5, 1.0, 2.0]


def test_truncated_body_never_becomes_the_file(server, served, tmp_path):
    server.script["/breastmnist.npz"] = ["truncate"]
    with pytest.raises(MedbenchError, match="cannot download"):
        download_dataset("breastmnist", data_dir=tmp_path, mirror=server.url, retries=2, **FAST)
    assert not _target(tmp_path).exists()


def test_dropped_connection_resumes_with_a_range_request(server, served, tmp_path):
    server.script["/breastmnist.npz"] = ["drop:1000", "ok"]
    download_dataset("breastmnist", data_dir=tmp_path, mirror=server.url, **FAST)
    assert [rng for _, rng in server.requests] == [None, "bytes=1000-"]
    assert _target(tmp_path).read_bytes() == served


def test_server_that_ignores_range_restarts_from_the_beginning(server, served, tmp_path):
    server.script["/breastmnist.npz"] = ["drop:1000", "no-range"]
    download_dataset("breastmnist", data_dir=tmp_path, mirror=server.url, **FAST)
    assert _target(tmp_path).read_bytes() == served


def test_wrong_checksum_fails_and_leaves_neither_file_nor_part(server, served, tmp_path):
    server.script["/breastmnist.npz"] = ["corrupt"]
    with pytest.raises(MedbenchError, match="MD5"):
        download_dataset("breastmnist", data_dir=tmp_path, mirror=server.url, retries=1, **FAST)
    assert not _target(tmp_path).exists()
    assert not (tmp_path / "breastmnist.npz.part").exists()


def test_bad_part_file_from_an_earlier_run_is_discarded(server, served, tmp_path):
    (tmp_path / "breastmnist.npz.part").write_bytes(b"\0" * len(served))  # server answers 416
    download_dataset("breastmnist", data_dir=tmp_path, mirror=server.url, **FAST)
    assert _target(tmp_path).read_bytes() == served


def test_mirror_comes_from_the_environment(server, served, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBENCH_MIRROR", server.url + "/")
    download_dataset("breastmnist", data_dir=tmp_path, **FAST)
    assert server.requests[0][0] == "/breastmnist.npz"


def test_without_a_mirror_the_official_url_is_used():
    assert download_url("dermamnist", 64) == dataset_info("dermamnist").url(64)
    assert download_url("dermamnist", 64, "https://m.example/a/") == (
        "https://m.example/a/dermamnist_64.npz"
    )


def test_progress_bar_goes_to_stderr_and_can_be_disabled(server, served, tmp_path, capsys):
    download_dataset("breastmnist", data_dir=tmp_path / "a", mirror=server.url,
                     backoff_seconds=0.001, progress=True)  # fmt: skip
    assert "breastmnist.npz" in capsys.readouterr().err
    download_dataset("breastmnist", data_dir=tmp_path / "b", mirror=server.url, **FAST)
    assert capsys.readouterr().err == ""


def test_unwritable_data_folder_is_a_user_error(server, served, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(MedbenchError, match="cannot create the data folder"):
        download_dataset("breastmnist", data_dir=tmp_path / "file" / "d", mirror=server.url, **FAST)


def test_load_dataset_downloads_a_missing_file(server, served, monkeypatch, recwarn):
    monkeypatch.setenv("MEDBENCH_MIRROR", server.url)
    data = load_dataset("breastmnist", progress=False)
    assert len(data.train) == 64 and data.path.read_bytes() == served


def test_cli_download_prints_the_path(server, served, tmp_path, capsys):
    rc = main(["download", "breastmnist", "--data-dir", str(tmp_path), "--mirror", server.url,
               "--quiet"])  # fmt: skip
    assert rc == 0
    assert str(_target(tmp_path)) in capsys.readouterr().out


def test_cli_failed_download_exits_2_with_one_line(server, tmp_path, capsys):
    rc = main(["download", "breastmnist", "--data-dir", str(tmp_path), "--mirror", server.url,
               "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("medbench: error:") and err.count("\n") == 1


def test_cli_download_needs_a_name_or_all(capsys):
    assert main(["download"]) == 2
    assert "--all" in capsys.readouterr().err


def test_mirror_can_be_a_local_folder_url(served, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "breastmnist.npz").write_bytes(served)
    path = download_dataset("breastmnist", data_dir=tmp_path / "d", mirror=mirror.as_uri(), **FAST)
    assert path.read_bytes() == served


def test_failed_download_advice_names_data_dir_and_its_environment_variable(server, tmp_path):
    server.files["/breastmnist.npz"] = b"x"
    server.script["/breastmnist.npz"] = ["500"]
    with pytest.raises(MedbenchError, match=r"--data-dir / \$MEDBENCH_DATA_DIR"):
        download_dataset("breastmnist", data_dir=tmp_path, mirror=server.url, retries=0, **FAST)
    with pytest.raises(MedbenchError, match=r"HTTP 404.*--data-dir / \$MEDBENCH_DATA_DIR"):
        download_dataset("dermamnist", data_dir=tmp_path, mirror=server.url, **FAST)


def test_download_creates_a_named_data_folder_whose_parent_exists(server, served, tmp_path):
    path = download_dataset("breastmnist", data_dir=tmp_path / "new", mirror=server.url, **FAST)
    assert path == _target(tmp_path / "new") and path.read_bytes() == served


def test_download_refuses_a_named_data_folder_whose_parent_is_missing(server, served, tmp_path):
    typo = tmp_path / "no-such-parent" / "medmnist"
    with pytest.raises(MedbenchError, match="parent .* does not exist"):
        download_dataset("breastmnist", data_dir=typo, mirror=server.url, **FAST)
    assert not typo.parent.exists() and server.requests == []


def test_a_3d_set_downloads_at_its_sizes_and_others_are_refused(
    server, tmp_path, monkeypatch, capsys
):
    body = write_synthetic_like(tmp_path / "src", "organmnist3d", 64, n_train=4, n_val=2,
                                n_test=2).read_bytes()  # fmt: skip
    server.files["/organmnist3d_64.npz"] = body
    monkeypatch.setitem(
        medmnist_info().INFO["organmnist3d"], "MD5_64", hashlib.md5(body).hexdigest()
    )
    args = ["download", "organmnist3d", "--data-dir", str(tmp_path / "d"), "--mirror", server.url,
            "--quiet"]  # fmt: skip
    assert main([*args, "--size", "64"]) == 0
    assert (tmp_path / "d" / "organmnist3d_64.npz").read_bytes() == body
    capsys.readouterr()
    assert main([*args, "--size", "128"]) == 2
    assert "published at 28, 64" in capsys.readouterr().err
    assert [path for path, _ in server.requests] == ["/organmnist3d_64.npz"]
