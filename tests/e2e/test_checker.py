"""The replication checker itself, on synthetic histories (no broker): it
passes a clean run and fails on each planted violation, so that a scenario
test cannot pass because the checker looks away."""

import pytest

from checker import History, check, failover_times, longest_pause


def clean_run():
    """p0 and p1 each send 4 messages to 2 partitions; all acknowledged; a
    consumer read some; the final read matches."""
    history = History()
    final = {0: [], 1: []}
    for seq in range(4):
        for producer in ("p0", "p1"):
            value = f"{producer}-{seq}"
            partition = seq % 2
            offset = len(final[partition])
            history.send(value, at=10.0 + seq)
            history.ack(value, partition, offset, at=10.5 + seq)
            final[partition].append((offset, value))
    for partition, offset_value in ((0, (0, "p0-0")), (1, (1, "p1-1"))):
        history.read(partition, *offset_value, at=12.0)
    return history, final


def test_a_clean_history_passes():
    history, final = clean_run()
    check(history, final, healed_at=11.0, min_acks_after_heal=4)


def test_a_lost_acknowledged_message_fails():
    history, final = clean_run()
    del final[1][1]  # p1-1, acknowledged at 1/1
    with pytest.raises(AssertionError, match=r"acknowledged messages lost.*p1-1 \(acknowledged at 1/1"):
        check(history, final)


def test_an_acknowledged_message_at_another_offset_fails():
    history, final = clean_run()
    final[0][0], final[0][1] = (0, final[0][1][1]), (1, final[0][0][1])  # p0-0 and p1-0 swapped
    with pytest.raises(AssertionError, match=r"p0-0 \(acknowledged at 0/0; the final read has 'p1-0' there"):
        check(history, final)


def test_a_duplicate_fails():
    history, final = clean_run()
    final[0].append((4, "p0-2"))  # a retry written twice
    with pytest.raises(AssertionError, match=r"duplicated.*p0-2 at 0/2, 0/4"):
        check(history, final)


def test_a_value_never_sent_fails():
    history, final = clean_run()
    final[1].append((4, "p9-0"))
    with pytest.raises(AssertionError, match=r"p9-0 at 1/4 \(never sent\)"):
        check(history, final)


def test_a_producer_out_of_order_fails():
    """Failed (unacknowledged) messages may be in the log, but not out of order."""
    history, final = clean_run()
    history.send("p0-4", at=20.0)
    history.fail("p0-4", "_MSG_TIMED_OUT", at=80.0)
    final[0].insert(1, (1, "p0-4"))  # before p0-2, at an offset the acks do not use...
    final[0] = [(o, v) for o, v in final[0] if v != "p1-0"]  # ...which was p1-0's
    history.acked.pop("p1-0")
    with pytest.raises(AssertionError, match=r"order violations.*p0-2 at 0/2 after p0-4 at 0/1"):
        check(history, final)


def test_offsets_going_backwards_fail():
    history, final = clean_run()
    final[1].reverse()
    with pytest.raises(AssertionError, match=r"order violations.*partition 1: offset 2 read after 3"):
        check(history, final)


def test_a_consumed_record_that_is_later_lost_fails():
    history, final = clean_run()
    history.send("p1-9", at=13.0)  # sent, never acknowledged, read by a consumer...
    history.read(1, 4, "p1-9", at=13.5)  # ...past what was committed, then truncated away
    with pytest.raises(AssertionError,
                       match=r"consumers read that were later lost.*p1-9 \(read at 1/4; the final read has None"):
        check(history, final)


def test_no_progress_after_the_heal_fails():
    history, final = clean_run()
    with pytest.raises(AssertionError, match=r"no progress: 0 acknowledgements after the heal"):
        check(history, final, healed_at=100.0, min_acks_after_heal=1)


def test_failover_time_counts_only_messages_sent_after_the_kill():
    history = History()
    history.send("p0-0", at=1.0)
    history.ack("p0-0", 0, 0, at=5.1)  # sent before the kill at 5.0: the old leader may have answered it
    history.send("p0-1", at=5.2)
    history.ack("p0-1", 0, 1, at=7.0)
    history.send("p0-2", at=5.3)
    history.ack("p0-2", 1, 0, at=6.5)
    times = failover_times(history, killed_at=5.0, partitions=[0, 1, 2])
    assert times == {0: pytest.approx(2.0), 1: pytest.approx(1.5), 2: None}


def test_longest_pause_between_acknowledgements():
    history = History()
    for i, at in enumerate((1.0, 1.5, 4.5, 5.0)):
        history.send(f"p0-{i}", at=0.5)
        history.ack(f"p0-{i}", 0, i, at=at)
    assert longest_pause(history, 0.0, 6.0) == pytest.approx(3.0)
    assert longest_pause(history, 4.6, 9.0) == pytest.approx(4.0)  # from the last ack to the end
    assert longest_pause(history, 0.0, 6.0, partitions={1}) == pytest.approx(6.0)
