-- GET load. RASTRO_GET=stats: a random campaign's statistics (of 10,000);
-- RASTRO_GET=byid: a random impression by id, from the ids file
-- RASTRO_IDS (one id a line); RASTRO_GET=root: "/" (for nginx);
-- RASTRO_GET=health: rastro's smallest answer (libmicrohttpd's ceiling here).
dofile(os.getenv("RASTRO_BENCH_DIR") .. "/common.lua")
local what = os.getenv("RASTRO_GET") or "stats"
local ids = {}

function init(args)
  seed_rng()
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
