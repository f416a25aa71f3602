"""Upstream state and the balancer: least outstanding, weights, passive ejection, half-open
trials, active health checks and the set of upstreams kept across reloads.

Time is a fake clock: the balancers made here read the ``clock`` fixture's (the balancer takes
its clock as an argument); the upstream's own methods take ``now`` as an argument.
"""

from __future__ import annotations

from collections import Counter

import pytest

from bastion.errors import NoUpstreamError
from bastion.settings import EjectionSettings
from bastion.upstream.balancer import Balancer, Upstream, UpstreamSet, Weighted
from bastion.upstream.origin import Origin

T0 = 1000.0
EJECTION = EjectionSettings(failures=3, duration=5.0, max_duration=60.0)


class Clock:
    """Stands in for ``time.monotonic``, the balancer's clock."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


_CLOCK = Clock()
"""The clock of the balancers made here (:func:`balancer`)."""


@pytest.fixture
def clock() -> Clock:
    _CLOCK.now = T0
    return _CLOCK


def origin(port: int) -> Origin:
    return Origin.from_url(f"http://127.0.0.1:{port}")


def upstream(port: int = 8001, ejection: EjectionSettings = EJECTION) -> Upstream:
    return Upstream(origin(port), ejection)


def member(up: Upstream, weight: int = 1) -> Weighted:
    return Weighted(up, weight, None, True)


def balancer(*ups: Upstream, weights: tuple[int, ...] | None = None) -> Balancer:
    weights = weights or (1,) * len(ups)
    return Balancer((member(u, w) for u, w in zip(ups, weights, strict=True)), _CLOCK.monotonic)


def picks(b: Balancer, n: int, *, hold: bool = False) -> Counter[str]:
    """Pick ``n`` times, each pick begun; finished at once unless ``hold``."""
    counts: Counter[str] = Counter()
    for _ in range(n):
        chosen = b.pick().upstream
        chosen.begin(T0)
        counts[chosen.name] += 1
        if not hold:
            chosen.succeeded(False)
    return counts


def eject(up: Upstream, now: float) -> None:
    """Fail requests until ``up`` is ejected (its ejection settings' ``failures`` of them)."""
    for _ in range(up.ejection.failures):
        assert not up.begin(now)
        up.failed(now, False)
    assert up.ejected


def retry_after(error: NoUpstreamError) -> int:
    values = [v for n, v in error.headers if n == b"retry-after"]
    assert len(values) == 1
    return int(values[0])


# -- the upstream's name ----------------------------------------------------------------------


def test_an_upstream_is_named_by_host_and_port_only() -> None:
    up = Upstream(Origin.from_url("http://127.0.0.1:8001/v1"), EJECTION, authorization=b"Bearer s")
    assert up.name == "127.0.0.1:8001"
    assert up.health_path == "/health"
    assert up.healthy
    assert not up.checked
    assert not up.ejected
    assert up.available(T0)


# -- least outstanding ------------------------------------------------------------------------


def test_the_next_pick_goes_to_the_least_loaded_of_two(clock: Clock) -> None:
    a, b = upstream(8001), upstream(8002)
    bal = balancer(a, b)
    a.begin(clock.now)
    assert [bal.pick().upstream for _ in range(4)] == [b] * 4
    b.begin(clock.now)
    b.begin(clock.now)
    assert [bal.pick().upstream for _ in range(4)] == [a] * 4


def test_the_next_pick_goes_to_the_least_loaded_of_three(clock: Clock) -> None:
    a, b, c = upstream(8001), upstream(8002), upstream(8003)
    bal = balancer(a, b, c)
    for _ in range(2):
        a.begin(clock.now)
    c.begin(clock.now)
    assert {bal.pick().upstream for _ in range(6)} == {b}
    b.begin(clock.now)
    b.begin(clock.now)
    assert {bal.pick().upstream for _ in range(6)} == {c}
    # a request ending lowers the count it is compared by
    a.succeeded(False)
    a.succeeded(False)
    assert {bal.pick().upstream for _ in range(6)} == {a}


def test_held_requests_spread_evenly_over_equal_members(clock: Clock) -> None:
    a, b, c = upstream(8001), upstream(8002), upstream(8003)
    counts = picks(balancer(a, b, c), 30, hold=True)
    assert counts == {a.name: 10, b.name: 10, c.name: 10}
    assert (a.outstanding, b.outstanding, c.outstanding) == (10, 10, 10)
    assert a.requests == 10


def test_an_idle_balancer_alternates(clock: Clock) -> None:
    a, b = upstream(8001), upstream(8002)
    bal = balancer(a, b)
    chosen = [bal.pick().upstream for _ in range(6)]
    assert chosen[0] is not chosen[1]
    assert chosen == [chosen[0], chosen[1]] * 3


def test_an_idle_balancer_of_three_takes_each_in_turn(clock: Clock) -> None:
    ups = upstream(8001), upstream(8002), upstream(8003)
    bal = balancer(*ups)
    chosen = [bal.pick().upstream for _ in range(9)]
    assert set(chosen[:3]) == set(ups)
    assert chosen == chosen[:3] * 3
    # requests that begin and end between picks leave it idle: still in turn
    assert picks(bal, 9) == {u.name: 3 for u in ups}


# -- weights ----------------------------------------------------------------------------------


def test_weight_two_gets_twice_the_share_of_weight_one(clock: Clock) -> None:
    a, b = upstream(8001), upstream(8002)
    bal = balancer(a, b, weights=(2, 1))
    assert picks(bal, 30) == {a.name: 20, b.name: 10}
    assert picks(bal, 300) == {a.name: 200, b.name: 100}


def test_weights_spread_requests_within_each_round(clock: Clock) -> None:
    a, b = upstream(8001), upstream(8002)
    bal = balancer(a, b, weights=(2, 1))
    chosen = [bal.pick().upstream for _ in range(12)]
    for start in range(0, 12, 3):  # every three picks: two for a, one for b
        assert Counter(chosen[start : start + 3]) == {a: 2, b: 1}


def test_weights_hold_when_both_have_equal_requests_in_flight(clock: Clock) -> None:
    a, b = upstream(8001), upstream(8002)
    bal = balancer(a, b, weights=(2, 1))
    a.outstanding = b.outstanding = 3
    counts = Counter(bal.pick().upstream.name for _ in range(30))
    assert counts == {a.name: 20, b.name: 10}


def test_a_weighted_member_with_requests_piling_up_gets_fewer(clock: Clock) -> None:
    a, b = upstream(8001), upstream(8002)
    bal = balancer(a, b, weights=(2, 1))
    a.outstanding = 3  # share 2 / 4 against b's 1 / 1
    counts = Counter(bal.pick().upstream.name for _ in range(30))
    assert counts == {a.name: 10, b.name: 20}


def test_held_weighted_requests_favour_the_heavier_member_less_as_they_pile_up(
    clock: Clock,
) -> None:
    a, b = upstream(8001), upstream(8002)
    counts = picks(balancer(a, b, weights=(3, 1)), 40, hold=True)
    assert counts[a.name] + counts[b.name] == 40
    # share is weight / (in flight + 1): more than b, less than 3:1 once requests pile up
    assert 1.5 * counts[b.name] < counts[a.name] < 3 * counts[b.name]
    assert a.outstanding == counts[a.name]


def test_weight_zero_is_never_picked(clock: Clock) -> None:
    drained, a, b = upstream(8000), upstream(8001), upstream(8002)
    bal = balancer(drained, a, b, weights=(0, 1, 1))
    assert [m.upstream for m in bal.members] == [a, b]
    assert drained.name not in picks(bal, 20)
    assert drained.name not in picks(bal, 20, hold=True)
    assert bal.pick_other((a, b)) is None


def test_weight_zero_beside_one_member_leaves_that_member_alone(clock: Clock) -> None:
    drained, only = upstream(8000), upstream(8001)
    bal = balancer(drained, only, weights=(0, 5))
    assert {bal.pick().upstream for _ in range(5)} == {only}
    eject(only, clock.now)
    with pytest.raises(NoUpstreamError):
        bal.pick()  # the drained upstream is no fallback


@pytest.mark.parametrize("weights", [(0,), (0, 0)])
def test_a_balancer_with_only_weight_zero_is_refused(weights: tuple[int, ...]) -> None:
    ups = [upstream(8001 + i) for i in range(len(weights))]
    with pytest.raises(ValueError, match="weight above 0"):
        balancer(*ups, weights=weights)


def test_a_balancer_without_members_is_refused() -> None:
    with pytest.raises(ValueError, match="weight above 0"):
        Balancer(())


# -- no upstream available --------------------------------------------------------------------


def test_pick_raises_no_upstream_when_every_member_is_unhealthy(clock: Clock) -> None:
    a, b = upstream(8001), upstream(8002)
    bal = balancer(a, b)
    a.check_failed(1)
    b.check_failed(1)
    with pytest.raises(NoUpstreamError) as caught:
        bal.pick()
    error = caught.value
    assert error.status == 503
    assert error.code == "no_healthy_upstream"
    assert retry_after(error) >= 1


def test_pick_raises_no_upstream_when_every_member_is_ejected(clock: Clock) -> None:
    a, b = upstream(8001), upstream(8002)
    bal = balancer(a, b)
    eject(a, clock.now)
    clock.advance(1.0)
    eject(b, clock.now)
    with pytest.raises(NoUpstreamError) as caught:
        bal.pick()
    # a comes back first: 4 seconds left of its 5
    assert retry_after(caught.value) == 4


def test_a_single_member_that_is_down_raises_no_upstream(clock: Clock) -> None:
    only = upstream(8001)
    bal = balancer(only)
    assert bal.pick().upstream is only
    eject(only, clock.now)
    with pytest.raises(NoUpstreamError) as caught:
        bal.pick()
    assert caught.value.status == 503
    assert retry_after(caught.value) == 5


def test_available_count_leaves_out_unhealthy_ejected_and_unweighted_members(
    clock: Clock,
) -> None:
    a, b, c, idle = upstream(8001), upstream(8002), upstream(8003), upstream(8004)
    bal = balancer(a, b, c, idle, weights=(1, 1, 1, 0))
    assert bal.available_count() == 3  # weight 0 takes no request
    b.check_failed(1)
    eject(c, clock.now)
    assert bal.available_count() == 1
    clock.advance(EJECTION.duration)
    assert bal.available_count() == 2  # c is due for a trial request
    b.check_passed(1)
    assert bal.available_count() == 3


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [(0.0, 5), (0.6, 5), (1.0, 4), (1.4, 4), (3.0, 2), (4.0, 1), (4.7, 1), (4.99, 1)],
)
def test_retry_after_is_the_ejection_time_left_and_at_least_one(
    clock: Clock, elapsed: float, expected: int
) -> None:
    only = upstream(8001)
    bal = balancer(only)
    eject(only, clock.now)
    clock.advance(elapsed)
    with pytest.raises(NoUpstreamError) as caught:
        bal.pick()
    assert retry_after(caught.value) == expected


def test_retry_after_ignores_unhealthy_members(clock: Clock) -> None:
    down, ejected = upstream(8001), upstream(8002)
    bal = balancer(down, ejected)
    down.check_failed(1)
    eject(ejected, clock.now)
    clock.advance(2.0)
    with pytest.raises(NoUpstreamError) as caught:
        bal.pick()
    assert retry_after(caught.value) == 3


def test_retry_after_is_one_while_a_trial_is_in_flight(clock: Clock) -> None:
    only = upstream(8001)
    bal = balancer(only)
    eject(only, clock.now)
    clock.advance(5.0)
    assert bal.pick().upstream.begin(clock.now)  # the half-open trial
    with pytest.raises(NoUpstreamError) as caught:
        bal.pick()
    assert retry_after(caught.value) == 1


def test_retry_after_has_a_default_when_every_member_is_unhealthy(clock: Clock) -> None:
    a, b = upstream(8001), upstream(8002)
    a.check_failed(1)
    b.check_failed(1)
    with pytest.raises(NoUpstreamError) as caught:
        balancer(a, b).pick()
    assert retry_after(caught.value) == 5


def test_pick_skips_members_that_are_down(clock: Clock) -> None:
    a, b, c = upstream(8001), upstream(8002), upstream(8003)
    bal = balancer(a, b, c)
    a.check_failed(1)
    eject(c, clock.now)
    assert {bal.pick().upstream for _ in range(6)} == {b}
    b.outstanding = 50  # still the only one
    assert bal.pick().upstream is b


# -- pick_other -------------------------------------------------------------------------------


def test_pick_other_leaves_out_what_was_tried(clock: Clock) -> None:
    a, b, c = upstream(8001), upstream(8002), upstream(8003)
    bal = balancer(a, b, c)
    for _ in range(6):
        other = bal.pick_other((a,))
        assert other is not None
        assert other.upstream in (b, c)
    chosen = bal.pick_other((a, c))
    assert chosen is not None
    assert chosen.upstream is b
    assert bal.pick_other((a, b, c)) is None


def test_pick_other_prefers_the_least_loaded_of_the_rest(clock: Clock) -> None:
    a, b, c = upstream(8001), upstream(8002), upstream(8003)
    bal = balancer(a, b, c)
    b.begin(clock.now)
    for _ in range(4):
        other = bal.pick_other((a,))
        assert other is not None
        assert other.upstream is c


def test_pick_other_leaves_out_members_that_are_down(clock: Clock) -> None:
    a, b, c = upstream(8001), upstream(8002), upstream(8003)
    bal = balancer(a, b, c)
    eject(b, clock.now)
    chosen = bal.pick_other((a,))
    assert chosen is not None
    assert chosen.upstream is c
    c.check_failed(1)
    assert bal.pick_other((a,)) is None


def test_pick_other_with_weights_leaves_out_what_was_tried(clock: Clock) -> None:
    a, b = upstream(8001), upstream(8002)
    bal = balancer(a, b, weights=(5, 1))
    for _ in range(5):
        other = bal.pick_other((a,))
        assert other is not None
        assert other.upstream is b
    assert bal.pick_other((a, b)) is None


def test_pick_other_of_a_single_member_is_none(clock: Clock) -> None:
    only = upstream(8001)
    assert balancer(only).pick_other((only,)) is None


# -- passive ejection -------------------------------------------------------------------------


def test_failures_in_a_row_eject_and_not_before() -> None:
    up = upstream()
    for _ in range(2):
        up.begin(T0)
        up.failed(T0, False)
    assert not up.ejected
    assert up.available(T0)
    assert up.failures == 2
    up.begin(T0)
    up.failed(T0, False)
    assert up.ejected
    assert up.ejected_until == T0 + 5.0
    assert not up.available(T0)
    assert not up.available(T0 + 4.99)
    assert (up.ejections, up.errors, up.requests, up.outstanding) == (1, 3, 3, 0)


def test_a_success_resets_the_count_of_failures() -> None:
    up = upstream()
    for _ in range(2):
        up.begin(T0)
        up.failed(T0, False)
    up.begin(T0)
    up.succeeded(False)
    assert up.failures == 0
    for _ in range(2):
        up.begin(T0)
        up.failed(T0, False)
    assert not up.ejected
    up.begin(T0)
    up.failed(T0, False)
    assert up.ejected
    assert up.errors == 5


def test_failures_zero_never_ejects() -> None:
    up = upstream(ejection=EjectionSettings(failures=0))
    for _ in range(100):
        up.begin(T0)
        up.failed(T0, False)
    assert not up.ejected
    assert up.available(T0)
    assert (up.ejections, up.errors) == (0, 100)


def test_one_failure_ejects_when_so_configured() -> None:
    up = upstream(ejection=EjectionSettings(failures=1, duration=2.0))
    up.begin(T0)
    up.failed(T0, False)
    assert up.ejected_until == T0 + 2.0


def test_more_failures_while_ejected_do_not_extend_it() -> None:
    up = upstream()
    for _ in range(5):
        up.begin(T0)
    for _ in range(5):  # requests begun before the ejection end after it
        up.failed(T0 + 1.0, False)
    assert up.ejected_until == T0 + 1.0 + 5.0
    assert up.ejections == 1
    assert (up.errors, up.outstanding) == (5, 0)


def trial_fails(up: Upstream, now: float) -> None:
    assert up.available(now)
    trial = up.begin(now)
    assert trial
    assert up.trial
    up.failed(now, trial)
    assert not up.trial


def test_ejection_doubles_with_each_ejection_in_a_row_up_to_the_maximum() -> None:
    up = upstream(ejection=EjectionSettings(failures=2, duration=5.0, max_duration=30.0))
    eject(up, T0)
    lengths = [up.ejected_until - T0]
    now = T0
    for _ in range(5):
        now = up.ejected_until
        trial_fails(up, now)
        lengths.append(up.ejected_until - now)
    assert lengths == [5.0, 10.0, 20.0, 30.0, 30.0, 30.0]
    assert up.ejections == 6
    assert up.consecutive_ejections == 6


def test_a_very_long_run_of_ejections_stays_at_the_maximum() -> None:
    up = upstream(ejection=EjectionSettings(failures=1, duration=0.5, max_duration=7.0))
    eject(up, T0)
    now = T0
    for _ in range(40):
        now = up.ejected_until
        trial_fails(up, now)
    assert up.ejected_until - now == pytest.approx(7.0)
    assert up.consecutive_ejections == 41


# -- half-open --------------------------------------------------------------------------------


def test_after_the_ejection_one_trial_is_let_through() -> None:
    up = upstream()
    eject(up, T0)
    until = up.ejected_until
    assert not up.available(until - 0.01)
    assert up.available(until)
    assert up.begin(until)  # this request is the trial
    assert up.trial
    assert not up.available(until)  # no second request while the trial is in flight
    assert not up.available(until + 100.0)


def test_a_successful_trial_puts_the_upstream_back() -> None:
    up = upstream()
    eject(up, T0)
    now = up.ejected_until
    trial = up.begin(now)
    assert trial
    up.succeeded(trial)
    assert not up.ejected
    assert not up.trial
    assert up.available(now)
    assert (up.failures, up.consecutive_ejections, up.ejections) == (0, 0, 1)
    # the next ejection is a first one again: full count of failures, base duration
    for _ in range(2):
        assert not up.begin(now)
        up.failed(now, False)
    assert not up.ejected
    assert not up.begin(now)
    up.failed(now, False)
    assert up.ejected_until == now + 5.0


def test_a_failed_trial_ejects_again_for_longer() -> None:
    up = upstream()
    eject(up, T0)
    now = up.ejected_until
    trial = up.begin(now)
    assert trial
    up.failed(now, trial)  # one failure is enough in half-open
    assert up.ejected
    assert not up.trial
    assert up.ejected_until == now + 10.0
    assert not up.available(now)
    assert up.ejections == 2


def test_an_abandoned_trial_lets_another_through() -> None:
    up = upstream()
    eject(up, T0)
    now = up.ejected_until
    trial = up.begin(now)
    assert trial
    assert not up.available(now)
    up.abandoned(trial)
    assert not up.trial
    assert up.ejected  # no verdict either way
    assert up.outstanding == 0
    assert up.available(now)
    assert up.begin(now)  # the next request is the trial
    assert up.trial


def test_the_balancer_sends_one_trial_and_waits_for_its_verdict(clock: Clock) -> None:
    ejected, other = upstream(8001), upstream(8002)
    bal = balancer(ejected, other)
    eject(ejected, clock.now)
    assert {bal.pick().upstream for _ in range(4)} == {other}
    clock.advance(5.0)
    chosen = next(m.upstream for m in (bal.pick(), bal.pick()) if m.upstream is ejected)
    trial = chosen.begin(clock.now)
    assert trial
    assert {bal.pick().upstream for _ in range(4)} == {other}
    chosen.succeeded(trial)
    assert ejected in {bal.pick().upstream for _ in range(4)}


def test_a_lone_upstream_in_trial_raises_no_upstream(clock: Clock) -> None:
    only = upstream(8001)
    bal = balancer(only)
    eject(only, clock.now)
    clock.advance(5.0)
    trial = bal.pick().upstream.begin(clock.now)
    assert trial
    with pytest.raises(NoUpstreamError):
        bal.pick()
    only.failed(clock.now, trial)
    with pytest.raises(NoUpstreamError) as caught:
        bal.pick()
    assert retry_after(caught.value) == 10


# -- active health checks ---------------------------------------------------------------------


def test_a_first_failed_check_takes_the_upstream_out_at_once() -> None:
    up = upstream()
    up.check_failed(unhealthy_after=3)
    assert up.checked
    assert not up.healthy
    assert not up.available(T0)
    assert up.retry_after(T0) == 0.0


def test_a_first_passed_check_marks_it_checked() -> None:
    up = upstream()
    up.check_passed(healthy_after=3)
    assert up.checked
    assert up.healthy
    assert up.available(T0)


def test_unhealthy_after_failed_checks_in_a_row() -> None:
    up = upstream()
    up.check_passed(1)
    up.check_failed(3)
    up.check_failed(3)
    assert up.healthy
    up.check_passed(1)  # a pass in between starts the count again
    up.check_failed(3)
    up.check_failed(3)
    assert up.healthy
    up.check_failed(3)
    assert not up.healthy
    assert up.checks_failed == 3


def test_healthy_after_passed_checks_in_a_row() -> None:
    up = upstream()
    up.check_failed(1)
    assert not up.healthy
    up.check_passed(3)
    up.check_passed(3)
    assert not up.healthy
    up.check_failed(1)  # a failure in between starts the count again
    up.check_passed(3)
    up.check_passed(3)
    assert not up.healthy
    up.check_passed(3)
    assert up.healthy
    assert up.available(T0)


def test_recovering_from_unhealthy_clears_passive_ejection() -> None:
    up = upstream()
    up.check_passed(1)
    eject(up, T0)
    eject_count = up.ejections
    up.check_failed(1)
    assert not up.healthy
    up.check_passed(1)
    assert up.healthy
    assert not up.ejected
    assert (up.failures, up.consecutive_ejections) == (0, 0)
    assert up.available(T0)
    assert up.ejections == eject_count  # totals are kept


def test_a_passed_check_does_not_clear_an_ejection_of_a_healthy_upstream() -> None:
    up = upstream()
    up.check_passed(1)
    eject(up, T0)
    up.check_passed(1)
    assert up.ejected
    assert not up.available(T0)


def test_an_unhealthy_upstream_is_not_available_even_when_due_for_a_trial() -> None:
    up = upstream()
    eject(up, T0)
    up.check_passed(1)
    up.check_failed(1)
    assert not up.available(up.ejected_until + 1.0)


# -- count_available --------------------------------------------------------------------------


def test_count_available_without_checked_counts_unchecked_upstreams(clock: Clock) -> None:
    a, b = upstream(8001), upstream(8002)
    bal = balancer(a, b)
    assert bal.count_available(clock.now) == 2
    assert bal.count_available(clock.now, checked=True) == 0


def test_count_available_checked_counts_checked_available_upstreams(clock: Clock) -> None:
    a, b = upstream(8001), upstream(8002)
    bal = balancer(a, b)
    a.check_failed(1)
    assert bal.count_available(clock.now) == 1  # b has not been checked but may take requests
    assert bal.count_available(clock.now, checked=True) == 0
    b.check_passed(1)
    assert bal.count_available(clock.now, checked=True) == 1
    a.check_passed(1)
    assert bal.count_available(clock.now, checked=True) == 2
    eject(b, clock.now)
    assert bal.count_available(clock.now, checked=True) == 1
    assert bal.count_available(clock.now) == 1
    clock.advance(5.0)  # due for a trial
    assert bal.count_available(clock.now, checked=True) == 2


def test_count_available_ignores_weight_zero_members(clock: Clock) -> None:
    drained, a = upstream(8000), upstream(8001)
    bal = balancer(drained, a, weights=(0, 1))
    drained.check_passed(1)
    a.check_failed(1)
    assert bal.count_available(clock.now) == 0
    assert bal.count_available(clock.now, checked=True) == 0
    assert len(bal.members) == 1


# -- the set of upstreams ---------------------------------------------------------------------


def test_get_returns_the_same_upstream_for_the_same_origin() -> None:
    upstreams = UpstreamSet(EJECTION)
    first = upstreams.get(origin(8001), health_path="/health", authorization=None)
    same = Origin.from_url("http://127.0.0.1:8001/v1")
    again = upstreams.get(same, health_path="/health", authorization=None)
    other = upstreams.get(origin(8002), health_path="/health", authorization=None)
    assert again is first
    assert other is not first
    assert upstreams.all() == [first, other]
    assert first.ejection is EJECTION


def test_get_keeps_state_and_takes_the_latest_path_and_credential() -> None:
    upstreams = UpstreamSet(EJECTION)
    up = upstreams.get(origin(8001), health_path="/health", authorization=b"Bearer old")
    eject(up, T0)
    up.begin(T0)
    again = upstreams.get(origin(8001), health_path="/v1/models", authorization=b"Bearer new")
    assert again is up
    assert (up.health_path, up.authorization) == ("/v1/models", b"Bearer new")
    assert up.ejected
    assert up.outstanding == 1
    upstreams.get(origin(8001), health_path="/v1/models", authorization=None)
    assert up.authorization is None


def test_retain_forgets_the_others() -> None:
    upstreams = UpstreamSet(EJECTION)
    a = upstreams.get(origin(8001), health_path="/health", authorization=None)
    upstreams.get(origin(8002), health_path="/health", authorization=None)
    c = upstreams.get(origin(8003), health_path="/health", authorization=None)
    upstreams.retain([origin(8001), origin(8003), origin(9999)])
    assert upstreams.all() == [a, c]
    assert upstreams.get(origin(8001), health_path="/health", authorization=None) is a
    fresh = upstreams.get(origin(8002), health_path="/health", authorization=None)
    assert fresh.requests == 0
    upstreams.retain([])
    assert upstreams.all() == []


def test_reconfigure_applies_new_ejection_settings_to_current_and_future() -> None:
    upstreams = UpstreamSet(EJECTION)
    old = upstreams.get(origin(8001), health_path="/health", authorization=None)
    strict = EjectionSettings(failures=1, duration=2.0, max_duration=4.0)
    upstreams.reconfigure(strict)
    new = upstreams.get(origin(8002), health_path="/health", authorization=None)
    assert old.ejection is strict
    assert new.ejection is strict
    old.begin(T0)
    old.failed(T0, False)
    assert old.ejected_until == T0 + 2.0


def test_reconfigure_to_never_eject_stops_ejections() -> None:
    upstreams = UpstreamSet(EJECTION)
    up = upstreams.get(origin(8001), health_path="/health", authorization=None)
    upstreams.reconfigure(EjectionSettings(failures=0))
    for _ in range(10):
        up.begin(T0)
        up.failed(T0, False)
    assert not up.ejected


# -- requests begun before an ejection, and requests beside a trial ---------------------------


def test_a_request_begun_before_the_ejection_does_not_end_it() -> None:
    up = upstream()
    for _ in range(4):
        assert not up.begin(T0)
    for _ in range(3):
        up.failed(T0, False)
    assert up.ejected
    up.succeeded(False)  # the fourth, begun before the ejection, ends well a moment later
    assert up.ejected
    assert up.ejected_until == T0 + 5.0
    assert up.failures == 0  # it still resets the count of failures in a row
    assert not up.available(T0 + 1.0)


def test_a_request_begun_before_the_ejection_ending_well_during_a_trial_leaves_it() -> None:
    up = upstream()
    assert not up.begin(T0)  # begun before the ejection
    eject(up, T0)
    now = up.ejected_until
    trial = up.begin(now)
    assert trial
    up.succeeded(False)
    assert up.ejected
    assert up.trial
    assert not up.available(now)
    up.succeeded(trial)
    assert not up.ejected
    assert up.available(now)


def test_a_request_begun_after_the_ejection_time_beside_the_trial_is_no_trial() -> None:
    up = upstream()
    eject(up, T0)
    now = up.ejected_until
    assert up.begin(now)
    assert not up.begin(now)  # only one trial at a time
    assert not up.begin(now + 100.0)
    assert up.outstanding == 3


def test_an_abandoned_non_trial_request_does_not_end_the_trial() -> None:
    up = upstream()
    assert not up.begin(T0)  # begun before the ejection
    eject(up, T0)
    now = up.ejected_until
    trial = up.begin(now)
    assert trial
    up.abandoned(False)
    assert up.trial
    assert not up.available(now)
    assert not up.available(now + 100.0)
    assert not up.begin(now + 1.0)  # a second request after the ejection time is no trial
    assert up.ejected
    up.abandoned(trial)
    assert not up.trial
    assert up.available(now + 1.0)


def test_a_failed_non_trial_request_does_not_end_the_trial() -> None:
    up = upstream()
    assert not up.begin(T0)  # begun before the ejection
    eject(up, T0)
    now = up.ejected_until
    trial = up.begin(now)
    assert trial
    up.failed(now, False)
    assert up.trial
    assert up.ejected_until == now  # not extended: the ejection time is already over
    assert up.ejections == 1
    assert not up.available(now)
    assert not up.begin(now + 1.0)  # a second request after the ejection time is no trial
    up.failed(now + 1.0, False)
    assert up.trial
    assert not up.available(now + 1.0)
    up.succeeded(trial)
    assert not up.ejected
    assert up.available(now + 1.0)
    assert up.errors == 3 + 2


def test_a_non_trial_failure_while_ejected_does_not_extend_the_ejection() -> None:
    up = upstream()
    for _ in range(4):
        assert not up.begin(T0)
    eject(up, T0)
    until = up.ejected_until
    failures = up.failures
    for late in (1.0, 4.0, 4.99):
        up.failed(T0 + late, False)
    assert up.ejected_until == until
    assert up.failures == failures  # not counted towards another ejection
    assert (up.ejections, up.consecutive_ejections) == (1, 1)
    assert up.errors == 3 + 3
    assert up.available(until)
    up.failed(until, False)  # the last one ends when the trial is due, before it begins
    assert up.ejected_until == until
    assert up.available(until)
    assert up.begin(until)


def test_retry_after_never_sends_the_client_back_too_early(clock: Clock) -> None:
    only = upstream(8001)
    bal = balancer(only)
    eject(only, clock.now)
    clock.advance(0.6)  # 4.4 seconds left
    with pytest.raises(NoUpstreamError) as caught:
        bal.pick()
    assert retry_after(caught.value) >= 4.4
    assert retry_after(caught.value) == 5  # rounded up, not to the nearest second


@pytest.mark.parametrize("outcome", ["succeeded", "failed", "abandoned"])
def test_a_trial_that_outlives_its_ejection_decides_nothing(outcome: str) -> None:
    up = upstream()
    eject(up, T0)
    stale = up.begin(T0 + 5.0)  # trial of the first ejection
    assert stale
    up.check_failed(1)
    up.check_passed(1)  # health checks restored it meanwhile
    assert not up.ejected
    eject(up, T0 + 6.0)
    until = up.ejected_until
    current = up.begin(until)  # trial of the second ejection, still running
    assert current and current != stale
    if outcome == "succeeded":
        up.succeeded(stale)
    elif outcome == "failed":
        up.failed(until, stale)
    else:
        up.abandoned(stale)
    assert up.ejected_until == until  # the old trial neither restored nor extended it
    assert up.trial == current
    assert not up.available(until + 1.0)  # and the current trial still runs alone
    up.succeeded(current)
    assert not up.ejected
