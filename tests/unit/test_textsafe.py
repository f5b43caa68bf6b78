"""vpnd.textsafe: peer-supplied text is one bounded printable line (issue 8.4)."""
import logging

from hypothesis import given, settings, strategies as st

from vpnd.textsafe import ELLIPSIS, SafeFormatter, one_line, safe


def _no_controls(s: str) -> bool:
    return s.isprintable()


@settings(max_examples=500)
@given(st.one_of(st.text(), st.binary()), st.integers(min_value=1, max_value=400))
def test_safe_is_printable_and_bounded(value, limit):
    out = safe(value, limit)
    assert _no_controls(out)
    assert "\n" not in out and "\r" not in out and "\x1b" not in out
    assert len(out) <= max(limit, 2)


@given(st.text(max_size=100).filter(lambda s: s.isprintable() and "\\" not in s))
def test_printable_text_unchanged(value):
    assert safe(value, 1000) == value


def test_escapes():
    assert safe("a\nb\rc\x1b[31m") == "a\\x0ab\\x0dc\\x1b[31m"
    assert safe(b"ok\xff\xfe") == "ok\\xff\\xfe"
    assert safe("caf\u00e9".encode()) == "caf\u00e9"
    assert safe("x\u202ey\u2028") == "x\\u202ey\\u2028"  # bidi override, line separator
    assert safe("a\\x0a") == "a\\\\x0a"  # a literal backslash cannot fake an escape
    assert safe(None) == "None"
    assert safe(12) == "12"


def test_bounded_with_ellipsis_at_escape_boundary():
    out = safe("\n" * 100, 10)
    assert out.endswith(ELLIPSIS) and len(out) <= 10
    assert out[:-1] == "\\x0a\\x0a"  # never half an escape
    assert safe("a" * 10, 10) == "a" * 10
    assert safe("a" * 11, 10) == "a" * 9 + ELLIPSIS


def test_hostile_str():
    class Bad:
        def __str__(self):
            raise RuntimeError("no")
    assert safe(Bad()) == "<Bad>"


@given(st.text())
def test_one_line(value):
    out = one_line(value)
    assert out.isprintable()


def test_safe_formatter_keeps_record_on_one_line():
    fmt = SafeFormatter("%(levelname)s %(message)s")
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "peer id %s",
                            ("a\n2030-01-01T00:00:00 vpnd[1] INFO FORGED",), None)
    line = fmt.format(rec)
    assert "\n" not in line
    assert line == "INFO peer id a\\x0a2030-01-01T00:00:00 vpnd[1] INFO FORGED"
