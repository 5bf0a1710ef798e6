"""Must hold 10: a compressed 30-minute agent session (tests/substrate/session_harness.py)
with idle-triggered consolidation cycles; selection is neither all nor nothing."""

from __future__ import annotations

from tests.substrate.session_harness import Session, run_session


def _by_phase(session: Session, ids: set) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in ids:
        phase = session.deposits[e]
        counts[phase] = counts.get(phase, 0) + 1
    return counts


def test_synthetic_session_keeps_some_prunes_some_consolidates_some() -> None:
    session = run_session(seed=7)
    print("\n" + session.table())
    cycles = session.cycles
    deposits = set(session.deposits)
    assert len(deposits) == 120 + 150 + 90 + 30
    # One idle-triggered pass per pause: minutes 4, 8, ... 28, plus the final pause.
    assert len(cycles) == 8
    assert {c.trigger for c in cycles} == {"idle"}
    assert [round(c.minute) for c in cycles] == [4, 8, 12, 16, 20, 24, 28, 31]

    pruned = sum(c.pruned for c in cycles)
    consolidated = sum(c.consolidated for c in cycles)
    # Neither "prune everything" nor "prune nothing", overall and within a cycle.
    assert 0 < pruned < len(deposits)
    assert consolidated > 0
    assert any(c.pruned > 0 and c.kept_hot > 0 for c in cycles)
    assert all(c.kept_hot > 0 for c in cycles)
    # Early cycles (everything fresh) prune nothing; later ones do.
    assert cycles[0].pruned == 0 and cycles[-1].pruned > 0

    # Every deposit is accounted for exactly once.
    hot, cold, gone = session.final_hot, session.final_cold, session.pruned
    assert hot | cold | gone == deposits
    assert not (hot & cold) and not (hot & gone) and not (cold & gone)
    assert len(gone) <= pruned  # a hydrated copy pruned again keeps its cold record

    # What happened to each phase.
    assert set(session.protected) <= hot and len(session.protected) == 3
    assert all(c.protected_hot == 3 for c in cycles[3:])
    assert _by_phase(session, hot).get("wind-down") == 30  # two minutes old: all kept
    research = _by_phase(session, gone).get("research", 0)
    assert 0 < research < 120  # unattended research faded...
    assert _by_phase(session, cold).get("research", 0) > 0  # ...attended research consolidated
    assert _by_phase(session, gone).get("conversation", 0) > 0
    assert sum(c.hydrated for c in cycles) > 0  # recall pulled consolidated memories back
    assert session.recalled & (hot | cold)


def test_session_is_reproducible_on_the_injected_clock() -> None:
    assert run_session(seed=7).table() == run_session(seed=7).table()
    assert run_session(seed=8).table() != run_session(seed=7).table()
