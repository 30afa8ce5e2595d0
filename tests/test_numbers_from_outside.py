"""Numbers a visitor, an admin or a config file gives are checked before they reach the
database: out of range is a 400 or 404 page on the web (with the headers of every page),
one line and exit 1 on the command line, and a config that names its key at start."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text

from listserv import db
from tests.helpers import CSP, assert_one_line_error, message, run_listserv, write_config

LIST = "dev@lists.example.org"
HUGE = "1" + "0" * 23  # 10^23
ENORMOUS = "1" + "0" * 5000  # more digits than Python converts by default


def assert_safe_page(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, (response.url, response.text[:200])
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path, status", [
    (f"/{LIST}/?page={HUGE}", 404),
    (f"/{LIST}/?page={ENORMOUS}", 404),
    (f"/{LIST}/?page=10^23", 400),
    (f"/{LIST}/?page=%C2%B2", 400),  # "²" is a digit to str.isdigit
    (f"/{LIST}/?page=0", 400),
    (f"/{LIST}/?page=-3", 400),
    (f"/{LIST}/search?q=hello&page={HUGE}", 404),
    (f"/{LIST}/2026/11/?page={HUGE}", 404),
    (f"/{LIST}/{HUGE}/11/", 404),
    (f"/{LIST}/2026/{ENORMOUS}/", 404),
    (f"/{LIST}/digest/{HUGE}/1/", 404),
    (f"/{LIST}/digest/1/{HUGE}/", 404),
    (f"/{LIST}/digest/2147483648/1/", 404),
    (f"/{LIST}/digest/1/{ENORMOUS}/", 404),
    (f"/{LIST}/message/hello@example.com/attachment/{HUGE}/x.txt", 404),
    (f"/{LIST}/export.mbox?month=99999-99", 400),
])
def test_numbers_out_of_range_in_urls_are_400_or_404(running, make_list, path, status):
    make_list(LIST, members=["bob@example.com"])
    running.send("bob@example.com", [LIST], message(
        headers={"Message-ID": "<hello@example.com>"}))
    with httpx.Client(base_url=running.config.web.base_url, timeout=10) as client:
        assert_safe_page(client.get(path), status)


def test_a_failure_of_ours_is_a_500_page_with_the_security_headers(running, make_list,
                                                                    engine):
    make_list(LIST)
    with db.session(engine) as s:  # the archive's table is gone: every page of it fails
        s.execute(text("DROP TABLE thread_summary"))
        s.commit()
    with httpx.Client(base_url=running.config.web.base_url, timeout=10) as client:
        response = client.get(f"/{LIST}/")
    assert response.status_code >= 500
    assert_safe_page(response, response.status_code)
    assert "Traceback" not in response.text


@pytest.mark.parametrize("args, named", [
    (["list", "set", LIST, "max_message_bytes", HUGE], "max_message_bytes"),
    (["list", "set", LIST, "max_message_bytes", "2147483648"], "max_message_bytes"),
    (["list", "set", LIST, "digest_max_bytes", ENORMOUS], "digest_max_bytes"),
    (["list", "set", LIST, "max_message_bytes", "١٠"], "max_message_bytes"),  # Arabic digits
    (["held", "show", HUGE], HUGE),
    (["held", "approve", "1", HUGE], "no held message 1"),
    (["held", "discard", HUGE], HUGE),
])
def test_numbers_out_of_range_on_the_command_line_are_one_line(make_list, db_url, tmp_path,
                                                                args, named):
    make_list(LIST)
    config = write_config(tmp_path / "listserv.toml", db_url)
    assert_one_line_error(run_listserv("--config", config, *args), named)


def test_bounce_history_too_far_back_is_a_usage_error(make_list, db_url, tmp_path):
    make_list(LIST)
    config = write_config(tmp_path / "listserv.toml", db_url)
    proc = run_listserv("--config", config, "bounce", "ls", LIST, "--days", HUGE)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "--days" in proc.stderr, proc.stderr


@pytest.mark.parametrize("toml, named", [
    ("[smtp]\nport = 99999\n", "[smtp] port"),
    ("[web]\nport = -1\n", "[web] port"),
    ("[dns]\nport = 0\n", "[dns] port"),
    ("[delivery]\nsmarthost_port = 70000\n", "[delivery] smarthost_port"),
    ("[delivery]\nconcurrency = 0\n", "[delivery] concurrency"),
    ("[delivery]\nmax_recipients_per_transaction = 0\n", "max_recipients_per_transaction"),
    ("[delivery]\nlease_seconds = 0\n", "lease_seconds"),
    ("[lists]\nhold_expiry_days = 1000000000000\n", "hold_expiry_days"),
    ("[web]\narchive_link_days = 99999999\n", "archive_link_days"),
    ("[smtp]\nmax_message_bytes = 100000000000000000000\n", "max_message_bytes"),
    ("[bounces]\nscore_threshold = nan\n", "score_threshold"),
    ("[bounces]\nhard_bounce_score = inf\n", "hard_bounce_score"),
])
def test_config_numbers_out_of_range_stop_listserv_at_start(tmp_path, toml, named):
    path = tmp_path / "bad.toml"
    path.write_text(toml, encoding="utf-8")
    assert_one_line_error(run_listserv("--config", path, "list", "ls", cwd=tmp_path), named)
    assert not (tmp_path / "listserv.db").exists()
