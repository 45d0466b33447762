"""The Redis backplane's key names and Lua scripts.

Lua keeps each step atomic: a room's ids, its log and the bus message carrying them are one
step, so every node sees one order. The scripts only add the ``M``/``D`` headers to items
the cluster layer encoded; they never read a message.

Layout in Redis (``P`` is the prefix, ``wsroom`` by default):

* ``P:room:{room}:meta``: hash ``epoch`` (names the current run of ids), ``seq`` (the
  last message id), ``run`` and ``repl`` (the Redis process and replication history that
  numbered them: ``run_id`` and ``master_replid``) and ``bytes`` (of history).
* ``P:room:{room}:history``: list of ``<id>\\n<item>``, capped at the room's history size.
* ``P:room:{room}:members``: hash user -> number of nodes where the user is in the room.
* ``P:idle`` (sorted set room -> last use), ``P:idle:bytes`` (hash room -> history bytes)
  and ``P:idle:total``: the logs of rooms no node subscribes to, bounded by
  :attr:`Limits.max_idle_rooms` and :attr:`Limits.max_idle_history_bytes`; the three
  expire with the longest-lived of those logs.
* ``P:node:<node>:presence``: set of ``room\\nuser`` entries a node holds, so that any
  node can remove a dead node's presence.
* ``P:nodes``: sorted set node -> last heartbeat (ms). A node silent for ``node_ttl``
  seconds is reaped by the others. ``P:direct``: the direct message counter.
* channels ``P:room:<room>``, ``P:user:<user>`` and ``P:all`` carry the bus.

Why a counter and a capped list rather than a stream: a room needs dense integer ids
that restart with a new epoch when Redis loses the room, assigned atomically with the
write to the history and with the publish, so that every node sees one order. One Lua
script does all three; a stream's time-based ids would need a second mapping and its
``MAXLEN ~`` trimming is approximate.
"""

from __future__ import annotations

__all__ = ["APPEND", "DIRECT", "EMPTIED", "JOIN", "LEAVE", "READ", "REAP", "Keys"]


class Keys:
    """Every key and channel of one prefix (room names never hold braces, so ``{room}``
    is a safe hash tag)."""

    __slots__ = ("direct", "nodes", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes = f"{prefix}:nodes"
        """Sorted set: node id -> its last heartbeat (ms)."""
        self.direct = f"{prefix}:direct"
        """Counter of direct message ids."""

    def channel(self, name: str) -> str:
        """The Redis channel of a wsroom channel (``room:<r>``, ``user:<u>``, ``all``)."""
        return f"{self.prefix}:{name}"

    def wsroom_channel(self, channel: str) -> str:
        """The wsroom channel of a Redis channel."""
        return channel.removeprefix(f"{self.prefix}:")

    def room(self, room: str, what: str) -> str:
        """A room's ``meta``, ``history`` or ``members`` key."""
        return f"{self.prefix}:room:{{{room}}}:{what}"

    def presence(self, node_id: str) -> str:
        """The set of ``room\\nuser`` entries a node holds."""
        return f"{self.prefix}:node:{node_id}:presence"


# Shared functions. Keys of other rooms are built from the prefix, as the eviction of idle
# logs and the reaping of a dead node touch rooms a script cannot name in advance.
_LIBRARY = """
local function room_key(prefix, room, what)
  return prefix .. ':room:{' .. room .. '}:' .. what
end

-- A Redis restarted from an older snapshot, or a replica promoted before it received the
-- last writes, would hand out ids already used. So an epoch is kept only by the server
-- process that numbered it (run_id) in the same history of writes (master_replid, new
-- when a replica becomes primary, even the same process promoted again after a
-- partition). Meta written before 'repl' existed adopts the replid once.
local function current_epoch(meta, history, candidate)
  local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  local repl = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
  local state = redis.call('HMGET', meta, 'epoch', 'run', 'repl')
  if state[1] and state[2] == run then
    if state[3] == repl then
      return state[1]
    elseif not state[3] then
      redis.call('HSET', meta, 'repl', repl)
      return state[1]
    end
  end
  redis.call('HSET', meta, 'epoch', candidate, 'seq', 0, 'run', run, 'repl', repl, 'bytes', 0)
  redis.call('DEL', history)
  return candidate
end

local function subscribers(prefix, room)
  return redis.call('PUBSUB', 'NUMSUB', prefix .. ':room:' .. room)[2]
end

-- Idle logs (no node subscribes to their room): P:idle orders them by last use,
-- P:idle:bytes holds the history bytes counted for each, P:idle:total their sum.
local function idle_forget(prefix, room)
  local idle = prefix .. ':idle'
  if redis.call('ZREM', idle, room) == 1 then
    local size = redis.call('HGET', idle .. ':bytes', room) or 0
    redis.call('HDEL', idle .. ':bytes', room)
    redis.call('DECRBY', idle .. ':total', size)
  end
end

-- The bookkeeping lives as long as the longest-lived log it counts (ttl: the log's, in
-- ms; negative: none), so that it goes with them once every idle log expired. Logs that
-- expired before are forgotten a few at a time, oldest first, as others become idle.
local function idle_touch(prefix, room, size, ttl)
  local idle = prefix .. ':idle'
  for _, old in ipairs(redis.call('ZRANGE', idle, 0, 7)) do
    if redis.call('EXISTS', room_key(prefix, old, 'meta')) == 0 then
      idle_forget(prefix, old)
    end
  end
  -- The three keys share one expiry, the latest asked for (-1: none).
  local keys = {idle, idle .. ':bytes', idle .. ':total'}
  local keep = ttl
  for _, key in ipairs(keys) do
    local left = redis.call('PTTL', key)  -- -2: no key, -1: no expiry
    if left == -1 then
      keep = -1
    elseif keep >= 0 and left > keep then
      keep = left
    end
  end
  local now = redis.call('TIME')
  redis.call('ZADD', idle, now[1] * 1000000 + now[2], room)
  local before = tonumber(redis.call('HGET', idle .. ':bytes', room) or 0)
  redis.call('HSET', idle .. ':bytes', room, size)
  redis.call('INCRBY', idle .. ':total', size - before)
  for _, key in ipairs(keys) do
    if keep < 0 then
      redis.call('PERSIST', key)
    else
      redis.call('PEXPIRE', key, keep)
    end
  end
end

-- Drop the least recently used idle logs beyond the bounds. At most 32 per call keeps
-- every call short; each call adds at most one idle log, so the count bound always
-- holds and the byte bound is restored within a few calls.
local function evict(prefix, max_rooms, max_bytes)
  local idle = prefix .. ':idle'
  for _ = 1, 32 do
    if redis.call('ZCARD', idle) <= tonumber(max_rooms)
      and tonumber(redis.call('GET', idle .. ':total') or 0) <= tonumber(max_bytes) then
      return
    end
    local oldest = redis.call('ZRANGE', idle, 0, 0)[1]
    idle_forget(prefix, oldest)
    if subscribers(prefix, oldest) == 0 then
      redis.call('DEL', room_key(prefix, oldest, 'meta'), room_key(prefix, oldest, 'history'))
    end
  end
end
"""

# A run of messages to one room: ids, history (entries ``<id>\\n<item>``, with their byte
# count in meta) and one bus message for them all. A publish nobody received makes the
# log idle. KEYS: meta, history. ARGV: prefix, room, candidate epoch, history size,
# history TTL (ms), max idle rooms, max idle bytes, then the items.
APPEND = (
    _LIBRARY
    + """
local prefix, room = ARGV[1], ARGV[2]
local epoch = current_epoch(KEYS[1], KEYS[2], ARGV[3])
local count = #ARGV - 7
local last = redis.call('HINCRBY', KEYS[1], 'seq', count)
local first = last - count + 1
local size = tonumber(ARGV[4])
local bytes = tonumber(redis.call('HGET', KEYS[1], 'bytes') or 0)
if size > 0 then
  local entries = {}
  for k = 1, count do
    entries[k] = (first + k - 1) .. '\\n' .. ARGV[7 + k]
    bytes = bytes + #entries[k]
  end
  local length = redis.call('RPUSH', KEYS[2], unpack(entries))
  if length > size then
    for _, old in ipairs(redis.call('LRANGE', KEYS[2], 0, length - size - 1)) do
      bytes = bytes - #old
    end
    redis.call('LTRIM', KEYS[2], -size, -1)
  end
else
  redis.call('DEL', KEYS[2])
  bytes = 0
end
redis.call('HSET', KEYS[1], 'bytes', bytes)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local parts = {'M\\n', epoch, '\\n', first, '\\n'}
for k = 1, count do
  parts[k + 5] = ARGV[7 + k]
end
if redis.call('PUBLISH', prefix .. ':room:' .. room, table.concat(parts)) == 0 then
  idle_touch(prefix, room, bytes, tonumber(ARGV[5]))
  evict(prefix, ARGV[6], ARGV[7])
else
  idle_forget(prefix, room)
end
return {first, epoch}
"""
)

# A room's log; a reader subscribes to the room, so the log is not idle.
# KEYS: meta, history. ARGV: prefix, room, candidate epoch, TTL (ms; 0: unchanged).
READ = (
    _LIBRARY
    + """
local epoch = current_epoch(KEYS[1], KEYS[2], ARGV[3])
local seq = redis.call('HGET', KEYS[1], 'seq')
if ARGV[4] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
idle_forget(ARGV[1], ARGV[2])
return {epoch, seq, redis.call('LRANGE', KEYS[2], 0, -1)}
"""
)

# A node stopped subscribing to a room (run once Redis confirmed it). When no node
# subscribes any more: a log without messages goes, one with messages becomes idle.
# KEYS: meta, history. ARGV: prefix, room, max idle rooms, max idle bytes.
EMPTIED = (
    _LIBRARY
    + """
if subscribers(ARGV[1], ARGV[2]) > 0 then return 0 end
local seq = redis.call('HGET', KEYS[1], 'seq')
if not seq then return 0 end
if tonumber(seq) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
local ttl = redis.call('PTTL', KEYS[1])
idle_touch(ARGV[1], ARGV[2], tonumber(redis.call('HGET', KEYS[1], 'bytes') or 0), ttl)
evict(ARGV[1], ARGV[3], ARGV[4])
return 2
"""
)

JOIN = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('SADD', KEYS[2], ARGV[2])
return n
"""

LEAVE = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
redis.call('SREM', KEYS[2], ARGV[2])
return n
"""

DIRECT = """
local id = redis.call('INCR', KEYS[1])
local receivers = redis.call('PUBLISH', ARGV[1], 'D\\n' .. id .. '\\n' .. ARGV[2])
if receivers == 0 then return false end
return id
"""

# Remove a dead node's presence; returns the room/user entries nobody holds any more.
# Atomic, so two nodes reaping the same node cannot both report the same departures.
REAP = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[3]) then return {} end
local set = ARGV[2] .. ':node:' .. ARGV[1] .. ':presence'
local gone = {}
for _, entry in ipairs(redis.call('SMEMBERS', set)) do
  local cut = string.find(entry, '\\n', 1, true)
  local room = string.sub(entry, 1, cut - 1)
  local user = string.sub(entry, cut + 1)
  local key = ARGV[2] .. ':room:{' .. room .. '}:members'
  local n = redis.call('HINCRBY', key, user, -1)
  if n <= 0 then
    redis.call('HDEL', key, user)
    table.insert(gone, entry)
  end
end
redis.call('DEL', set)
redis.call('ZREM', KEYS[1], ARGV[1])
return gone
"""
