"""plugins/frame_guard.{lua,py}: Close 1009 (frame too big), 1003 (binary), 1008 (forbidden command)."""

import pytest

from wsproxy.plugin import close
from wsproxy.scripting import PluginLoadError

PLUGIN = "frame_guard"

TOO_BIG = close(1009, "frame too big")
BINARY = close(1003, "binary frames are not accepted")
FORBIDDEN = close(1008, "forbidden command")


def verdict(outcome):
    return None if outcome is None else outcome.verdict


def test_frame_guard_runtime_frames_are_judged_by_their_header_only(example):
    ex = example()
    # the relay unmasks no payload for this plugin (payload = false), and it needs no buffering
    assert ex.chain.payload_limit("WS_FRAME", "client") == 0
    assert not ex.chain.hooks("WS_FRAME", "server") and not ex.chain.hooks("WS_MESSAGE", "server")
    assert ex.chain.message_limit("client") is None


def test_frame_guard_runtime_exactly_at_the_limit_passes_one_more_byte_closes_1009(example):
    ex = example({"max_frame": 1000})
    session = ex.session()
    assert ex.frame(session, "text", None, length=1000) is None
    assert ex.frame(session, "cont", None, length=1000, fin=False) is None
    outcome = ex.frame(session, "text", None, length=1001)
    assert verdict(outcome) == TOO_BIG and outcome.plugin == PLUGIN


def test_frame_guard_runtime_default_limit_is_64_kib(example):
    ex = example()
    session = ex.session()
    assert ex.frame(session, "text", None, length=65536) is None
    assert verdict(ex.frame(session, "cont", None, length=65537)) == TOO_BIG


def test_frame_guard_runtime_binary_closes_1003_when_text_only(example):
    ex = example()
    session = ex.session()
    assert ex.frame(session, "text", b'{"cmd":"say"}') is None
    assert verdict(ex.frame(session, "binary", b"\x00\x01")) == BINARY
    assert verdict(ex.frame(session, "binary", None, length=1 << 20)) == TOO_BIG  # size is checked first


def test_frame_guard_runtime_binary_passes_when_text_only_is_false(example):
    ex = example({"text_only": False})
    session = ex.session()
    assert ex.frame(session, "binary", b"\x00\x01") is None
    assert ex.message(session, b"\x00\x01", "binary") is None


@pytest.mark.parametrize("opcode", ["ping", "pong", "close"])
def test_frame_guard_runtime_control_frames_are_not_inspected(example, opcode):
    ex = example({"max_frame": 10})
    assert ex.frame(ex.session(), opcode, b"x" * 100) is None


def test_frame_guard_runtime_frames_from_the_member_are_not_inspected(example):
    ex = example({"max_frame": 10})
    session = ex.session()
    assert ex.frame(session, "binary", None, length=1 << 20, dir="server") is None
    assert ex.message(session, b'{"cmd":"admin"}', dir="server") is None


@pytest.mark.parametrize("payload", [
    b'{"cmd":"admin"}',
    b'{"cmd": "shutdown", "now": true}',                 # whitespace around the colon
    b'{"user": "bob", "cmd" :\t"admin"}',                # the field anywhere in the object
    b'[{"cmd":"say","text":"hi"},{"cmd":"shutdown"}]',   # every occurrence counts
])
def test_frame_guard_runtime_forbidden_command_closes_1008(example, payload):
    ex = example()
    outcome = ex.message(ex.session(), payload)
    assert verdict(outcome) == FORBIDDEN and outcome.plugin == PLUGIN


@pytest.mark.parametrize("payload", [
    b'{"cmd":"say","text":"admin"}',      # "admin" as a value of another field
    b'{"command":"admin"}',               # another field
    b'{"cmd":"administrator"}',           # whole names only
    b'{"cmd":"ADMIN"}',                   # names are case-sensitive
    b"admin shutdown",                    # not JSON: no field, no command
    b"",
])
def test_frame_guard_runtime_allowed_messages_pass(example, payload):
    ex = example()
    assert ex.message(ex.session(), payload) is None


def test_frame_guard_runtime_command_split_across_fragments_is_caught_on_the_message(example):
    ex = example()
    session = ex.session()
    assert ex.frame(session, "text", b'{"cmd":"adm', fin=False) is None
    assert ex.frame(session, "cont", b'in"}') is None
    assert verdict(ex.message(session, b'{"cmd":"admin"}')) == FORBIDDEN


def test_frame_guard_runtime_custom_field_and_commands(example):
    ex = example({"field": "op.name", "forbidden": ["drop_table", "debug"]})
    session = ex.session()
    assert verdict(ex.message(session, b'{"op.name":"debug"}')) == FORBIDDEN
    assert ex.message(session, b'{"opxname":"debug"}') is None  # the field name is literal, not a pattern
    assert ex.message(session, b'{"op.name":"admin"}') is None  # the defaults are replaced
    assert ex.message(session, b'{"cmd":"shutdown"}') is None


def test_frame_guard_runtime_empty_forbidden_list_checks_no_command(example):
    ex = example({"forbidden": []})
    assert ex.message(ex.session(), b'{"cmd":"admin"}') is None


def test_frame_guard_runtime_rejects_a_non_string_field_at_load(example):
    with pytest.raises(PluginLoadError):
        example({"field": 42})


def test_frame_guard_doc_snippet_loads(check_docs):
    check_docs()
