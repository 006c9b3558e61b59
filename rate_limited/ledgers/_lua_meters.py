"""The Redis ledger's meters, leases and reaping, in Lua: what every operation shares.

``rate_limited.ledgers._lua`` puts this model and the operations
(``rate_limited.ledgers._lua_ops``) together into one library. Per script call the state
below (``P``, ``T``, the meters read so far) is reset by ``begin_call``; meters are read
once per call whatever the number of operations it runs, and written back once, at its end;
so are leases (a spare's take, begin and settle in one call decode its lease once and write
only its removal) and the marks ``reconcile`` reads (the reports of calls admitted together
look up the same entries): a call costs a few commands per resource, not per operation.

Keys, under one prefix ``P`` (``rate_limited:ledger:{<name>}:``, the braces keep every key
of a ledger in one cluster hash slot):

* ``P m:<resource>:<partition>`` a hash per meter: ``k`` kind (``bucket``/``window``),
  ``q`` quota, ``w`` window seconds, ``d`` refill delay, ``lv`` level (bucket) or usage
  (window), ``s`` when the level was last drained, ``r`` reserved, ``c`` corrected,
  ``n`` the number of its last mark and ``trimmed`` of the last one trimmed (below).
* ``P lo:<resource>:<partition>`` the meter's marks, once the provider reports: a list,
  the room believed after each admission (``push_low``), for ``reconcile``.
* ``P l:<resource>:<partition>`` a window meter's log: a sorted set of ``<seq>:<amount>``
  by the time it was billed.
* ``P leases`` a hash, lease id -> the reservation as JSON (what each meter holds for it).
* ``P holders`` a sorted set, holder -> the deadline of its lease (Redis time); ``P hi``
  a hash, holder -> who it is (host, pid, name) for ``rate-limited ledger inspect``;
  ``P h:<holder>`` the set of its lease ids.
* ``P gen`` the ledger's generation (set once: missing after a restart without
  persistence); ``P lost`` Redis's time when a process found it missing (for one window:
  meters made meanwhile start full at that time).
* ``P seq`` counter of lease and log entry ids; ``P freed`` the channel told when a
  reservation is given back while ``P waiting`` exists (set for a second by an admission
  that waits for one), so that waiters on other processes look again.
* ``P sent:<holder>`` the number of the holder's last call and its reply (see
  ``rate_limited.ledgers._lua``): a call sent again after a lost reply is not run twice.

A holder whose deadline passed (its process died, or lost Redis for longer than the lease)
is *reaped* by the next script that runs: each of its reservations is billed as the
provider would have billed the call, which may have been sent: what admission billed stays,
and what it held is billed whole (``keep``; a window logs it at the admission).
"""

from __future__ import annotations

__all__ = ["MODEL"]

MODEL = r"""
local EPS = 1e-9
-- Spares are made only while every meter stays below this share of its quota.
local SPARE_ROOM = 0.5
local function f(x) return string.format('%.17g', x) end
-- The call's state: P its ledger's prefix, T Redis's time (one instant for the whole call),
-- freed (something was given back), reaped (the dead were looked for), ID and IDN (the
-- call's one id from `P seq` and how many were taken from it). Meters are read once per
-- call (whatever number of operations it runs), kept in LOADED, and written back once at
-- its end if changed (DIRTY, write_back); ALIVE: the holders whose lease it renewed.
local P, T, freed, reaped, ID, IDN = '', 0, false, false, nil, 0
-- The holder sending the call is leaving (release_holder): its last call is not kept.
local FORGET = false
local LOADED, DIRTY, ALIVE = {}, {}, {}
-- Leases read so far (id -> the lease decoded, false: none), the changed ones (written
-- back once, at the call's end: a spare's take, begin and settle in one call read and
-- decode it once and write nothing but its removal), and the ids dropped, by holder.
local LEASES, LDIRTY, LDROPPED = {}, {}, {}
-- Per meter key, the entries of its stack of marks read so far in this call (see
-- lowest_since): the reports of calls admitted together look up the same entries.
local LOWS = {}

local function begin_call(prefix)
  P = prefix
  local tt = redis.call('TIME')
  T = tonumber(tt[1]) + tonumber(tt[2]) / 1000000
  freed, reaped, ID, IDN, FORGET = false, false, nil, 0, false
  LOADED, DIRTY, ALIVE = {}, {}, {}
  LEASES, LDIRTY, LDROPPED = {}, {}, {}
  LOWS = {}
end

-- A new id (lease ids, window log entries): one INCR per call, then "<id>.<k>".
local function new_id()
  if not ID then ID = tostring(redis.call('INCR', P .. 'seq')); return ID end
  IDN = IDN + 1
  return ID .. '.' .. IDN
end

local function load(key, kind, q, w, d)
  local m = LOADED[key]
  if m then return m end
  local v = redis.call('HMGET', key, 'k', 'q', 'w', 'd', 'lv', 's', 'r', 'c', 'n', 'trimmed')
  m = {key = key}
  if v[1] then
    m.k = v[1]; m.q = tonumber(v[2]); m.w = tonumber(v[3]); m.d = tonumber(v[4])
    m.lv = tonumber(v[5]); m.s = tonumber(v[6]); m.r = tonumber(v[7]); m.c = tonumber(v[8])
  else
    m.k = kind; m.q = tonumber(q); m.w = tonumber(w); m.d = tonumber(d)
    m.lv = 0; m.s = 0; m.r = 0; m.c = 0
    m.spec = true  -- a new meter: write its kind, quota, window and delay too
  end
  -- the number of its last mark (push_low) and of the last one trimmed from its stack
  m.n = tonumber(v[9] or '0'); m.trimmed = tonumber(v[10] or '0')
  m.log = P .. 'l' .. string.sub(key, string.len(P) + 2)
  if m.spec then
    -- Redis lost the ledger's state at `lost` (restarted without persistence; see
    -- _redis_link): the provider's meter may have been full then, so a meter made since
    -- starts full at that time, and drains (bucket) or expires (window) from there.
    local lost = redis.call('GET', P .. 'lost')
    if lost then
      lost = tonumber(lost)
      m.lv = m.q
      if m.k == 'bucket' then m.s = lost + m.d
      elseif lost + m.w > T then redis.call('ZADD', m.log, f(lost), new_id() .. ':' .. f(m.q))
      else m.lv = 0 end
      DIRTY[key] = m  -- save(m)
    end
  end
  LOADED[key] = m
  return m
end

local function save(m) DIRTY[m.key] = m end

local function write_back()
  for key, m in pairs(DIRTY) do
    if m.spec then
      redis.call('HSET', key, 'k', m.k, 'q', f(m.q), 'w', f(m.w), 'd', f(m.d), 'lv', f(m.lv),
        's', f(m.s), 'r', f(m.r), 'c', f(m.c), 'n', m.n, 'trimmed', m.trimmed)
    else
      redis.call('HSET', key, 'lv', f(m.lv), 's', f(m.s), 'r', f(m.r), 'c', f(m.c), 'n', m.n,
        'trimmed', m.trimmed)
    end
  end
  local put, gone = {}, {}
  for id, lease in pairs(LDIRTY) do
    if LEASES[id] then
      table.insert(put, id); table.insert(put, cjson.encode(LEASES[id]))
    else
      table.insert(gone, id)
    end
  end
  if #put > 0 then redis.call('HSET', P .. 'leases', unpack(put)) end
  if #gone > 0 then redis.call('HDEL', P .. 'leases', unpack(gone)) end
  for holder, ids in pairs(LDROPPED) do redis.call('SREM', P .. 'h:' .. holder, unpack(ids)) end
end

-- The lease `id` decoded (nil: none), read from Redis once per call.
local function get_lease(id)
  local lease = LEASES[id]
  if lease == nil then
    local raw = redis.call('HGET', P .. 'leases', id)
    lease = raw and cjson.decode(raw) or false
    LEASES[id] = lease
  end
  return lease or nil
end

-- The lease `id` changed: written back at the call's end.
local function put_lease(id, lease) LEASES[id] = lease; LDIRTY[id] = true end

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
  local member = new_id() .. ':' .. f(amount)
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
    bill(m, a + est, T)  -- never begun: it may have left up to now
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
  LEASES[id] = false; LDIRTY[id] = true
  local ids = LDROPPED[holder]
  if not ids then ids = {}; LDROPPED[holder] = ids end
  table.insert(ids, id)
end

local function reap_holder(holder)
  local ids = redis.call('SMEMBERS', P .. 'h:' .. holder)
  local kept = 0
  for _, id in ipairs(ids) do
    local lease = get_lease(id)  -- nil if this call dropped it already (settled)
    if lease then
      each_entry(lease, function(m, e) keep_entry(m, e, lease) end)
      LEASES[id] = false; LDIRTY[id] = true
      kept = kept + 1
    end
  end
  redis.call('DEL', P .. 'h:' .. holder)
  redis.call('ZREM', P .. 'holders', holder)
  redis.call('HDEL', P .. 'hi', holder)
  redis.call('HINCRBY', P .. 'stats', 'reaped_holders', 1)
  redis.call('HINCRBY', P .. 'stats', 'reaped_leases', kept)
  freed = true
end

local function reap()
  if reaped then return end
  reaped = true
  local dead = redis.call('ZRANGEBYSCORE', P .. 'holders', '-inf', f(T), 'LIMIT', 0, 8)
  for _, holder in ipairs(dead) do reap_holder(holder) end
end

local function alive(holder, ttl)
  if ALIVE[holder] then return end  -- T is one instant: once per call is enough
  ALIVE[holder] = true
  redis.call('ZADD', P .. 'holders', f(T + tonumber(ttl)), holder)
end

-- The room believed right after each admission (plus the corrections so far), as a stack
-- increasing from bottom to top: the first entry at or after admission k holds the least
-- room believed since k (see rate_limited._reconcile.Lows). Entries: "number|room|time".
local HORIZON = 300
local function lows_key(m) return P .. 'lo' .. string.sub(m.key, string.len(P) + 2) end

local function push_low(m)
  local lows = lows_key(m)
  LOWS[m.key] = nil  -- the stack changes: what this call read of it is stale
  m.n = m.n + 1
  save(m)
  local n = m.n
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
    m.trimmed = tonumber(string.match(first, '^([^|]+)|'))
  end
  redis.call('EXPIRE', lows, HORIZON * 2)
  return n
end

-- The least room the meter believed in since its mark number k (the room of the first entry
-- at or after k, less the corrections made since, and the room it believes now), or nil if
-- that mark was trimmed. A binary search over the stack (its numbers increase), each entry
-- read at most once per call.
local function lowest_since(m, k)
  if k <= m.trimmed then return nil end
  local lows = lows_key(m)
  local seen = LOWS[m.key]
  if not seen then
    seen = {len = redis.call('LLEN', lows)}
    LOWS[m.key] = seen
  end
  local function at(i)
    local entry = seen[i]
    if entry == nil then
      local raw = redis.call('LINDEX', lows, i)
      entry = false
      if raw then
        local number, room = string.match(raw, '^([^|]+)|([^|]+)|')
        entry = {tonumber(number), tonumber(room)}
      end
      seen[i] = entry
    end
    return entry
  end
  local lo, hi = 0, seen.len
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if at(mid)[1] < k then lo = mid + 1 else hi = mid end
  end
  local entry = lo < seen.len and at(lo)
  if not entry then return nil end
  return math.min(m.q - m.lv - m.r, entry[2] - m.c)
end

-- Each operation calls done() where it used to publish; the batch publishes once, at its
-- end, if any of its operations gave something back.
local function done() end
"""
