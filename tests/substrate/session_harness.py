"""A synthetic agent session: 30 minutes compressed onto an injectable clock.

Phases (minutes of simulated time):

- 0-6   research burst: many deposits on one topic, frequent look-ups, attention to the
        best hits (the same few results come back often and gather attention);
- 6-16  conversation: two alternating topics, a few user preferences pinned with a
        protected floor, light attention;
- 16-22 context switch: a new topic; nothing earlier is touched;
- 22-28 recall: the research topic is queried again and its hits attended;
- 28-30 wind-down.

Every few minutes the agent pauses for longer than the idle window; the next operation
finds the handle idle and a sleep pass runs (the handle's own idle trigger, not an
operator call). Each pass is one consolidation cycle, reported as kept / pruned /
staged / consolidated.

Run ``python -m tests.substrate.session_harness`` to print the cycle table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

import numpy as np

from moneta import EntityState, Moneta, MonetaConfig
from tests.substrate.conftest import FakeClock

DIM = 64
HALF_LIFE = 300.0  # 5 simulated minutes: a 30-minute session spans six half-lives
PAUSE = 8.0  # longer than the 5 s idle window
CYCLE_EVERY = 240.0  # the agent pauses every 4 simulated minutes


@dataclass(frozen=True, slots=True)
class Cycle:
    number: int
    minute: float
    trigger: str
    attention_applied: int
    pruned: int
    staged: int
    consolidated: int
    hydrated: int
    kept_hot: int
    protected_hot: int


@dataclass(slots=True)
class Session:
    cycles: list[Cycle] = field(default_factory=list)
    deposits: dict[UUID, str] = field(default_factory=dict)  # id -> phase
    protected: list[UUID] = field(default_factory=list)
    recalled: set[UUID] = field(default_factory=set)
    final_hot: set[UUID] = field(default_factory=set)
    final_cold: set[UUID] = field(default_factory=set)
    pruned: set[UUID] = field(default_factory=set)

    def table(self) -> str:
        head = "cycle  minute  trigger  attn  pruned  staged  consolidated  hydrated  kept  pinned"
        rows = [
            f"{c.number:>5}  {c.minute:>6.1f}  {c.trigger:<7}  {c.attention_applied:>4}"
            f"  {c.pruned:>6}  {c.staged:>6}  {c.consolidated:>12}  {c.hydrated:>8}"
            f"  {c.kept_hot:>4}  {c.protected_hot:>6}"
            for c in self.cycles
        ]
        total = (
            f"deposits {len(self.deposits)}: kept hot {len(self.final_hot)},"
            f" consolidated {len(self.final_cold)}, pruned {len(self.pruned)}"
        )
        return "\n".join([head, *rows, total])


class _Agent:
    def __init__(self, m: Moneta, clock: FakeClock, session: Session, seed: int) -> None:
        self.m, self.clock, self.session = m, clock, session
        self.rng = np.random.default_rng(seed)
        self.topics = {name: self._unit(self.rng.standard_normal(DIM)) for name in "ABCDE"}
        self.start = clock()
        self.next_pause = self.start + CYCLE_EVERY
        self.passes_seen = 0

    @staticmethod
    def _unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v)

    def vector(self, topic: str, spread: float = 0.6) -> list[float]:
        noise = self.rng.standard_normal(DIM) * spread / np.sqrt(DIM)
        return self._unit(self.topics[topic] + noise).tolist()

    def tick(self, seconds: float) -> None:
        """Let simulated time pass; pause (go idle) whenever a cycle is due."""
        self.collect()
        self.clock.advance(seconds)
        if self.clock() >= self.next_pause:
            self.clock.advance(PAUSE)
            self.next_pause += CYCLE_EVERY
            self.m.stats()  # an operator read is not agent activity: no pass yet
            self.op_and_collect()

    def op_and_collect(self) -> None:
        """The next agent operation after a pause; it finds the handle idle."""
        self.m.get_consolidation_manifest()
        self.collect()

    def collect(self) -> None:
        stats = self.m.stats()
        if stats.sleep_passes == self.passes_seen:
            return
        assert stats.sleep_passes == self.passes_seen + 1, "a pass went unreported"
        self.passes_seen = stats.sleep_passes
        r = stats.last_sleep_pass
        assert r is not None
        protected_hot = stats.protected
        self.session.cycles.append(
            Cycle(
                number=len(self.session.cycles) + 1,
                minute=(r.at - self.start) / 60.0,
                trigger=r.trigger,
                attention_applied=r.attention_applied,
                pruned=r.pruned,
                staged=r.staged,
                consolidated=r.consolidated,
                hydrated=r.hydrated,
                kept_hot=stats.hot,
                protected_hot=protected_hot,
            )
        )

    def deposit(self, topic: str, phase: str, floor: float = 0.0) -> UUID:
        e = self.m.deposit(f"{phase}: note on topic {topic}", self.vector(topic), floor)
        self.session.deposits[e] = phase
        return e

    def look_up(self, topic: str, limit: int, weight: float) -> list[UUID]:
        hits = self.m.query(self.vector(topic, 0.3), limit=limit)
        ids = [h.entity_id for h in hits]
        if ids:
            self.m.signal_attention(dict.fromkeys(ids, weight))
        return ids


def run_session(seed: int = 7) -> Session:
    """Play the whole session on a fresh in-memory store and return what happened.

    Agent operations are 2-4 simulated seconds apart (inside the idle window), so
    passes run only at the pauses.
    """
    clock = FakeClock()
    session = Session()
    config = MonetaConfig.ephemeral(
        clock=clock, half_life_seconds=HALF_LIFE, watch_interval_seconds=3600.0
    )
    with Moneta(config) as m:
        agent = _Agent(m, clock, session, seed)
        # 0-6 min: research burst.
        for i in range(120):
            agent.deposit("A", "research")
            if i % 2:
                agent.look_up("A", 3, 0.15)
            agent.tick(3.0)
        # 6-16 min: conversation.
        for i in range(150):
            topic = "B" if i % 2 else "C"
            floor = 0.5 if i in (10, 60, 110) else 0.0
            e = agent.deposit(topic, "conversation", floor)
            if floor:
                session.protected.append(e)
            if i % 3 == 0:
                agent.look_up(topic, 2, 0.1)
            agent.tick(4.0)
        # 16-22 min: context switch.
        for i in range(90):
            agent.deposit("D", "switch")
            if i % 3 == 0:
                agent.look_up("D", 2, 0.1)
            agent.tick(4.0)
        # 22-28 min: recall the research topic.
        for _ in range(90):
            session.recalled.update(agent.look_up("A", 5, 0.2))
            agent.tick(4.0)
        # 28-30 min: wind-down, then a final pause.
        for _ in range(30):
            agent.deposit("E", "wind-down")
            agent.tick(4.0)
        clock.advance(PAUSE)
        agent.op_and_collect()
        everything = m.query([1.0] + [0.0] * (DIM - 1), limit=len(session.deposits))
        session.final_hot = {
            h.entity_id for h in everything if h.state is not EntityState.CONSOLIDATED
        }
        session.final_cold = {
            h.entity_id for h in everything if h.state is EntityState.CONSOLIDATED
        }
        session.pruned = (
            {UUID(a.entity_id) for a in m._parts.audit.entries() if a.action == "prune"}
            - session.final_hot
            - session.final_cold
        )
    return session


if __name__ == "__main__":
    print(run_session().table())
