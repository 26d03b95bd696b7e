"""Lua scripts of the Redis state store: every state change is one atomic script.

Each script takes one JSON argument (``ARGV[1]``). Task fields are stored as
JSON-encoded strings in a hash, so the scripts move them around verbatim and
never re-encode user data with Lua's cjson (which would turn ``[]`` into
``{}`` and round floats). Keys are built from the payload's prefix ``p``:
this targets a single Redis server (or a replica set), not Redis Cluster.

Every mutating script but CREATE takes an operation token ``tok``: a retry
of an operation whose reply was lost (a timeout while the server was paused)
finds its token and becomes a no-op instead of applying twice. A versioned
transition or a claim keeps it in the task's hash (``op``); the others in a
key of its own that expires (``first_time``). A retried
CREATE finds its own task id (or idempotency key) instead. ``watch`` (CREATE)
and WAIT_END count a waiter for the task's end (``ended`` below).
"""

from __future__ import annotations

from orchestra_cli.status import TRANSITIONS


def _allowed_moves() -> str:
    # The status machine stays one table (status.py); the script gets a copy as one
    # string constant, " from>to from>to … ", searched with string.find: a table
    # constructor would build nine tables on every call of every script (~6 us of
    # Redis CPU each, measured with INFO commandstats).
    moves = [f"{src.value}>{dst.value}" for src, dsts in TRANSITIONS.items() for dst in dsts]
    return "' " + " ".join(sorted(moves)) + " '"


PRELUDE = (
    """
local a = cjson.decode(ARGV[1])
local P = a.p
-- (one concatenation, no table: a script builds a dozen keys)
local function k(a1, a2, a3)
  if a3 then return P .. ':' .. a1 .. ':' .. a2 .. ':' .. a3 end
  if a2 then return P .. ':' .. a1 .. ':' .. a2 end
  return P .. ':' .. a1
end
local ALLOWED = """
    + _allowed_moves()
    + """

local function first_time(tok)
  if tok == nil or tok == '' then return true end
  return redis.call('SET', k('op', tok), '1', 'NX', 'EX', a.ttl) ~= false
end

local TERMINAL = {succeeded = true, failed = true, cancelled = true}

-- Waiting for a task's end (``wait_ended``): a waiter counts itself in the
-- task's ``waiting`` key, then blocks on BLPOP of its ``ended`` list; the
-- transition that ends the task pushes one item per waiter. A waiter never
-- wakes for the task's other events (the event stream would wake it for each).
local function ended(id, status, n)
  local key = k('ended', id)
  for _ = 1, n do redis.call('LPUSH', key, status) end
  redis.call('EXPIRE', key, 60)
  redis.call('DEL', k('waiting', id))
end

local function count_waiter(id)
  local key = k('waiting', id)
  redis.call('INCR', key)
  redis.call('EXPIRE', key, a.wttl)
end

-- Count a waiter in (``renew``: one already counted, unless its count expired);
-- returns the status (nil: no task). A task that has ended counts no one: the
-- caller sees the status and does not wait.
local function watch_end(id, renew)
  local cur = redis.call('HGET', k('t', id), 'status')
  if not cur then return nil end
  local status = cjson.decode(cur)
  if TERMINAL[status] then return status end
  if not (renew and redis.call('EXPIRE', k('waiting', id), a.wttl) == 1) then
    count_waiter(id)
  end
  return status
end

-- A tree's own events: a stream (``events:<root>``) once the tree has more than a
-- few or someone follows it; until then a string of lines (``evlog:<root>``, one
-- APPEND each) — most trees are one task with four events, and a stream of its own
-- costs Redis ~4.8 KB (a listpack node preallocated at 4 KB) and two XADDs' time.
-- A line: seq TAB task TAB type TAB time TAB head TAB data (JSON, no raw tabs or
-- newlines). Moving the lines into the stream (to_stream) is one atomic step; readers
-- take both and merge them by seq, so a read that races a move misses nothing.
local EVLOG_BYTES = 2048

local function to_stream(root_id)
  local lkey = k('evlog', root_id)
  local log = redis.call('GET', lkey)
  if not log then return end
  local skey = k('events', root_id)
  -- Lines and a stream never coexist but after a snapshot taken mid-move (it DUMPs
  -- key by key): then the stream's events stay, and only later lines join them.
  local top = 0
  local last = redis.call('XREVRANGE', skey, '+', '-', 'COUNT', 1)[1]
  if last then top = tonumber(string.match(last[1], '^(%d+)')) end
  for seq, task, etype, time, head, data in
      string.gmatch(log, '(%d+)\\t([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t([^\\n]*)\\n') do
    if tonumber(seq) > top then
      redis.call('XADD', skey, 'MAXLEN', '~', a.max, seq .. '-0', 'seq', seq, 'task', task,
                 'root', root_id, 'type', etype, 'time', time, 'head', head, 'data', data)
    end
  end
  redis.call('DEL', lkey)
end

local function add_event(task_id, root_id, etype, time, head, data)
  local seq = redis.call('INCR', k('seq'))
  local id = seq .. '-0'
  time = string.format('%.17g', time)  -- as a stream writes a number: the same in a line
  local fields = {'seq', seq, 'task', task_id, 'root', root_id, 'type', etype,
                  'time', time, 'head', head, 'data', data}
  redis.call('XADD', k('events'), 'MAXLEN', '~', a.max, id, unpack(fields))
  local skey = k('events', root_id)
  if redis.call('EXISTS', skey, k('follow', root_id)) == 0 then
    local line = seq .. '\\t' .. task_id .. '\\t' .. etype .. '\\t' .. time .. '\\t' .. head
      .. '\\t' .. data .. '\\n'
    if redis.call('APPEND', k('evlog', root_id), line) <= EVLOG_BYTES then return seq end
    to_stream(root_id)  -- this event with the others
    return seq
  end
  -- (FOLLOW moves the lines before it marks the tree; lines a restored mid-move snapshot
  -- left beside the stream stay there, merged by readers, until FOLLOW moves them)
  redis.call('XADD', skey, 'MAXLEN', '~', a.max, id, unpack(fields))
  return seq
end

-- A transition event's head (attempt and agent as stored: JSON); open, for an error.
local function event_head(from, to, attempt, agent)
  return '{"from":"' .. from .. '","to":"' .. to .. '","attempt":' .. attempt
    .. ',"agent":' .. agent
end

local function create_one(t, time)
  local key = k('t', t.id)
  if redis.call('EXISTS', key) == 1 then return false end
  redis.call('HSET', key, unpack(t.fields))
  redis.call('ZADD', k('ids'), 0, t.id)
  redis.call('ZADD', k('tails'), 0, string.sub(t.id, 29) .. ':' .. t.id)  -- short ids
  redis.call('ZADD', k('by', 'created'), t.created, t.id)
  redis.call('ZADD', k('by', 'status', t.status), t.created, t.id)
  if t.agent ~= '' then redis.call('ZADD', k('by', 'agent', t.agent), t.created, t.id) end
  if t.parent == '' then
    redis.call('ZADD', k('by', 'roots'), t.created, t.id)
  else
    redis.call('ZADD', k('children', t.parent), t.created, t.id)
  end
  redis.call('ZADD', k('tree', t.root), t.created, t.id)
  add_event(t.id, t.root, 'created', time, '{}', t.edata)
  -- routed at creation: stored as queued, and its pending → queued event with it
  if t.queued then
    local head = event_head('pending', 'queued', t.queued.attempt, t.queued.agent) .. '}'
    add_event(t.id, t.root, 'queued', time, head, t.queued.data)
  end
  return true
end

-- Usage holds only numbers, so decoding and re-encoding it with cjson is safe.
local function add_usage(usage, delta)
  local u = cjson.decode(usage)
  for name, v in pairs(cjson.decode(delta)) do u[name] = (u[name] or 0) + v end
  return cjson.encode(u)
end

-- Check and apply one transition of task ``tr.id``; ``tok`` is the operation's token.
-- A versioned transition, a claim and a ``guarded`` one (the caller checked the
-- status) keep it in the hash ('op'): a retry whose reply was lost finds it there
-- ({'dup'}), and a retry after someone else's change fails the version (or
-- status) check instead of applying twice. Others keep it as a key of its own
-- (``first_time``). ``claim``: only from queued, attempts + 1; any other status
-- returns {'current', hash}.
-- Returns {'ok', hash} ({'ok', usage} with ``tr.bare``: the caller knows the rest)
-- | {'rejected', hash} | {'current', hash} | {'missing'} | {'dup'}. One read, one write.
local function transition(tr, time, tok, claim, guarded)
  local key = k('t', tr.id)
  local cur = redis.call('HMGET', key, 'status', 'version', 'agent', 'attempts', 'error',
                         'created_at', 'root_id', 'usage', 'op')
  if not cur[1] then return {'missing'} end
  local op = nil
  if tok and tok ~= '' then
    if claim or guarded or tr.ev ~= '' then
      op = '"' .. tok .. '"'
      if cur[9] == op then return {'dup'} end
    elseif not first_time(tok) then
      return {'dup'}
    end
  end
  local status = cjson.decode(cur[1])
  if claim and status ~= 'queued' then return {'current', redis.call('HGETALL', key)} end
  local ok = true
  if tr.ev ~= '' and tonumber(tr.ev) ~= tonumber(cur[2]) then ok = false end
  if ok and tr.check_es == '1' then
    local found = false
    for _, s in ipairs(tr.es) do if s == status then found = true end end
    ok = found
  end
  if ok and not string.find(ALLOWED, ' ' .. status .. '>' .. tr.to .. ' ', 1, true) then
    ok = false
  end
  if not ok then return {'rejected', redis.call('HGETALL', key)} end
  local fields = tr.fields
  if claim then
    table.insert(fields, 'attempts')
    table.insert(fields, tostring(tonumber(cur[4]) + 1))
  end
  -- what the event head and the indexes need, after this change
  local now = {agent = cur[3], attempts = cur[4], error = cur[5]}
  for i = 1, #fields, 2 do
    if now[fields[i]] ~= nil then now[fields[i]] = fields[i + 1] end
  end
  table.insert(fields, 'version')
  table.insert(fields, tostring(tonumber(cur[2]) + 1))
  local usage = cur[8]
  if tr.usage then
    usage = add_usage(usage, tr.usage)
    table.insert(fields, 'usage')
    table.insert(fields, usage)
  end
  if op then
    table.insert(fields, 'op')
    table.insert(fields, op)
  end
  redis.call('HSET', key, unpack(fields))
  if status ~= tr.to then
    redis.call('ZREM', k('by', 'status', status), tr.id)
    redis.call('ZADD', k('by', 'status', tr.to), cur[6], tr.id)
  end
  local old_agent = cjson.decode(cur[3])
  local new_agent = cjson.decode(now.agent)
  if old_agent ~= new_agent then
    if old_agent ~= cjson.null then redis.call('ZREM', k('by', 'agent', old_agent), tr.id) end
    if new_agent ~= cjson.null then
      redis.call('ZADD', k('by', 'agent', new_agent), cur[6], tr.id)
    end
  end
  local head = event_head(status, tr.to, now.attempts, now.agent)
  if TERMINAL[tr.to] and now.error ~= 'null' then head = head .. ',"error":' .. now.error end
  add_event(tr.id, cjson.decode(cur[7]), tr.to, time, head .. '}', tr.edata)
  if TERMINAL[tr.to] then
    local waiting = redis.call('GET', k('waiting', tr.id))
    if waiting then ended(tr.id, tr.to, tonumber(waiting)) end
  elseif TERMINAL[status] then  -- reopened (retry): what it pushed when it ended is stale
    redis.call('DEL', k('ended', tr.id))
  end
  -- bare: the caller knows the task but not its usage
  if tr.bare then return {'ok', usage} end
  return {'ok', redis.call('HGETALL', key)}
end
"""
)

# No operation token: a retried create finds its own task (or its key) and says so.
CREATE = (
    PRELUDE
    + """
local t = a.task
if t.idem ~= '' then
  local existing = redis.call('GET', k('idem', t.idem))
  if existing then
    if a.watch then watch_end(existing, false) end
    return {'existing', existing}
  end
  redis.call('SET', k('idem', t.idem), t.id)
end
if not create_one(t, a.time) then
  if a.watch then watch_end(t.id, true) end  -- a retry: counted already, if it got through
  return {'existing', t.id}
end
if a.watch then count_waiter(t.id) end  -- new: it has not ended
return {'created', t.id}
"""
)

SUBTASKS = (
    PRELUDE
    + """
local cur = redis.call('HMGET', k('t', a.tr.id), 'status', 'op')
if not cur[1] then return {'missing'} end
if cur[2] == '"' .. a.tok .. '"' then return {'dup'} end  -- see transition()
if cjson.decode(cur[1]) ~= 'pending' then
  return {'rejected', redis.call('HGETALL', k('t', a.tr.id))}
end
for _, child in ipairs(a.children) do create_one(child, a.time) end
return transition(a.tr, a.time, a.tok, false, true)
"""
)

TRANSITION = (
    PRELUDE
    + """
return transition(a.tr, a.time, a.tok)
"""
)

# The agent's claim: read the task and, if it is queued, move it to running
# (attempts + 1) in the same round trip; otherwise return it unchanged.
CLAIM = (
    PRELUDE
    + """
return transition(a.tr, a.time, a.tok, true)
"""
)

# A reader is about to block on the tree's stream: its events go there from now on
# (the lines already logged first; ``follow:<root>`` says so for a tree with none
# yet). Returns 1 once the stream exists, 0 while the tree has no events at all.
FOLLOW = (
    PRELUDE
    + """
to_stream(a.root)
if redis.call('EXISTS', k('events', a.root)) == 1 then return 1 end
redis.call('SET', k('follow', a.root), '1', 'EX', a.fttl)
return 0
"""
)

EVENT = (
    PRELUDE
    + """
if not first_time(a.tok) then return 0 end
return add_event(a.id, a.root, a.type, a.time, '{}', a.data)
"""
)

ADD_USAGE = (
    PRELUDE
    + """
if not first_time(a.tok) then return 1 end
local key = k('t', a.id)
local usage = redis.call('HGET', key, 'usage')
if not usage then return 0 end
redis.call('HSET', key, 'usage', add_usage(usage, a.delta))
return 1
"""
)

WAIT_END = (
    PRELUDE
    + """
return watch_end(a.id, a.renew) or 'missing'
"""
)

SAVE_AGENT = (
    PRELUDE
    + """
local key = k('agent', a.name)
local stop = a.fresh and '0' or (redis.call('HGET', key, 'stop') or '0')
local old = redis.call('HGET', key, 'caps')
if old then
  for _, cap in ipairs(cjson.decode(old)) do redis.call('SREM', k('cap', cap), a.name) end
end
redis.call('HSET', key, 'data', a.data, 'stop', stop, 'caps', a.caps, 'hb', a.hb)
redis.call('ZADD', k('agents'), a.hb, a.name)
for _, cap in ipairs(cjson.decode(a.caps)) do redis.call('SADD', k('cap', cap), a.name) end
return stop
"""
)

STOP_AGENT = (
    PRELUDE
    + """
local key = k('agent', a.name)
if redis.call('EXISTS', key) == 0 then return 0 end
redis.call('HSET', key, 'stop', '1')
return 1
"""
)

DELETE_AGENT = (
    PRELUDE
    + """
local key = k('agent', a.name)
local old = redis.call('HGET', key, 'caps')
if old then
  for _, cap in ipairs(cjson.decode(old)) do redis.call('SREM', k('cap', cap), a.name) end
end
redis.call('DEL', key)
redis.call('ZREM', k('agents'), a.name)
return 1
"""
)

# The budget ledger (state/ledger.py): ``budget:<root>`` holds the tree's spend
# (tokens, usd), ``holds:<root>`` each call in flight's worst case as
# "tokens usd expires". Expired holds (their process died) are dropped first;
# the arithmetic in RESERVE is ledger.grant's.
LEDGER = """
local function ledger_keys(root) return k('budget', root), k('holds', root) end
local function fmt(x) return string.format('%.17g', x) end
"""

RESERVE = (
    PRELUDE
    + LEDGER
    + """
local spent_key, holds_key = ledger_keys(a.root)
local now = tonumber(redis.call('TIME')[1])
local mine = redis.call('HGET', holds_key, a.hold)
if mine then  -- a retry of this very reservation (its reply was lost): the same grant
  local t = tonumber(string.match(mine, '(%S+)'))
  return {0, '0', 0, '0', t - a.input}
end
local held_t, held_u = 0, 0
local holds = redis.call('HGETALL', holds_key)
for i = 1, #holds, 2 do
  local t, u, exp = string.match(holds[i + 1], '(%S+) (%S+) (%S+)')
  if tonumber(exp) < now then
    -- its call outlived its hold: billed, most likely, by a process that died
    redis.call('HINCRBY', spent_key, 'tokens', tonumber(t))
    redis.call('HINCRBYFLOAT', spent_key, 'usd', u)
    redis.call('HDEL', holds_key, holds[i])
  else
    held_t, held_u = held_t + tonumber(t), held_u + tonumber(u)
  end
end
local spent_t = tonumber(redis.call('HGET', spent_key, 'tokens') or '0')
local spent_u = tonumber(redis.call('HGET', spent_key, 'usd') or '0')
local out = a.max_out
if a.limit_tokens ~= cjson.null then
  out = math.min(out, a.limit_tokens - spent_t - held_t - a.input)
end
if a.limit_usd ~= cjson.null then
  local left = a.limit_usd - spent_u - held_u - a.input * a.in_price
  if left < 0 then out = 0
  elseif a.out_price > 0 then out = math.min(out, math.floor(left / a.out_price + 1e-9)) end
end
if out < 0 then out = 0 end
if out > 0 then
  local usd = a.input * a.in_price + out * a.out_price
  local entry = (a.input + out) .. ' ' .. fmt(usd) .. ' ' .. (now + a.hold_ttl)
  redis.call('HSET', holds_key, a.hold, entry)
  redis.call('EXPIRE', holds_key, a.keep)
end
return {spent_t, fmt(spent_u), held_t, fmt(held_u), out}
"""
)

SETTLE = (
    PRELUDE
    + LEDGER
    + """
if not first_time(a.tok) then return 1 end
local spent_key, holds_key = ledger_keys(a.root)
redis.call('HDEL', holds_key, a.hold)
redis.call('HINCRBY', spent_key, 'tokens', a.tokens)
redis.call('HINCRBYFLOAT', spent_key, 'usd', fmt(a.usd))
redis.call('EXPIRE', spent_key, a.keep)
return 1
"""
)

# The step log: ``steps:<task>`` maps each step's number to its JSON; a number is
# written once (HSETNX), so an agent that lost the task cannot overwrite a step.
RECORD_STEP = (
    PRELUDE
    + """
local usage = a.delta and redis.call('HGET', k('t', a.id), 'usage')
if a.delta and not usage then return -1 end  -- a charge for a task that is not there
if redis.call('HSETNX', k('steps', a.id), a.n, a.data) == 0 then
  -- a retry of this very write (its reply was lost) finds its own step: done (its
  -- usage was added with it); whether the root changed meanwhile is not known: 2
  if redis.call('HGET', k('steps', a.id), a.n) ~= a.data then return 0 end
  return a.seen and 2 or 1
end
if a.delta then  -- the model turn's charge, with its step
  redis.call('HSET', k('t', a.id), 'usage', add_usage(usage, a.delta))
end
add_event(a.id, a.root, 'step', a.time, '{}', a.event)
if a.seen then  -- has anyone else written on the root since the caller looked?
  local own = (a.root == a.id) and 1 or 0
  if redis.call('HLEN', k('steps', a.root)) ~= a.seen + own then return 2 end
end
return 1
"""
)

# The step count and the steps numbered above ``after`` (read-only): {count, n, data, …}.
# Only the numbers of the older steps are read (a transcript's tool output stays put).
STEPS_AFTER = (
    PRELUDE
    + """
local key = k('steps', a.id)
local numbers = redis.call('HKEYS', key)
local new = {}
for _, n in ipairs(numbers) do
  if tonumber(n) > a.after then new[#new + 1] = n end
end
local out = {#numbers}
for first = 1, #new, 500 do  -- (unpack's stack is bounded)
  local last = math.min(first + 499, #new)
  local values = redis.call('HMGET', key, unpack(new, first, last))
  for i = first, last do
    out[#out + 1] = new[i]
    out[#out + 1] = values[i - first + 1]
  end
end
return out
"""
)
