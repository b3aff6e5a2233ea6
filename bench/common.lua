-- Shared by the bench scripts: per-run, per-thread random seeds and one
-- machine-readable result line.
--
-- wrk's Lua states all start from the same seed; ids repeated across runs
-- would measure the idempotent replay path instead of appends.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("seed", os.time() * 1000 + threads + math.floor((os.clock() * 1e6) % 1000))
end

function seed_rng()
  math.randomseed(seed or os.time())
end

init = seed_rng

done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_ms=%.2f p99_ms=%.2f p999_ms=%.2f non2xx=%d errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
