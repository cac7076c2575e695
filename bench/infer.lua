-- wrk script used for every REST step of bench/run.sh.
--
-- POSTs the same V2 JSON body (read from the file named by $BENCH_BODY) on
-- every request, counts responses whose status is not 2xx (wrk itself only
-- counts >= 400), and prints one machine-readable line at the end:
--   BENCH_JSON {"requests":...,"non2xx":...,"p50_us":...,...}

local body_path = os.getenv("BENCH_BODY")
local f = assert(io.open(body_path, "rb"), "cannot open BENCH_BODY=" .. tostring(body_path))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- per-thread state (each wrk thread has its own Lua interpreter)
non2xx = 0
first_bad = nil

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if first_bad == nil then
      first_bad = tostring(status) .. " " .. string.sub(body or "", 1, 200)
    end
  end
end

local function jstr(s)
  s = string.gsub(s, '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. s .. '"'
end

function done(summary, latency, requests)
  local bad, sample = 0, nil
  for _, t in ipairs(threads) do
    bad = bad + (t:get("non2xx") or 0)
    sample = sample or t:get("first_bad")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"non2xx":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"lat_mean_us":%.3f,"lat_max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,' ..
    '"first_bad":%s}\n',
    summary.requests, summary.duration, summary.bytes, bad,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    sample and jstr(sample) or "null"))
end
