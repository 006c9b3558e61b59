"""The Redis ledger's Lua code: its operations, run in order, atomically, per call.

Redis runs a script (or a function) to the end before any other command, so "check every
resource, then reserve on all of them" cannot interleave with another process's admission.
One call runs a list of operations (a client's queued settlements, then its admission),
each written in ``rate_limited.ledgers._lua_ops`` over its own ``ARGV``, on the meters,
leases and reaping of ``rate_limited.ledgers._lua_meters``. A call reads the time with
``TIME`` (Redis's clock, the same for every client whatever their own clocks say), and
numbers cross the boundary as strings formatted with ``%.17g`` (Lua's ``tostring`` keeps
14 digits, too few for epoch seconds with microseconds; and Redis truncates numbers a
script returns to integers).

The same code is sent two ways:

* ``LIBRARY``, a Redis Function library (Redis >= 7: ``FUNCTION LOAD`` once, then
  ``FCALL FUNCTION 0 ARGV...``). Its Lua functions are made once, when it is loaded: a
  script (``EVALSHA``) makes its ~30 local functions again on every call, which was a
  fifth of the server time of an admission. Library and function are named after a digest
  of the code, so that Runners of different versions of this package on one Redis each
  call their own.
* ``SCRIPT``, the same as one script, for a Redis older than 7 (no functions) and for
  ``rate-limited ledger inspect``; ``EVALSHA`` with its cached digest, never the body
  again.
"""

from __future__ import annotations

import hashlib

from rate_limited.ledgers._lua_meters import MODEL
from rate_limited.ledgers._lua_ops import OPERATIONS

__all__ = ["FUNCTION", "LIBRARY", "OPERATIONS", "SCRIPT"]


def _operation(name: str, body: str) -> str:
    # ARGV inside an operation is its own arguments, with P first (see _lua_ops).
    return f"OPS[{name!r}] = function(ARGV)\n{body}\nend\n"


#: The model and the operations, then ``run``. ARGV of a call: P, the holder sending it
#: and the call's number among its calls ('' and '': not numbered), then operations, each
#: as its name, the number of its arguments and those arguments (the ARGV of its section
#: in ``_lua_ops``, P left out). They run in order, atomically together; the reply is the
#: last one's. A client sends the settlements it has queued together with its next
#: admission: one round trip per call. A numbered call is kept with its reply (``P
#: sent:<holder>``, the last one only, for ``SENT_KEPT`` ms): the same call sent again
#: (its reply was lost) gets that reply and runs nothing.
_BODY = (
    MODEL
    + "local SENT_KEPT = 3600000\n"
    + "local OPS = {}\n"
    + "".join(_operation(name, body) for name, body in OPERATIONS.items())
    + r"""
local function run(ARGV)
  begin_call(ARGV[1])
  -- A call a client sends again (it lost the reply) is answered from what it ran: never
  -- run twice. Each holder's calls are numbered; its last one and its reply are kept.
  local sent = ARGV[2] ~= '' and P .. 'sent:' .. ARGV[2] or nil
  if sent then
    local last = redis.call('GET', sent)
    if last then
      local bar = string.find(last, '|', 1, true)
      if string.sub(last, 1, bar - 1) == ARGV[3] then
        return cjson.decode(string.sub(last, bar + 1))
      end
    end
  end
  local out = nil
  local i = 4
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
  if sent and out ~= nil and not FORGET then
    redis.call('SET', sent, ARGV[3] .. '|' .. cjson.encode(out), 'PX', SENT_KEPT)
  end
  return out
end
"""
)

#: The function's (and its library's) name: the code's digest in it.
FUNCTION = "rate_limited_ledger_" + hashlib.sha1(_BODY.encode()).hexdigest()[:16]

#: The code as a Redis Function library (``FUNCTION LOAD``; ``FCALL FUNCTION 0 ...``).
LIBRARY = (
    f"#!lua name={FUNCTION}\n"
    + _BODY
    + f"redis.register_function('{FUNCTION}', function(keys, args) return run(args) end)\n"
)

#: The code as one script (``EVAL``/``EVALSHA`` with no keys and the same ARGV).
SCRIPT = _BODY + "return run(ARGV)\n"
