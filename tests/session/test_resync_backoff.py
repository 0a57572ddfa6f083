"""A book resynced again and again backs off (`ResyncBackoff`: pure, the clock is passed in)."""

from __future__ import annotations

from recorder.session.deadlines import ResyncBackoff


def test_the_first_resyncs_go_at_once_then_each_waits_twice_as_long():
    b = ResyncBackoff(free=3, window=10.0, first=1.0, max_delay=8.0)
    now, waits = 0.0, []
    for _ in range(8):  # each asked for right after the previous one was sent (its snapshot gapped again)
        w = b.delay("BTC_USDT", now)
        waits.append(w)
        now += w + 0.05
    assert waits == [0, 0, 0, 1, 2, 4, 8, 8]


def test_a_quiet_window_starts_again_and_books_do_not_share_a_level():
    b = ResyncBackoff(free=2, window=10.0, first=1.0, max_delay=60.0)
    assert [b.delay("A", t) for t in (0.0, 0.1, 0.2)] == [0, 0, 1]
    assert b.delay("B", 0.3) == 0  # another book: its own level
    assert b.delay("A", 1.2 + 10.5) == 0  # ten seconds after A's last send: level 0 again
    assert b.delay("A", 11.8) == 0 and b.delay("A", 11.9) == 1
