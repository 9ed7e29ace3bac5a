"""The witness checker itself (tests/helpers/witness.py), on logs made by hand.

The race tests trust it both ways: it must report every overlap and count that
went wrong, and nothing a correct lock does, a killed holder included.
"""

from __future__ import annotations

import os
from pathlib import Path

from witness import Witness, check


def test_sequential_sections_are_clean(tmp_path: Path) -> None:
    with Witness(tmp_path) as w:
        a, b = w.writer(), w.writer()
        for writer in (a, b, a):
            with writer.section("r", object()):
                pass
    report = check(tmp_path)
    assert report.clean, report.summary()
    assert (report.sections, report.completed, report.resources) == (3, 3, 1)


def test_two_exclusive_sections_open_at_once_overlap_and_lose_a_count(tmp_path: Path) -> None:
    with Witness(tmp_path) as w:
        a, b = w.writer(), w.writer()
        with a.section("r", object()), b.section("r", object()):
            pass
        with a.section("other", object()):  # another resource: no overlap with those
            pass
    report = check(tmp_path)
    assert [(o.first.name, o.second.name) for o in report.overlaps] == [("main.1#1", "main.2#1")]
    # Both read 0 and wrote 1: the second line repeats the value.
    assert len(report.counter_errors) == 1 and "holds 1 after 1" in report.counter_errors[0]


def test_shared_sections_may_meet_but_not_an_exclusive_one(tmp_path: Path) -> None:
    with Witness(tmp_path) as w:
        a, b, c = w.writer(), w.writer(), w.writer()
        with a.section("r", object(), shared=True), b.section("r", object(), shared=True):
            pass
        with a.section("r", object(), shared=True), c.section("r", object()):
            pass
    report = check(tmp_path)
    assert [(o.first.name, o.second.name) for o in report.overlaps] == [("main.1#2", "main.3#1")]
    # The exclusive section wrote while the shared one held: it saw the counter change.
    assert any("while main.1#2" in e for e in report.counter_errors), report.counter_errors


def test_a_killed_holders_section_closes_where_the_kill_was_sent(tmp_path: Path) -> None:
    """A section of a killed process is open until its K record: a section entered
    before that overlaps it, one entered after it does not, and the dead section
    may have counted or not."""
    with Witness(tmp_path, "w1") as w1, Witness(tmp_path, "w2") as w2, \
            Witness(tmp_path) as killer:
        doomed, counted, other = w1.writer(), w2.writer(), killer.writer()
        w1_section = doomed.section("r", object())
        w1_section.__enter__()  # SIGKILLed inside: it never leaves
        killer.killing("w1")
        killer.reaped("w1")
        with other.section("r", object()):  # granted after the kill: fine
            pass
        w2_section = counted.section("r", object())
        w2_section.__enter__()
        w2_section.__exit__(None, None, None)  # counted, then killed before anything else
        killer.killing("w2")
        killer.reaped("w2")
    report = check(tmp_path)
    assert report.clean, report.summary()
    assert (report.kills, report.cut, report.cut_counted) == (2, 1, 0)

    with Witness(tmp_path / "early", "w1") as w1, Witness(tmp_path / "early") as killer:
        doomed, other = w1.writer(), killer.writer()
        doomed.section("r", object()).__enter__()
        with other.section("r", object()):  # while the doomed section still held
            pass
        killer.killing("w1")
    report = check(tmp_path / "early")
    assert len(report.overlaps) == 1 and report.overlaps[0].first.name == "w1.1#1"


def test_sections_after_the_kill_record_are_not_checked(tmp_path: Path) -> None:
    """The killed process runs on until the signal lands: what it enters then is
    recorded but not held against anyone, and its counter line may be there or not."""
    with Witness(tmp_path, "w1") as w1, Witness(tmp_path) as killer:
        doomed, other = w1.writer(), killer.writer()
        killer.killing("w1")
        late = doomed.section("r", object())
        late.__enter__()
        with other.section("r", object()):
            pass
        late.__exit__(None, None, None)
        killer.reaped("w1")
    report = check(tmp_path)
    assert report.overlaps == []
    assert report.unchecked == 1


def test_a_completed_section_missing_from_the_counter_is_reported(tmp_path: Path) -> None:
    with Witness(tmp_path) as w:
        writer = w.writer()
        with writer.section("r", object()):
            pass
        with writer.section("r", object()):
            pass
    counter = next((tmp_path / "counters").iterdir())
    counter.write_bytes(counter.read_bytes()[:64])  # the second count lost
    report = check(tmp_path)
    assert report.overlaps == []
    assert any("completed but is not counted" in e for e in report.counter_errors)


def test_a_section_left_open_without_a_kill_or_records_after_the_reap_are_problems(
        tmp_path: Path) -> None:
    with Witness(tmp_path, "w1") as w1, Witness(tmp_path) as killer:
        w1.writer().section("r", object()).__enter__()  # never left, never killed
        killer.killing("w2")
        killer.reaped("w2")
        w2 = Witness(tmp_path, "w2")
        with w2.writer().section("s", object()):
            pass
        w2.close()
    report = check(tmp_path)
    assert any("never left" in p for p in report.problems), report.problems
    assert any("after w2 was reaped" in p for p in report.problems), report.problems


def test_a_descriptor_closed_under_the_witness_is_reported_and_loses_no_record(
        tmp_path: Path) -> None:
    """Code that closes a descriptor it does not own (one the witness reused) must
    show as that, not as a section that never left or a count lost."""
    with Witness(tmp_path / "w") as w:
        writer = w.writer()
        with writer.section("r", object()) as section:
            assert section._counter is not None
            os.close(section._counter.fd)  # as a lock closing a stale descriptor number would
            other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT, 0o600)  # takes it
        with writer.section("r", object()):
            pass
        os.close(other)
    report = check(tmp_path / "w")
    assert report.overlaps == [] and report.counter_errors == [], report.summary()
    assert report.completed == 2
    assert len(report.problems) == 1 and "closed under the witness" in report.problems[0]
    assert (tmp_path / "other").read_bytes() == b""  # nothing written into someone else's file
