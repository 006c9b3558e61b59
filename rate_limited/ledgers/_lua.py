"""The Redis ledger's Lua script: its operations, run in order, atomically, per call.

Redis runs a script to the end before any other command, so "check every resource, then
reserve on all of them" cannot interleave with another process's admission. A call of
``SCRIPT`` runs a list of operations (a client's queued settlements, then its admission),
each written below as a section over its own ``ARGV``. The script reads the time with
``TIME`` (Redis's clock, the same for every client whatever their own clocks say), and
numbers cross the boundary as strings formatted with ``%.17g`` (Lua's ``tostring`` keeps
14 digits, too few for epoch seconds with microseconds; and Redis
truncates numbers a script returns to integers).

Keys, under one prefix ``P`` (``rate_limited:ledger:{<name>}:``, the braces keep every key
of a ledger in one cluster hash slot):

* ``P m:<resource>:<partition>`` a hash per meter: ``k`` kind (``bucket``/``window``),
  ``q`` quota, ``w`` window seconds, ``d`` refill delay, ``lv`` level (bucket) or usage
  (window), ``s`` when the level was last drained, ``r`` reserved, ``c`` corrected.
* ``P l:<resource>:<partition>`` a window meter's log: a sorted set of ``<seq>:<amount>``
  by the time it was billed.
* ``P leases`` a hash, lease id -> the reservation as JSON (what each meter holds for it).
* ``P holders`` a sorted set, holder -> the deadline of its lease (Redis time); ``P hi``
  a hash, holder -> who it is (host, pid, name) for ``rate-limited ledger inspect``;
  ``P h:<holder>`` the set of its lease ids.
* ``P seq`` counter of lease and log entry ids; ``P freed`` the channel told when a
  reservation is given back while ``P waiting`` exists (set for a second by an admission
  that waits for one), so that waiters on other processes look again.

A holder whose deadline passed (its process died, or lost Redis for longer than the lease)
is *reaped* by the next script that runs: each of its reservations is billed as the
provider would have billed the call, which may have been sent: what admission billed stays,
and what it held is billed whole (``keep``; a window logs it at the admission).
"""

from __future__ import annotations

__all__ = ["OPERATIONS", "SCRIPT"]

_COMMON = r"""
local P = ARGV[1]
local EPS = 1e-9
local tt = redis.call('TIME')
local T = tonumber(tt[1]) + tonumber(tt[2]) / 1000000
local function f(x) return string.format('%.17g', x) end
local freed = false

-- Meters are read once per script call (whatever number of operations it runs), kept in
-- LOADED, and written back once at its end if changed (DIRTY, write_back).
local LOADED, DIRTY = {}, {}

local function load(key, kind, q, w, d)
  local m = LOADED[key]
  if m then return m end
  local v = redis.call('HMGET', key, 'k', 'q', 'w', 'd', 'lv', 's', 'r', 'c')
  m = {key = key}
  if v[1] then
    m.k = v[1]; m.q = tonumber(v[2]); m.w = tonumber(v[3]); m.d = tonumber(v[4])
    m.lv = tonumber(v[5]); m.s = tonumber(v[6]); m.r = tonumber(v[7]); m.c = tonumber(v[8])
  else
    m.k = kind; m.q = tonumber(q); m.w = tonumber(w); m.d = tonumber(d)
    m.lv = 0; m.s = 0; m.r = 0; m.c = 0
  end
  m.log = P .. 'l' .. string.sub(key, string.len(P) + 2)
  LOADED[key] = m
  return m
end

local function save(m) DIRTY[m.key] = m end

local function write_back()
  for key, m in pairs(DIRTY) do
    redis.call('HSET', key, 'k', m.k, 'q', f(m.q), 'w', f(m.w), 'd', f(m.d), 'lv', f(m.lv),
      's', f(m.s), 'r', f(m.r), 'c', f(m.c))
  end
end

local function rate(m) return m.q / m.w end

-- Bring the meter to time T: a bucket drains, a window's old entries expire.
local function advance(m)
  if m.advanced then return end  -- T is one instant for the whole script call
  m.advanced = true
  if m.k == 'bucket' then
    if T > m.s then
      if m.lv > 0 then m.lv = math.max(0, m.lv - (T - m.s) * rate(m)) end
      m.s = T
    end
  else
    local old = redis.call('ZRANGEBYSCORE', m.log, '-inf', f(T - m.w))
    if #old > 0 then
      for _, member in ipairs(old) do
        m.lv = m.lv - tonumber(string.match(member, ':(.*)$'))
      end
      redis.call('ZREMRANGEBYSCORE', m.log, '-inf', f(T - m.w))
      save(m)  -- the log lost them: the usage must go down with it, whatever follows
    end
    if redis.call('ZCARD', m.log) == 0 then m.lv = 0 end
    if m.lv < 0 then m.lv = 0 end
  end
end

local function fits(m, need)
  return m.q - m.lv - m.r >= need - EPS * m.q
end

-- Seconds from T until `need` fits; -1 when only a reservation given back can make room,
-- -2 when it can never fit (more than the whole quota).
local function free_in(m, need)
  local slack = EPS * m.q
  local excess = m.lv + m.r + need - m.q
  if excess <= slack then return 0 end
  if need > m.q + slack then return -2 end
  if m.r + need > m.q + slack then return -1 end
  if m.k == 'bucket' then
    return math.max(T, m.s) - T + excess / rate(m)
  end
  local entries = redis.call('ZRANGE', m.log, 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    excess = excess - tonumber(string.match(entries[i], ':(.*)$'))
    if excess <= slack then return math.max(0, tonumber(entries[i + 1]) + m.w - T) end
  end
  return -1
end

-- Bill `amount` as used at time `at` (<= T); returns the token `refund` takes back. A
-- bucket adds it whole whatever `at`: a level drains as a whole, so a usage billed late
-- into a busy bucket has not drained by itself meanwhile (crediting that would admit what
-- the provider refuses). A window logs it at `at`: it expires a window after that.
local function bill(m, amount, at)
  if amount <= 0 then return '' end
  if m.k == 'bucket' then
    if m.lv <= 0 and T >= m.s then m.s = T + m.d end
    m.lv = m.lv + amount
    return 'b:' .. f(amount) .. ':' .. f(T)
  end
  if at + m.w <= T then return '' end
  local member = redis.call('INCR', P .. 'seq') .. ':' .. f(amount)
  redis.call('ZADD', m.log, f(at), member)
  m.lv = m.lv + amount
  return member
end

local function refund(m, token)
  if token == '' then return end
  freed = true
  if m.k == 'bucket' then
    local amount, at = string.match(token, '^b:([^:]+):(.+)$')
    local left = tonumber(amount) - (T - tonumber(at)) * rate(m)
    if left > 0 then m.lv = math.max(0, m.lv - left) end
    return
  end
  if redis.call('ZREM', m.log, token) == 1 then
    m.lv = math.max(0, m.lv - tonumber(string.match(token, ':(.*)$')))
  end
end

local function unreserve(m, amount)
  if amount > 0 then m.r = math.max(0, m.r - amount); freed = true end
end

-- One meter of a lease: {key, kind, q, w, d, rule, args, estimate, token, held, corrected}
local function meter_of(e) return load(e[1], e[2], e[3], e[4], e[5]) end

-- The call may have been sent: what admission billed stays, a held estimate is billed.
local function keep_entry(m, e, lease)
  local a, est = tonumber(e[7]), tonumber(e[8])
  if lease.def == 1 then
    unreserve(m, a + est)
    bill(m, a + est, tonumber(lease.at))
  elseif e[6] ~= 'reserved' then
    unreserve(m, est)
    bill(m, est, tonumber(lease.at))
  end
end

local function each_entry(lease, fn)
  local cache = {}
  for i, e in ipairs(lease.e) do
    local m = cache[e[1]]
    if not m then m = meter_of(e); advance(m); cache[e[1]] = m end
    fn(m, e, i)
  end
  for _, m in pairs(cache) do save(m) end
end

local function drop_lease(id, holder)
  redis.call('HDEL', P .. 'leases', id)
  redis.call('SREM', P .. 'h:' .. holder, id)
end

local function reap_holder(holder)
  local ids = redis.call('SMEMBERS', P .. 'h:' .. holder)
  for _, id in ipairs(ids) do
    local raw = redis.call('HGET', P .. 'leases', id)
    if raw then
      local lease = cjson.decode(raw)
      each_entry(lease, function(m, e) keep_entry(m, e, lease) end)
      redis.call('HDEL', P .. 'leases', id)
    end
  end
  redis.call('DEL', P .. 'h:' .. holder)
  redis.call('ZREM', P .. 'holders', holder)
  redis.call('HDEL', P .. 'hi', holder)
  redis.call('HINCRBY', P .. 'stats', 'reaped_holders', 1)
  redis.call('HINCRBY', P .. 'stats', 'reaped_leases', #ids)
  freed = true
end

local reaped = false
local function reap()
  if reaped then return end
  reaped = true
  local dead = redis.call('ZRANGEBYSCORE', P .. 'holders', '-inf', f(T), 'LIMIT', 0, 8)
  for _, holder in ipairs(dead) do reap_holder(holder) end
end

local function alive(holder, ttl)
  redis.call('ZADD', P .. 'holders', f(T + tonumber(ttl)), holder)
end

-- The room believed right after each admission (plus the corrections so far), as a stack
-- increasing from bottom to top: the first entry at or after admission k holds the least
-- room believed since k (see rate_limited._reconcile.Lows). Entries: "number|room|time".
local HORIZON = 300
local function push_low(m)
  local lows = P .. 'lo' .. string.sub(m.key, string.len(P) + 2)
  local n = redis.call('HINCRBY', m.key, 'n', 1)
  local value = m.q - m.lv - m.r + m.c
  while true do
    local top = redis.call('LINDEX', lows, -1)
    if not top then break end
    local v = tonumber(string.match(top, '^[^|]+|([^|]+)|'))
    if v < value then break end
    redis.call('RPOP', lows)
  end
  redis.call('RPUSH', lows, n .. '|' .. f(value) .. '|' .. f(T))
  while true do
    local first = redis.call('LINDEX', lows, 0)
    if not first or tonumber(string.match(first, '|([^|]+)$')) >= T - HORIZON then break end
    redis.call('LPOP', lows)
    redis.call('HSET', m.key, 'trimmed', string.match(first, '^([^|]+)|'))
  end
  redis.call('EXPIRE', lows, HORIZON * 2)
  return n
end

-- Each operation calls done() where it used to publish; the batch publishes once, at its
-- end, if any of its operations gave something back.
local function done() end
"""

#: ARGV: P, holder, lease seconds, defer (0/1), track (0/1: keep what ``reconcile`` needs,
#: once the provider reports), n, then per resource 8 fields: meter key,
#: kind, quota, window, delay, rule, arguments usage, estimate.
#: Admitted: {1, lease id, T, then per resource held, quota, corrected, then per resource
#: the admission's number on its meter (for ``RECONCILE``)}. Not: {0, T, then
#: per resource: seconds until it fits (-1, -2: see free_in), needed, quota}.
_RESERVE = r"""
reap()
local holder, ttl, defer, n = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[6])
local track = ARGV[5] == '1' 
local ms, es = {}, {}
local cache = {}
local ok = true
for i = 1, n do
  local b = 6 + (i - 1) * 8
  local key = ARGV[b + 1]
  local m = cache[key]
  if not m then
    m = load(key, ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]); advance(m)
    cache[key] = m
  end
  local need = tonumber(ARGV[b + 7]) + tonumber(ARGV[b + 8])
  ms[i] = m
  es[i] = {key, m.k, f(m.q), f(m.w), f(m.d), ARGV[b + 6], ARGV[b + 7], ARGV[b + 8], '', '', ''}
  if not fits(m, need) then ok = false end
end
if not ok then
  local out = {0, f(T)}
  for i = 1, n do
    local need = tonumber(es[i][7]) + tonumber(es[i][8])
    local wait = free_in(ms[i], need)
    if wait == -1 then  -- it waits for a reservation to come back: ask to be told
      redis.call('SET', P .. 'waiting', '1', 'PX', 1000)
    end
    table.insert(out, f(wait))
    table.insert(out, f(need))
    table.insert(out, f(ms[i].q))
  end
  done()
  return out
end
local out = {1, '', f(T)}
for i = 1, n do
  local m, e = ms[i], es[i]
  local a, est = tonumber(e[7]), tonumber(e[8])
  if defer == 1 then
    m.r = m.r + a + est
  elseif e[6] == 'reserved' then
    e[9] = bill(m, a + est, T)
  else
    e[9] = bill(m, a, T)
    m.r = m.r + est
  end
  e[10] = f(m.lv + m.r); e[11] = f(m.c)
  table.insert(out, e[10]); table.insert(out, f(m.q)); table.insert(out, e[11])
end
for _, m in pairs(cache) do save(m) end
for i = 1, n do table.insert(out, track and tostring(push_low(ms[i])) or '0') end
local id = tostring(redis.call('INCR', P .. 'seq'))
redis.call('HSET', P .. 'leases', id, cjson.encode({at = f(T), def = defer, h = holder, e = es}))
redis.call('SADD', P .. 'h:' .. holder, id)
alive(holder, ttl)
out[2] = id
return out
"""

#: ARGV: P, holder, lease seconds, lease id, op, then op's arguments:
#: ``begin`` none; ``settle`` the lease's entries as JSON (billed by
#: what they say if the lease was reaped) then one actual usage per resource; ``keep``,
#: ``release``: none; ``refuse`` the index of the resource to correct (0: none) and, per
#: resource, whether it is a bucket meter's correction (free room billed too).
#: Returns {found (0/1), T, then per resource what its results were billed}.
_FINISH = r"""
reap()
local holder, ttl, id, op = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local raw = redis.call('HGET', P .. 'leases', id)
local out = {0, f(T)}
if not raw then
  -- Reaped (this process lost Redis longer than its lease): kept already, so only what a
  -- result has above its estimate is still to bill.
  if op == 'settle' then
    local lease = {e = cjson.decode(ARGV[6])}
    each_entry(lease, function(m, e, i)
      local actual = tonumber(ARGV[6 + i])
      local extra = actual - tonumber(e[8])
      if extra > 0 then bill(m, extra, T) end
      table.insert(out, f(math.max(actual, tonumber(e[8]))))
    end)
  end
  done()
  return out
end
local lease = cjson.decode(raw)
out[1] = 1
if op == 'begin' then
  if lease.def == 1 then
    local at = T
    each_entry(lease, function(m, e, i)
      local a, est = tonumber(e[7]), tonumber(e[8])
      if e[6] == 'reserved' then
        m.r = math.max(0, m.r - a - est)
        e[9] = bill(m, a + est, at)
      elseif a > 0 then
        m.r = math.max(0, m.r - a)
        e[9] = bill(m, a, at)
      end
    end)
    lease.def = 0
    lease.at = f(at)
    redis.call('HSET', P .. 'leases', id, cjson.encode(lease))
  end
  alive(holder, ttl)
  return out
end
if op == 'settle' then
  if lease.def == 1 then
    -- never begun explicitly: it starts now
    each_entry(lease, function(m, e, i)
      local a, est = tonumber(e[7]), tonumber(e[8])
      m.r = math.max(0, m.r - a - est)
      if e[6] == 'reserved' then e[9] = bill(m, a + est, T) else
        e[9] = bill(m, a, T); m.r = m.r + est end
    end)
  end
  each_entry(lease, function(m, e, i)
    local est, actual = tonumber(e[8]), tonumber(ARGV[6 + i])
    if e[6] == 'reserved' then
      if actual > est then bill(m, actual - est, T) end
      if actual < est then freed = true end
      table.insert(out, f(math.max(est, actual)))
    else
      unreserve(m, est)
      bill(m, actual, T)
      table.insert(out, f(actual))
    end
  end)
elseif op == 'keep' then
  each_entry(lease, function(m, e) keep_entry(m, e, lease) end)
elseif op == 'release' or op == 'refuse' then
  each_entry(lease, function(m, e)
    local a, est = tonumber(e[7]), tonumber(e[8])
    if lease.def == 1 then
      unreserve(m, a + est)
    else
      if e[6] ~= 'reserved' then unreserve(m, est) end
      refund(m, e[9])
    end
  end)
  local tight = op == 'refuse' and tonumber(ARGV[6]) or 0
  if tight > 0 then
    -- The provider had less room than this meter showed: bill what it believed free at
    -- the admission (a bucket) and the request's charge, less the corrections made since.
    local e = lease.e[tight]
    local m = meter_of(e); advance(m)
    local charge = tonumber(e[7]) + tonumber(e[8])
    local free = 0
    if m.k == 'bucket' then free = m.q - tonumber(e[10]) end
    local amount = free + charge - (m.c - tonumber(e[11]))
    if amount > EPS * m.q then
      bill(m, amount, T)
      m.c = m.c + amount
    end
    save(m)
  end
end
drop_lease(id, holder)
done()
return out
"""

#: ARGV: P, n, then per meter 6 fields: key, kind, quota, window, delay, needed.
#: Returns {T, then per meter: level, reserved, quota, seconds until needed fits (see
#: free_in)}.
_PEEK = r"""
local n = tonumber(ARGV[2])
local out = {f(T)}
for i = 1, n do
  local b = 2 + (i - 1) * 6
  local m = load(ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5])
  advance(m)
  table.insert(out, f(m.lv)); table.insert(out, f(m.r)); table.insert(out, f(m.q))
  table.insert(out, f(free_in(m, tonumber(ARGV[b + 6]))))
end
return out
"""

#: ARGV: P, n, then per meter 6 fields: key, kind, quota, window, delay, amount.
_BILL = r"""
local n = tonumber(ARGV[2])
for i = 1, n do
  local b = 2 + (i - 1) * 6
  local m = load(ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5])
  advance(m)
  bill(m, tonumber(ARGV[b + 6]), T)
  save(m)
end
return f(T)
"""

#: ARGV: P, key, kind, quota, window, delay, new quota.
_SET_QUOTA = r"""
local m = load(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
advance(m)
local old = m.q
m.q = tonumber(ARGV[7])
save(m)
if m.q > old then freed = true end
done()
return f(old)
"""

#: ARGV: P, holder, lease seconds, who it is (JSON). Renews the holder's lease, reaps the
#: dead. Returns {T, holders reaped so far in total}.
_HEARTBEAT = r"""
reap()
alive(ARGV[2], ARGV[3])
redis.call('HSET', P .. 'hi', ARGV[2], ARGV[4])
done()
return {f(T), tostring(redis.call('HGET', P .. 'stats', 'reaped_holders') or '0')}
"""

#: ARGV: P, holder. The holder is leaving: what it still holds is kept (as if it died).
_RELEASE_HOLDER = r"""
local h = ARGV[2]
if redis.call('EXISTS', P .. 'h:' .. h) == 1 or redis.call('ZSCORE', P .. 'holders', h) then
  reap_holder(ARGV[2])
  redis.call('HINCRBY', P .. 'stats', 'reaped_holders', -1)
end
done()
return f(T)
"""

#: ARGV: P, key, kind, quota, window, delay, the admission's number on the meter, remaining,
#: precision, refused (0/1), the request's charge, held and corrected right after its
#: admission. The provider says ``remaining`` was left when it took the request: bill what
#: the ledger believed above the least room it believed in since that admission (or, for a
#: refused request, at the admission itself); see ``rate_limited._reconcile``. Returns what
#: it billed.
_RECONCILE = r"""
local m = load(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
advance(m)
local k, remaining, precision = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local low = nil
if ARGV[10] == '1' then
  remaining = remaining - tonumber(ARGV[11])
  low = m.q - tonumber(ARGV[12]) - (m.c - tonumber(ARGV[13]))
else
  local trimmed = tonumber(redis.call('HGET', m.key, 'trimmed') or '0')
  if k > trimmed then
    local lows = P .. 'lo' .. string.sub(m.key, string.len(P) + 2)
    local lo, hi = 0, redis.call('LLEN', lows)
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      local entry = redis.call('LINDEX', lows, mid)
      if tonumber(string.match(entry, '^([^|]+)|')) < k then lo = mid + 1 else hi = mid end
    end
    local entry = redis.call('LINDEX', lows, lo)
    if entry then
      local v = tonumber(string.match(entry, '^[^|]+|([^|]+)|'))
      low = math.min(m.q - m.lv - m.r, v - m.c)
    end
  end
end
if low == nil then return '0' end
local amount = low - (remaining - precision)
if amount > EPS * m.q then
  bill(m, amount, T)
  m.c = m.c + amount
  save(m)
  return f(amount)
end
return '0'
"""


def _operation(name: str, body: str) -> str:
    # ARGV inside an operation is its own arguments, with P first: the offsets above.
    return f"OPS[{name!r}] = function(ARGV)\n{body}\nend\n"


#: The operations one ``SCRIPT`` call may run, in order, by name.
OPERATIONS = {
    "reserve": _RESERVE,
    "finish": _FINISH,
    "peek": _PEEK,
    "bill": _BILL,
    "set_quota": _SET_QUOTA,
    "heartbeat": _HEARTBEAT,
    "release_holder": _RELEASE_HOLDER,
    "reconcile": _RECONCILE,
}

#: The ledger's one script. ARGV: P, then operations, each as its name, the number of its
#: arguments and those arguments (the ARGV of its section above, P left out). They run in
#: order, atomically together; the reply is the last one's. A client sends the settlements
#: it has queued together with its next admission: one round trip per call.
SCRIPT = (
    _COMMON
    + "local OPS = {}\n"
    + "".join(_operation(name, body) for name, body in OPERATIONS.items())
    + r"""
local out = nil
local i = 2
while i <= #ARGV do
  local name, n = ARGV[i], tonumber(ARGV[i + 1])
  local a = {P}
  for j = 1, n do a[j + 1] = ARGV[i + 1 + j] end
  out = OPS[name](a)
  i = i + 2 + n
end
write_back()
if freed and redis.call('EXISTS', P .. 'waiting') == 1 then
  redis.call('PUBLISH', P .. 'freed', '1')
end
return out
"""
)
