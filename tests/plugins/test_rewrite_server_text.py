"""plugins/rewrite_server_text.{lua,py}: plain-text replacements in the member's text messages."""

import pytest

from wsproxy.plugin import replace
from wsproxy.scripting import PluginLoadError

PLUGIN = "rewrite_server_text"
OPTIONS = {"rewrites": {"internal.example.com": "api.example.com"}}
MIB = 1 << 20


def test_rewrite_server_text_runtime_rewrites_every_occurrence(example):
    ex = example(OPTIONS)
    payload = b'{"url":"wss://internal.example.com/a","alt":"https://internal.example.com"}'
    outcome = ex.message(ex.session(), payload, dir="server")
    assert outcome.verdict == replace(b'{"url":"wss://api.example.com/a","alt":"https://api.example.com"}')
    assert outcome.plugin == PLUGIN


def test_rewrite_server_text_runtime_no_match_passes_unchanged(example):
    ex = example(OPTIONS)
    assert ex.message(ex.session(), b'{"url":"wss://api.example.com"}', dir="server") is None


def test_rewrite_server_text_runtime_only_server_text_messages(example):
    ex = example(OPTIONS)
    session = ex.session()
    assert ex.message(session, b"internal.example.com", dir="client") is None
    assert ex.message(session, b"internal.example.com", "binary", dir="server") is None
    assert not ex.chain.hooks("WS_FRAME", "server")  # whole messages only: the core reassembles


def test_rewrite_server_text_runtime_messages_up_to_1_mib(example):
    ex = example(OPTIONS)
    session = ex.session()
    assert ex.chain.message_limit("server") == MIB
    at_limit = b"internal.example.com" + b"x" * (MIB - 20)
    assert ex.message(session, at_limit, dir="server").verdict == replace(b"api.example.com" + b"x" * (MIB - 20))
    assert ex.message(session, at_limit + b"x", dir="server") is None  # larger: passes untouched


def test_rewrite_server_text_runtime_search_texts_are_plain_text(example):
    ex = example({"rewrites": {"a.b": "100%", "(x)": "%1"}})
    session = ex.session()
    assert ex.message(session, b"axb", dir="server") is None  # "." is not a wildcard
    assert ex.message(session, b"a.b (x)", dir="server").verdict == replace(b"100% %1")


def test_rewrite_server_text_runtime_rules_apply_in_sorted_order(example):
    # "alpha" sorts before "beta": alpha -> beta happens first, then beta -> gamma
    ex = example({"rewrites": {"beta": "gamma", "alpha": "beta"}})
    assert ex.message(ex.session(), b"alpha beta", dir="server").verdict == replace(b"gamma gamma")


def test_rewrite_server_text_runtime_non_ascii_stays_valid_utf8(example):
    ex = example({"rewrites": {"Gruss": "Grüße", "é": "e"}})
    outcome = ex.message(ex.session(), "Gruss, café".encode(), dir="server")
    assert outcome.verdict.data.decode("utf-8") == "Grüße, cafe"


def test_rewrite_server_text_runtime_without_options_rewrites_nothing(example):
    ex = example()
    assert ex.message(ex.session(), b"internal.example.com", dir="server") is None


def test_rewrite_server_text_runtime_refuses_an_empty_search_text(example):
    with pytest.raises(PluginLoadError, match="may not be empty"):
        example({"rewrites": {"": "x"}})


def test_rewrite_server_text_doc_snippet_loads(check_docs):
    check_docs()
