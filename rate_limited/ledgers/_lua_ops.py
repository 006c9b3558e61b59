"""The Redis ledger's operations, in Lua: reserve, finish (begin, settle, keep, release,
refuse), peek, bill, set_quota, heartbeat, release_holder, reconcile.

Each is the body of a Lua function over its own ``ARGV`` (``P`` first, then the arguments
documented above it), run on the model of ``rate_limited.ledgers._lua_meters``;
``rate_limited.ledgers._lua`` runs a list of them, in order, in one atomic call.
"""

from __future__ import annotations

__all__ = ["OPERATIONS"]

#: ARGV: P, holder, lease seconds, defer (0/1), track (0/1: keep what ``reconcile`` needs,
#: once the provider reports), n, then per resource 8 fields: meter key,
#: kind, quota, window, delay, rule, arguments usage, estimate.
#: Then, optionally, spares: k, then per resource the spare's arguments usage and estimate
#: (see ``rate_limited.ledgers._redis_spares``: up to k more admissions of that demand,
#: held deferred, made only while every meter stays below SPARE_ROOM of its quota).
#: Admitted: {1, lease id, T, then per resource held, quota, corrected, then per resource
#: the number on its meter of the mark made once the spares are held too (for
#: ``RECONCILE``; the admission's and its spares'), then the spares' lease ids}. Spare j
#: (from 1) holds, per resource, the admission's held plus j times the spare's demand.
#: Not: {0, T, then per resource: seconds until it fits (-1, -2: see free_in), needed,
#: quota}.
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
local id = new_id()
local leases, ids = {id, cjson.encode({at = f(T), def = defer, h = holder, e = es})}, {id}
local k = tonumber(ARGV[7 + 8 * n] or '0')
local needs = {}
for i = 1, k > 0 and n or 0 do
  local b = 6 + 8 * n + 2 * i
  needs[i] = tonumber(ARGV[b]) + tonumber(ARGV[b + 1])
  if needs[i] > 0 then
    local m = ms[i]
    k = math.min(k, math.floor((SPARE_ROOM * m.q - m.lv - m.r) / needs[i]))
  end
end
for _ = 1, k do
  local spare = {}
  for i = 1, n do
    local e, b = es[i], 6 + 8 * n + 2 * i
    local m = ms[i]
    m.r = m.r + needs[i]
    spare[i] = {e[1], e[2], e[3], e[4], e[5], e[6], ARGV[b], ARGV[b + 1], '', f(m.lv + m.r), e[11]}
  end
  local sid = new_id()
  table.insert(leases, sid)
  table.insert(leases, cjson.encode({at = f(T), def = 1, h = holder, e = spare}))
  table.insert(ids, sid)
end
-- The room believed once the spares are held too: the mark of every call admitted here.
for i = 1, n do table.insert(out, track and tostring(push_low(ms[i])) or '0') end
for j = 2, #ids do table.insert(out, ids[j]) end
redis.call('HSET', P .. 'leases', unpack(leases))
redis.call('SADD', P .. 'h:' .. holder, unpack(ids))
alive(holder, ttl)
out[2] = id
return out
"""

#: ARGV: P, holder, lease seconds, lease id, op, then op's arguments:
#: ``take`` (a spare: see ``_RESERVE``) whether to begin it now (0/1), then per resource
#: the arguments usage and estimate of the call it admits (at most the spare's);
#: ``begin`` none; ``settle`` the lease's entries as JSON (billed by
#: what they say if the lease was reaped) then one actual usage per resource; ``keep``,
#: ``release``: none; ``refuse`` the index of the resource to correct (0: none) and, per
#: resource, whether it is a bucket meter's correction (free room billed too).
#: Returns {found (0/1), T, then per resource what its results were billed}.
_FINISH = r"""
reap()
local holder, ttl, id, op = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local lease = get_lease(id)
local out = {0, f(T)}
if not lease then
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
out[1] = 1
if op == 'take' then
  -- A spare (deferred) becomes the admission of a call needing at most as much: it holds
  -- what that call needs, gives back the rest, and begins if the call starts now.
  if lease.def == 1 then
    each_entry(lease, function(m, e, i)
      local a, est = ARGV[5 + 2 * i], ARGV[6 + 2 * i]
      local less = tonumber(e[7]) + tonumber(e[8]) - tonumber(a) - tonumber(est)
      if less > 0 then unreserve(m, less) end
      e[7] = a; e[8] = est
    end)
  end
  if ARGV[6] ~= '1' then
    put_lease(id, lease)
    alive(holder, ttl)
    return out
  end
  op = 'begin'
end
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
    put_lease(id, lease)
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
m.spec = true
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

#: ARGV: P, holder. The holder is leaving: what it still holds is kept (as if it died), and
#: its last call is forgotten (see ``run``).
_RELEASE_HOLDER = r"""
local h = ARGV[2]
redis.call('DEL', P .. 'sent:' .. h)
FORGET = true
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
  low = lowest_since(m, k)
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


#: The operations one call may run, in order, by name.
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
