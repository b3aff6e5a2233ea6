-- GET load. RASTRO_GET=stats: a random campaign's statistics (of 10,000);
-- RASTRO_GET=byid: a random impression by id, from the ids file
-- RASTRO_IDS (one id a line); RASTRO_GET=root: "/" (for nginx);
-- RASTRO_GET=health: rastro's smallest answer (libmicrohttpd's ceiling here).
dofile(os.getenv("RASTRO_BENCH_DIR") .. "/report.lua")
local what = os.getenv("RASTRO_GET") or "stats"
local ids = {}

-- a different sequence every run and every thread (wrk's Lua states all
-- start from the same seed; repeating ids would measure the idempotent
-- replay path instead of appends)
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("seed", os.time() * 1000 + threads + math.floor((os.clock() * 1e6) % 1000))
end

function init(args)
  math.randomseed(seed or os.time())
  if what == "byid" then
    for line in io.lines(os.getenv("RASTRO_IDS")) do ids[#ids + 1] = line end
  end
end

request = function()
  if what == "byid" then
    return wrk.format("GET", "/tracking/queries/impresiones/" .. ids[math.random(1, #ids)])
  elseif what == "root" then
    return wrk.format("GET", "/")
  elseif what == "health" then
    return wrk.format("GET", "/tracking/health")
  end
  return wrk.format("GET", "/tracking/queries/campa%C3%B1as/camp-" .. math.random(1, 10000) .. "/estadisticas")
end
