"""tests/vectors/smuggling/*.http through http1.RequestParser: every one is a 400, in any
chunking, with either scan_fields twin, and no event of the smuggled request ever comes out.

The directory's README lists every file once, with what a bare llhttp does with it; that
column is re-checked here, so an httptools upgrade that changes it shows up."""

from __future__ import annotations

import re
from pathlib import Path

import httptools
import pytest

from wsproxy import _speedups
from wsproxy.errors import HttpError
from wsproxy.protocol import http1
from wsproxy.protocol import http_head as py_http_head

VECTOR_DIR = Path(__file__).parents[1] / "vectors" / "smuggling"
FILES = sorted(VECTOR_DIR.glob("*.http"))
_ROW = re.compile(r"^\| `([^`]+\.http)` \|.*\| ([^|]+) \|$")


def _readme_rows() -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in (VECTOR_DIR / "README.md").read_text().splitlines():
        m = _ROW.match(line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} is listed twice"
            rows[m.group(1)] = m.group(2).strip()
    return rows


def _scan_fields_twins() -> list:
    twins = [pytest.param(py_http_head.scan_fields, id="py")]
    if _speedups.NO_EXTENSIONS:
        skip = pytest.mark.skip(reason="WSPROXY_NO_EXTENSIONS=1: pure build only")
        return [*twins, pytest.param(None, id="c", marks=skip)]
    try:
        from wsproxy._ext.http_head import scan_fields as c_scan_fields
    except ImportError:
        skip = pytest.mark.skip(reason="C extensions not built")
        return [*twins, pytest.param(None, id="c", marks=skip)]
    return [*twins, pytest.param(c_scan_fields, id="c")]


@pytest.fixture(params=_scan_fields_twins())
def twin(request, monkeypatch):
    """RequestParser with one scan_fields twin (http1 looks it up at each head)."""
    monkeypatch.setattr(http1, "scan_fields", request.param)
    return request.param


def feed_all(pieces: list[bytes]) -> tuple[list, HttpError | None]:
    parser = http1.RequestParser()
    events: list = []
    for piece in pieces:
        try:
            events.extend(parser.feed(piece))
        except HttpError as exc:
            return events, exc
    return events, None


def check_refused(pieces: list[bytes]) -> None:
    events, error = feed_all(pieces)
    assert error is not None, events
    assert error.status == 400, error
    smuggled = [e for e in events if isinstance(e, http1.RequestHead) and "smuggled" in e.target]
    assert not smuggled


def test_there_are_vectors_and_each_ends_with_a_smuggled_request():
    assert len(FILES) >= 9
    for path in FILES:
        assert b"GET /smuggled" in path.read_bytes(), path.name


def test_readme_lists_every_file_once():
    assert sorted(_readme_rows()) == [p.name for p in FILES]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_vector_whole(path, twin):
    check_refused([path.read_bytes()])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_vector_byte_by_byte(path, twin):
    data = path.read_bytes()
    check_refused([data[i : i + 1] for i in range(len(data))])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_vector_split_in_two(path, twin):
    data = path.read_bytes()
    for cut in range(1, len(data)):
        check_refused([data[:cut], data[cut:]])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_readme_llhttp_column_still_holds(path):
    try:
        httptools.HttpRequestParser(object()).feed_data(path.read_bytes())
        note = "accepts"
    except httptools.HttpParserUpgrade:
        note = "accepts"
    except httptools.HttpParserError as exc:
        note = str(exc)
    column = _readme_rows()[path.name]
    if column.startswith("*wsproxy*"):
        assert note in column, (note, column)  # only wsproxy's own rule refuses the head
    else:
        assert column == f"rejects: {note}"
