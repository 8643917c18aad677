"""HTTP/1.1 message heads, strictly parsed (httptools/llhttp underneath), and serializers.

``RequestParser`` (client side) and ``ResponseParser`` (member side) take bytes of any chunking
and return events: ``RequestHead`` / ``ResponseHead``, ``Body``, ``EndOfMessage``, ``Upgrade``.
Rules on top of llhttp, which runs without any leniency:

- **Limits before parsing.** While a head is open, the parser finds its end (the first CRLFCRLF;
  llhttp rejects bare LF) and never hands llhttp head bytes past ``max_head_bytes``, however
  the head is split across ``feed`` calls. So memory held for a head is bounded.
- **Our own framing checks**, independent of llhttp: CL with TE, more than one CL, a CL that is
  not digits, a TE whose final coding is not ``chunked``, TE in HTTP/1.0. Requests also need
  exactly one Host (none is fine on HTTP/1.0), HTTP/1.0 or 1.1, and no body on an upgrade
  (llhttp would hand the body over as upgraded bytes). Responses need a status of 100 or
  more and a reason phrase without control characters (llhttp takes any three digits, and
  CTLs in the reason; the proxy could not write either on). A head is checked after ``feed_data``
  returns and before llhttp sees any body byte.
- **Exact message boundaries.** Head and Content-Length bodies are fed in steps that end on
  message boundaries. A chunked body is fed up to the last CRLFCRLF in the data (the only place
  it can end), so a pipelined head after it stays exact to within 3 bytes; a message that starts
  *and* ends inside such a step is checked against the limits from what the callbacks saw.
- **Upgrade**: llhttp reports message complete, then ``HttpParserUpgrade(offset)``; events are
  head, ``EndOfMessage([])``, ``Upgrade(leftover)``. Parsing then stops for good.
- After a message that does not keep the connection alive, later bytes are ignored
  (RFC 9112 §9.6) instead of failing the whole read.

Errors raise ``HttpError``: 400/414/431/505 for requests, 502 for member responses. The parser
is then dead and every later ``feed`` raises the same error.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Iterable

import httptools

from wsproxy import _speedups
from wsproxy.errors import HttpError
from wsproxy.protocol.forwarding import hop_by_hop_names

__all__ = [
    "RequestHead",
    "ResponseHead",
    "Body",
    "EndOfMessage",
    "Upgrade",
    "RequestParser",
    "ResponseParser",
    "request_line",
    "status_line",
    "serialize_request_head",
    "serialize_response_head",
    "response_head_for_client",
    "encode_chunk",
    "LAST_CHUNK",
    "simple_response",
]

Headers = list[tuple[str, str]]

# The C twins when built (ext/http_head.pyx).
scan_fields = _speedups.scan_fields
rewrite_head = _speedups.rewrite_head
_BLANK_LINE = b"\r\n\r\n"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_CHAR = re.compile(r"[\x00\r\n]")
_BAD_TARGET_CHAR = re.compile(r"[\x00-\x20\x7f]")
_DIGITS = re.compile(r"[0-9]+")
# reason-phrase = *( HTAB / SP / VCHAR / obs-text ) (RFC 9112 §4); llhttp lets control
# characters through, and a NUL, say, could not be written on to the client.
_BAD_REASON_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_NO_BODY_STATUSES = frozenset({204, 304})


# --- events ---------------------------------------------------------------------------------------


class _HeaderLookup:
    """Case-insensitive header lookups. A parsed head carries ``names``, its header names
    already lowercased (a request is asked for a dozen headers before it is forwarded);
    a head built by hand has none, and its names are lowercased at each lookup."""

    __slots__ = ()
    headers: Headers
    names: tuple[str, ...]

    def _lowered(self) -> tuple[str, ...] | list[str]:
        names = self.names
        if len(names) != len(self.headers):
            return [key.lower() for key, _ in self.headers]
        return names

    def get(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        for i, key in enumerate(self._lowered()):
            if key == name:
                return self.headers[i][1]
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        name = name.lower()
        headers = self.headers
        return [headers[i][1] for i, key in enumerate(self._lowered()) if key == name]


@dataclass(slots=True)
class RequestHead(_HeaderLookup):
    """A request line and headers (names keep the client's case and order; latin-1).

    The last four fields are filled in by ``RequestParser``; a head built by hand gets the
    defaults.
    """

    method: str
    target: str
    version: str  # "1.1" or "1.0"
    headers: Headers
    keep_alive: bool = True
    is_upgrade: bool = False
    chunked: bool = False
    content_length: int | None = None
    names: tuple[str, ...] = field(default=(), compare=False, repr=False)  # lowercased, parsed heads

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


@dataclass(slots=True)
class ResponseHead(_HeaderLookup):
    """A status line and headers. ``body_until_close``: the body ends when the member closes
    the connection (no Content-Length, no chunked), so the connection cannot be reused."""

    version: str
    status: int
    reason: str
    headers: Headers
    keep_alive: bool = True
    chunked: bool = False
    content_length: int | None = None
    body_until_close: bool = False
    names: tuple[str, ...] = field(default=(), compare=False, repr=False)  # lowercased, parsed heads


@dataclass(frozen=True, slots=True)
class Body:
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    trailers: Headers = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Upgrade:
    """The bytes after the upgraded message in the same ``feed`` (the other protocol's)."""

    leftover: bytes


Event = RequestHead | ResponseHead | Body | EndOfMessage | Upgrade


# --- head checks shared by both directions --------------------------------------------------------


def _decode(fields: list[tuple[bytes, bytes]]) -> Headers:
    # Trailers only (rare); heads go through scan_fields (http_head), which also checks them.
    return scan_fields(fields)[0]


def _values(headers: Headers, names: tuple[str, ...], name: str) -> list[str]:
    return [headers[i][1] for i, key in enumerate(names) if key == name]


def _framing(headers: Headers, names: tuple[str, ...], version: str, *, request: bool) -> tuple[int | None, bool]:
    """(content_length, chunked) of a head; ValueError(reason) when framing is ambiguous."""
    if "content-length" not in names and "transfer-encoding" not in names:
        return None, False  # the common case for heads without a body (upgrades, GETs)
    lengths = _values(headers, names, "content-length")
    codings_headers = _values(headers, names, "transfer-encoding")
    if lengths and codings_headers:
        raise ValueError("both Content-Length and Transfer-Encoding")
    if len(lengths) > 1:
        raise ValueError("more than one Content-Length header")
    content_length = None
    if lengths:
        value = lengths[0].strip(" \t")
        if not _DIGITS.fullmatch(value):
            raise ValueError(f"invalid Content-Length {value!r}")
        content_length = int(value)
    if not codings_headers:
        return content_length, False
    if version == "1.0":
        raise ValueError("Transfer-Encoding in an HTTP/1.0 message")
    codings = [c.strip(" \t").lower() for v in codings_headers for c in v.split(",")]
    codings = [c for c in codings if c]
    chunked = bool(codings) and codings[-1] == "chunked"
    if codings.count("chunked") > (1 if chunked else 0):
        raise ValueError("chunked is not applied once, as the final transfer coding")
    if request and not chunked:
        raise ValueError("Transfer-Encoding does not end with chunked")
    if request and codings != ["chunked"]:
        # The proxy re-chunks bodies and strips Transfer-Encoding (hop-by-hop): another
        # coding would be lost on the way, so refuse it rather than corrupt the body.
        raise ValueError(f"unsupported transfer coding {', '.join(codings)!r} (only chunked)")
    return None, chunked


def _wants_keep_alive(head: RequestHead | ResponseHead) -> bool:
    tokens = {t.strip(" \t").lower() for v in head.get_all("connection") for t in v.split(",")}
    if head.version == "1.0":
        return "keep-alive" in tokens and "close" not in tokens
    return "close" not in tokens


# --- the parser core ------------------------------------------------------------------------------


class _Phase(enum.Enum):
    HEAD = "head"  # between messages or inside a head
    BODY_LENGTH = "body-length"  # Content-Length body, self._body_left bytes to go
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until-close"  # responses only: body ends at EOF
    CLOSED = "closed"  # a message said "close": later bytes are ignored
    UPGRADED = "upgraded"


@dataclass(slots=True)
class _RawHead:
    """What the callbacks saw of one head; checked and decoded after feed_data returns."""

    start_line: bytes  # URL for a request, reason phrase for a response
    fields: list[tuple[bytes, bytes]]
    version: str
    keep_alive: bool
    upgrade: bool
    method: str = ""
    status: int = 0

    def size_estimate(self, fields_size: int) -> int:
        # The fewest bytes such a head can have (no optional whitespace), for heads that were
        # parsed inside a step that did not start at a head; a lower bound, never a false 431.
        # ``fields_size``: the fields' own share, from scan_fields.
        return len(self.method) + len(self.start_line) + 12 + fields_size + 2


@dataclass(slots=True)
class _RawEnd:
    trailers: list[tuple[bytes, bytes]]


class _Parser:
    """The feed loop and callbacks shared by RequestParser and ResponseParser."""

    _error_status = 400
    _what = "request"

    def __init__(self, max_head_bytes: int, max_headers: int) -> None:
        self._max_head_bytes = max_head_bytes
        self._max_headers = max_headers
        self._parser = self._new_parser()
        self._phase = _Phase.HEAD
        self._head_bytes = 0  # bytes fed since the last message ended (leading CRLFs included)
        self._body_left = 0
        self._keep_alive = True  # of the current message
        self._interim = False  # the current message is a 1xx response
        self._step_phase = _Phase.HEAD  # the phase the current llhttp step started in
        self._recent = b""  # the last 3 bytes fed, to find a CRLFCRLF split across feeds
        self._line_tail = 0  # bytes fed since the last LF (chunked phase), bounds a trailer line
        self._error: HttpError | None = None
        # Filled by callbacks only.
        self._pending: list[_RawHead | Body | _RawEnd] = []
        self._start_line = bytearray()
        self._fields: list[tuple[bytes, bytes]] = []
        self._chunk_open = False  # a chunk header was seen and no data since: maybe trailers
        self._upgrade_at: int | None = None
        self._parse_error: httptools.HttpParserError | None = None

    # -- public state --

    @property
    def in_head(self) -> bool:
        """Some bytes of a head arrived and the head is not complete (the 408 timer runs)."""
        return self._phase is _Phase.HEAD and self._head_bytes > 0

    @property
    def idle(self) -> bool:
        """No byte of a new message yet."""
        return self._phase is _Phase.HEAD and self._head_bytes == 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        if self._error is not None:
            raise self._error
        if self._phase is _Phase.UPGRADED:
            raise RuntimeError("feed() after Upgrade: the rest of the stream is not HTTP")
        if not isinstance(data, bytes):
            data = bytes(data)
        try:
            return self._feed(data)
        except HttpError as exc:
            self._error = exc
            raise

    # -- the loop: each step ends where llhttp must stop so we can decide --

    def _feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        pos, end = 0, len(data)
        while pos < end and self._phase not in (_Phase.CLOSED, _Phase.UPGRADED):
            if self._phase is _Phase.HEAD:
                stop = self._head_step_end(data, pos)
            elif self._phase is _Phase.BODY_LENGTH:
                stop = pos + min(self._body_left, end - pos)
            elif self._phase is _Phase.CHUNKED:
                last_blank = self._blank_line_end(data, pos, last=True)
                stop = last_blank if last_blank > pos else end
            else:
                stop = end
            phase_before = self._phase
            self._execute(data, pos, stop)
            events.extend(self._drain(data))
            self._check_open_message(phase_before)
            pos = stop
        return events

    def _head_step_end(self, data: bytes, pos: int) -> int:
        """Where this head step stops: the end of the head, or the end of the data. Raises the
        size error without feeding llhttp past the limit."""
        head_end = self._blank_line_end(data, pos, last=False)
        stop = head_end if head_end >= 0 else len(data)
        allowed = self._max_head_bytes - self._head_bytes
        if stop - pos > allowed:
            # Parse up to the limit first, so a bad or over-long start line is reported as such.
            self._execute(data, pos, pos + allowed)
            self._drain(data)
            self._check_open_message(_Phase.HEAD)
            raise self._too_large(f"head larger than {self._max_head_bytes} bytes")
        self._head_bytes += stop - pos
        return stop

    def _blank_line_end(self, data: bytes, start: int, *, last: bool) -> int:
        """The index just past the first (or last) CRLFCRLF from ``start`` on, counting one that
        began in the bytes fed before ``start``; -1 if there is none."""
        if last:
            found = data.rfind(_BLANK_LINE, start)
            if found >= 0:
                return found + 4
        joint = self._recent + data[start : start + 3]
        found = joint.find(_BLANK_LINE)
        if found >= 0:
            return start + found + 4 - len(self._recent)
        if not last:
            found = data.find(_BLANK_LINE, start)
            if found >= 0:
                return found + 4
        return -1

    def _execute(self, data: bytes, start: int, stop: int) -> None:
        phase = self._step_phase = self._phase
        try:
            self._parser.feed_data(memoryview(data)[start:stop])
        except httptools.HttpParserUpgrade as exc:
            self._upgrade_at = start + exc.args[0]
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if cause is not None and not isinstance(cause, httptools.HttpParserError):
                raise cause  # our callbacks only append: this is a bug, let it show
            self._parse_error = exc  # raised after the events before it are checked
        self._recent = (self._recent + data[max(start, stop - 3) : stop])[-3:]
        if phase is _Phase.CHUNKED:
            last_lf = data.rfind(b"\n", start, stop)
            self._line_tail = stop - last_lf - 1 if last_lf >= 0 else self._line_tail + stop - start

    def _drain(self, data: bytes) -> list[Event]:
        """Turn what the callbacks collected into checked events, in order."""
        events: list[Event] = []
        pending, self._pending = self._pending, []
        for item in pending:
            if isinstance(item, _RawHead):
                head, complete = self._accept_head(item)
                self._head_bytes = 0
                self._keep_alive = head.keep_alive
                self._interim = isinstance(head, ResponseHead) and head.status < 200
                events.append(head)
                if complete:  # a response to HEAD: we ended it, llhttp's view is dropped
                    events.append(EndOfMessage([]))
                    self._message_done()
                    self._parser = self._new_parser()
                    break
            elif isinstance(item, Body):
                if self._phase is _Phase.BODY_LENGTH:
                    self._body_left -= len(item.data)
                events.append(item)
            else:
                events.append(EndOfMessage(_decode(item.trailers)))
                self._message_done()
        if self._upgrade_at is not None:
            events.append(Upgrade(data[self._upgrade_at :]))
            self._phase = _Phase.UPGRADED
        elif self._parse_error is not None and self._phase is not _Phase.CLOSED:
            raise HttpError(self._error_status, f"malformed {self._what}: {self._parse_error}")
        self._parse_error = None
        return events

    def _message_done(self) -> None:
        self._phase = _Phase.HEAD if self._keep_alive or self._interim else _Phase.CLOSED

    def _check_open_message(self, phase_before: _Phase) -> None:
        """Limits on what llhttp holds for a message still open after a step."""
        if self._phase is _Phase.HEAD and phase_before is not _Phase.HEAD:
            # A head started inside a body step: it began at most 3 bytes before the step's end.
            self._head_bytes = 0
        if self._phase is _Phase.HEAD and len(self._fields) > self._max_headers:
            raise self._too_large(f"more than {self._max_headers} header fields")
        if self._phase is _Phase.CHUNKED and self._chunk_open:
            trailer_bytes = self._line_tail + sum(len(n) + len(v) + 4 for n, v in self._fields)
            if len(self._fields) > self._max_headers or trailer_bytes > self._max_head_bytes:
                raise self._too_large("trailer section too large")

    def _scan_head(self, raw: _RawHead) -> tuple[Headers, tuple[str, ...], str | None]:
        """Decode and check the fields in one pass; the size limits first."""
        if len(raw.fields) > self._max_headers:
            raise self._too_large(f"more than {self._max_headers} header fields")
        headers, names, problem, fields_size = scan_fields(raw.fields)
        if raw.size_estimate(fields_size) > self._max_head_bytes:
            raise self._too_large(f"head larger than {self._max_head_bytes} bytes")
        return headers, names, problem

    def _set_body_phase(self, content_length: int | None, chunked: bool, until_close: bool) -> None:
        if chunked:
            self._phase = _Phase.CHUNKED
        elif content_length:
            self._phase, self._body_left = _Phase.BODY_LENGTH, content_length
        elif until_close:
            self._phase = _Phase.UNTIL_CLOSE
        # else: no body, llhttp reports the end right after the head.

    # -- llhttp callbacks: accumulate only --

    def on_message_begin(self) -> None:
        self._start_line = bytearray()
        self._fields = []
        self._chunk_open = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._chunk_open = False
        self._pending.append(Body(body))

    def on_chunk_header(self) -> None:
        self._chunk_open = True

    def on_chunk_complete(self) -> None:
        self._chunk_open = False

    def on_message_complete(self) -> None:
        self._pending.append(_RawEnd(self._fields))
        self._fields = []

    # -- hooks for the two directions --

    def _new_parser(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        raise NotImplementedError

    def _accept_head(self, raw: _RawHead) -> tuple[RequestHead | ResponseHead, bool]:
        """Check a head, set the body phase; True when the message is already complete."""
        raise NotImplementedError

    def _too_large(self, reason: str) -> HttpError:
        raise NotImplementedError


class RequestParser(_Parser):
    """Client requests: ``feed(data) -> list[event]``; pipelined requests come out in order."""

    def __init__(self, max_head_bytes: int = 65536, max_headers: int = 100, max_uri_bytes: int = 8192) -> None:
        self._max_uri_bytes = max_uri_bytes
        super().__init__(max_head_bytes, max_headers)

    def _new_parser(self) -> httptools.HttpRequestParser:
        return httptools.HttpRequestParser(self)

    def _too_large(self, reason: str) -> HttpError:
        return HttpError(431, f"request {reason}")

    def _check_open_message(self, phase_before: _Phase) -> None:
        if self._phase is _Phase.HEAD and len(self._start_line) > self._max_uri_bytes:
            raise HttpError(414, f"request target longer than {self._max_uri_bytes} bytes")
        super()._check_open_message(phase_before)

    def on_url(self, url: bytes) -> None:
        self._start_line += url

    def on_headers_complete(self) -> None:
        p = self._parser
        self._pending.append(_RawHead(
            bytes(self._start_line), self._fields, p.get_http_version(), p.should_keep_alive(),
            p.should_upgrade(), method=p.get_method().decode("ascii"),
        ))
        self._fields = []  # trailers, if any, collect from here

    def _accept_head(self, raw: _RawHead) -> tuple[RequestHead, bool]:
        if len(raw.start_line) > self._max_uri_bytes:
            raise HttpError(414, f"request target longer than {self._max_uri_bytes} bytes")
        headers, names, problem = self._scan_head(raw)
        if raw.version not in ("1.0", "1.1"):
            raise HttpError(400 if raw.version == "0.9" else 505, f"HTTP/{raw.version} request")
        if problem:
            raise HttpError(400, problem)
        try:
            content_length, chunked = _framing(headers, names, raw.version, request=True)
        except ValueError as exc:
            raise HttpError(400, f"ambiguous request framing: {exc}") from None
        hosts = names.count("host")
        if hosts > 1:
            raise HttpError(400, "more than one Host header")
        if hosts == 0 and raw.version == "1.1":
            raise HttpError(400, "HTTP/1.1 request without a Host header")  # RFC 9112 §3.2
        if raw.upgrade and (chunked or content_length):
            # llhttp would hand the body over as upgraded bytes: refuse the ambiguity.
            raise HttpError(400, "upgrade request with a body")
        self._set_body_phase(content_length, chunked, until_close=False)
        return RequestHead(
            raw.method, raw.start_line.decode("latin-1"), raw.version, headers, keep_alive=raw.keep_alive,
            is_upgrade=raw.upgrade, chunked=chunked, content_length=content_length, names=names,
        ), False


class ResponseParser(_Parser):
    """A member's responses. Call ``expect_head_response()`` before the response to a HEAD
    request; call ``feed_eof()`` when the member closes the connection."""

    _error_status = 502
    _what = "response from member"

    def __init__(self, max_head_bytes: int = 65536, max_headers: int = 100) -> None:
        self._head_request = False
        super().__init__(max_head_bytes, max_headers)

    def expect_head_response(self) -> None:
        """The next final (non-1xx) response answers HEAD: it ends right after its head."""
        self._head_request = True

    def feed_eof(self) -> list[Event]:
        """The member closed: end a close-delimited body; 502 inside a head or a framed body."""
        if self._error is not None:
            raise self._error
        if self._phase is _Phase.UNTIL_CLOSE:
            self._phase = _Phase.CLOSED
            return [EndOfMessage([])]
        if self._phase in (_Phase.BODY_LENGTH, _Phase.CHUNKED):
            self._error = HttpError(502, "member closed the connection inside a response body")
            raise self._error
        if self.in_head:
            self._error = HttpError(502, "member closed the connection inside a response head")
            raise self._error
        if self._phase is _Phase.HEAD:
            self._phase = _Phase.CLOSED
        return []

    def _new_parser(self) -> httptools.HttpResponseParser:
        return httptools.HttpResponseParser(self)

    def _too_large(self, reason: str) -> HttpError:
        return HttpError(502, f"response from member: {reason}")

    def on_status(self, reason: bytes) -> None:
        self._start_line += reason

    def on_headers_complete(self) -> None:
        p = self._parser
        self._pending.append(_RawHead(
            bytes(self._start_line), self._fields, p.get_http_version(), p.should_keep_alive(),
            p.should_upgrade(), status=p.get_status_code(),
        ))
        self._fields = []

    def _accept_head(self, raw: _RawHead) -> tuple[ResponseHead, bool]:
        headers, names, problem = self._scan_head(raw)
        if raw.version not in ("1.0", "1.1"):
            raise HttpError(502, f"member answered with HTTP/{raw.version}")
        if problem:
            raise HttpError(502, f"response from member: {problem}")
        if raw.status < 100:  # llhttp takes any three digits; 0xx would pass as interim
            raise HttpError(502, f"response from member: invalid status code {raw.status:03d}")
        if _BAD_REASON_BYTE.search(raw.start_line):
            raise HttpError(502, "response from member: control character in the reason phrase")
        try:
            content_length, chunked = _framing(headers, names, raw.version, request=False)
        except ValueError as exc:
            raise HttpError(502, f"ambiguous response framing: {exc}") from None
        if raw.status == 101 and not raw.upgrade:
            raise HttpError(502, "101 response without an Upgrade header")
        answers_head = self._head_request and raw.status >= 200
        if answers_head:
            if self._step_phase is not _Phase.HEAD:
                # It came in the same bytes as the end of the previous response, so it was
                # sent before the HEAD request, and llhttp already framed it as a GET's.
                raise HttpError(502, "member sent a response before the request")
            self._head_request = False
        has_body = not (answers_head or raw.status < 200 or raw.status in _NO_BODY_STATUSES)
        until_close = has_body and not chunked and content_length is None
        if has_body:
            self._set_body_phase(content_length, chunked, until_close)
        head = ResponseHead(
            raw.version, raw.status, raw.start_line.decode("latin-1"), headers,
            keep_alive=raw.keep_alive and not until_close, chunked=chunked,
            content_length=content_length, body_until_close=until_close, names=names,
        )
        if answers_head:
            # llhttp said "read until close" for a head with no framing: it did not know.
            head.keep_alive = _wants_keep_alive(head) and not until_close
        return head, answers_head


# --- serializers ----------------------------------------------------------------------------------

LAST_CHUNK = b"0\r\n\r\n"


def request_line(method: str, target: str) -> str:
    """``METHOD target HTTP/1.1``; ValueError on a method or target that could split the message."""
    if not _TOKEN.fullmatch(method):
        raise ValueError(f"invalid method {method!r}")
    if not target or _BAD_TARGET_CHAR.search(target):
        raise ValueError(f"invalid request target {target!r}")
    return f"{method} {target} HTTP/1.1"


def status_line(status: int, reason: str, version: str = "1.1") -> str:
    if not 100 <= status <= 999 or _BAD_VALUE_CHAR.search(reason) or version not in ("1.0", "1.1"):
        raise ValueError(f"invalid status line {version!r} {status!r} {reason!r}")
    return f"HTTP/{version} {status} {reason}"


def _with_names(headers: Iterable[tuple[str, str]]) -> tuple[Headers, tuple[str, ...]]:
    headers = list(headers)
    return headers, tuple(name.lower() for name, _ in headers)


def serialize_request_head(method: str, target: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """An HTTP/1.1 request head. ValueError on a field that could split the message."""
    return rewrite_head(request_line(method, target), *_with_names(headers), ())


def serialize_response_head(
    status: int, reason: str, headers: Iterable[tuple[str, str]], version: str = "1.1"
) -> bytes:
    """A response head. ValueError on a field that could split the message."""
    return rewrite_head(status_line(status, reason, version), *_with_names(headers), ())


def response_head_for_client(rh: ResponseHead, tail: Headers) -> bytes:
    """A member's response head as the client gets it (HTTP/1.1): hop-by-hop headers removed,
    ``tail`` (Connection, Transfer-Encoding, Set-Cookie... of this hop) appended."""
    headers, names = rh.headers, rh.names
    if len(names) != len(headers):
        headers, names = _with_names(headers)
    reason = rh.reason or ("Switching Protocols" if rh.status == 101 else "")
    return rewrite_head(status_line(rh.status, reason), headers, names, hop_by_hop_names(headers, names), tail)


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; empty data gives b"" (an empty chunk would end the body)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


def simple_response(
    status: int, body: str, extra_headers: Iterable[tuple[str, str]] = (), close: bool = False
) -> bytes:
    """A complete short text/plain response, e.g. the proxy's own 4xx/5xx answers."""
    payload = body.encode("utf-8")
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(payload)))]
    headers.extend(extra_headers)
    if close:
        headers.append(("Connection", "close"))
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    return serialize_response_head(status, reason, headers) + payload
