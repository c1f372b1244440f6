-- wrk script: every request carries the cookie of one of the pre-created sessions
-- (read from a file, one id a line), round-robin per thread from a per-thread offset.
-- Usage: wrk ... -s rmw.lua URL -- <path?query> <ids-file>
local threads = {}
local next_thread = 0

function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

function init(args)
  path = args[1]
  ids = {}
  for line in io.lines(args[2]) do
    if #line > 0 then ids[#ids + 1] = line end
  end
  pos = (tid * 7919) % #ids
  ok = 0
  bad = 0
end

function request()
  pos = pos % #ids + 1
  return wrk.format("GET", path, { ["Cookie"] = "PHPSESSID=" .. ids[pos] })
end

function response(status, headers, body)
  if status == 200 and body == "ok" then ok = ok + 1 else bad = bad + 1 end
end

function done(summary, latency, requests)
  local good, failed = 0, 0
  for _, t in ipairs(threads) do
    good = good + t:get("ok")
    failed = failed + t:get("bad")
  end
  local e = summary.errors
  -- read/write errors are not counted: php -S closes every connection after its
  -- response, which wrk reports as a read error; connect errors and timeouts are failures.
  io.write(string.format("RESULT ok=%d bad=%d requests=%d duration_us=%d p50_us=%d p99_us=%d socket_errors=%d\n",
    good, failed, summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.timeout))
end
