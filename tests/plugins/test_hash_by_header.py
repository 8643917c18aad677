"""plugins/hash_by_header.{lua,py}: the hash key from a header, else a cookie, else none."""

import pytest

PLUGIN = "hash_by_header"


def key(outcome):
    return outcome.actions.hash_key if outcome is not None and outcome.actions is not None else None


@pytest.mark.parametrize("headers, expected", [
    ([("X-User-Id", "alice")], "alice"),
    ([("x-user-id", "alice")], "alice"),                                   # header names are case-insensitive
    ([("Cookie", "theme=dark; uid=bob")], "bob"),                          # no header: the cookie
    ([("X-User-Id", "alice"), ("Cookie", "uid=bob")], "alice"),           # the header wins
    ([("X-User-Id", ""), ("Cookie", "uid=bob")], "bob"),                  # an empty header is no key
    ([("Cookie", 'uid="carol"')], "carol"),                                # quotes stripped
    ([("Cookie", "a=1"), ("Cookie", "uid=dave")], "dave"),                # any Cookie header
    ([("X-User-Id", "alice"), ("X-User-Id", "mallory")], "alice"),        # the first value
    ([], None),                                                            # no header, no cookie:
    ([("X-User", "alice"), ("Cookie", "uidx=1; xuid=2")], None),          #   the pool's algorithm
    ([("Cookie", "uid=")], None),                                          # an empty cookie is no key
])
def test_hash_by_header_runtime_default_options(example, headers, expected):
    ex = example()
    outcome, req = ex.request(ex.session(), "/ws", headers)
    assert key(outcome) == expected
    if expected is None:
        assert outcome is None
    else:
        assert outcome.verdict is None and outcome.actions.pool is None and outcome.actions.member is None
    assert not req.edited


def test_hash_by_header_runtime_options(example):
    ex = example({"header": "X-Tenant", "cookie": "tenant"})
    session = ex.session()
    assert key(ex.request(session, "/", [("X-Tenant", "acme")])[0]) == "acme"
    assert key(ex.request(session, "/", [("Cookie", "tenant=globex")])[0]) == "globex"
    assert ex.request(session, "/", [("X-User-Id", "alice"), ("Cookie", "uid=bob")])[0] is None


def test_hash_by_header_runtime_cookie_false_uses_the_header_only(example):
    ex = example({"cookie": False})
    session = ex.session()
    assert ex.request(session, "/", [("Cookie", "uid=bob")])[0] is None
    assert key(ex.request(session, "/", [("X-User-Id", "alice")])[0]) == "alice"


def test_hash_by_header_runtime_header_false_uses_the_cookie_only(example):
    ex = example({"header": False})
    session = ex.session()
    assert ex.request(session, "/", [("X-User-Id", "alice")])[0] is None
    assert key(ex.request(session, "/", [("X-User-Id", "alice"), ("Cookie", "uid=bob")])[0]) == "bob"


def test_hash_by_header_doc_snippet_loads(check_docs):
    check_docs()
