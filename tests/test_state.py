"""The registry keeps its maps consistent whatever the order of joins, leaves and drops."""

from __future__ import annotations

from typing import Any, cast

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from wsroom._state import Registry


class FakeRoom:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeConnection:
    def __init__(self, index: int, user: str | None) -> None:
        self.id = f"c{index}"
        self.user = user


ROOMS = ("r1", "r2", "r3")
USERS = ("ann", "bob", None)


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.registry = Registry()
        self.conns: list[FakeConnection] = []
        self.count = 0

    @rule(user=st.sampled_from(USERS))
    def connect(self, user: str | None) -> None:
        self.count += 1
        conn = FakeConnection(self.count, user)
        self.conns.append(conn)
        self.registry.add_connection(cast(Any, conn))

    @rule(index=st.integers(0, 20), room=st.sampled_from(ROOMS))
    def join(self, index: int, room: str) -> None:
        if not self.conns:
            return
        conn = self.conns[index % len(self.conns)]
        if self.registry.is_member(cast(Any, conn), room):
            return
        users_before = (
            self.registry.rooms[room].users.get(conn.user or "", 0)
            if room in self.registry.rooms
            else 0
        )
        state = self.registry.reserve(room, cast(Any, FakeRoom))
        first = self.registry.join(cast(Any, conn), state)
        self.registry.release(state)
        assert first == (conn.user is not None and users_before == 0)

    @rule(index=st.integers(0, 20), room=st.sampled_from(ROOMS))
    def leave(self, index: int, room: str) -> None:
        if not self.conns:
            return
        conn = self.conns[index % len(self.conns)]
        was_in = self.registry.is_member(cast(Any, conn), room)
        result = self.registry.leave(cast(Any, conn), room)
        assert (result is not None) == was_in

    @rule(index=st.integers(0, 20))
    def disconnect(self, index: int) -> None:
        if not self.conns:
            return
        conn = self.conns.pop(index % len(self.conns))
        left = self.registry.remove_connection(cast(Any, conn))
        assert len(left) == len([r for r in ROOMS if r in {s.room.name for s, _ in left}])
        assert self.registry.rooms_of(cast(Any, conn)) == frozenset()
        assert cast(Any, conn) not in self.registry.memberships

    @rule(room=st.sampled_from(ROOMS))
    def refused_join(self, room: str) -> None:
        # A join that was refused after reserving leaves no trace.
        existed = room in self.registry.rooms
        state = self.registry.reserve(room, cast(Any, FakeRoom))
        self.registry.release(state)
        assert (room in self.registry.rooms) == existed

    @invariant()
    def maps_agree(self) -> None:
        registry = self.registry
        assert set(registry.connections) == {c.id for c in self.conns}
        for name, state in registry.rooms.items():
            assert state.connections, f"empty room {name} kept"
            assert state.pending == 0
            members = list(state.connections)
            expected: dict[str, int] = {}
            for conn in members:
                assert self.registry.is_member(conn, name)
                if conn.user is not None:
                    expected[conn.user] = expected.get(conn.user, 0) + 1
            assert state.users == expected
            assert state.anonymous == sum(1 for c in members if c.user is None)
            assert state.member_count == len(expected) + state.anonymous
        for fake in self.conns:
            for name in self.registry.rooms_of(cast(Any, fake)):
                assert cast(Any, fake) in registry.rooms[name].connections
        users = {c.user for c in self.conns if c.user is not None}
        assert set(registry.users) == users


TestRegistry = RegistryMachine.TestCase
TestRegistry.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
