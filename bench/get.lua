-- GET load. RASTRO_GET=stats: a random campaign's statistics (of 10,000);
-- RASTRO_GET=byid: a random impression by id, from the ids file
-- RASTRO_IDS (one id a line); RASTRO_GET=root: "/" (for nginx);
-- RASTRO_GET=health: rastro's smallest answer (libmicrohttpd's ceiling here).
--
-- Every request is formatted once, in init(): wrk shares the two cores
-- with the server, and building each request string in Lua (wrk.format
-- per request) cost it 11 us a by-id request against 6.7 for a statistics
-- one. All four kinds are built the same way, nginx's included.
dofile(os.getenv("RASTRO_BENCH_DIR") .. "/common.lua")
local what = os.getenv("RASTRO_GET") or "stats"
local reqs = {}

function init(args)
  seed_rng()
  if what == "byid" then
    for line in io.lines(os.getenv("RASTRO_IDS")) do
      reqs[#reqs + 1] = wrk.format("GET", "/tracking/queries/impresiones/" .. line)
    end
  elseif what == "root" then
    reqs[1] = wrk.format("GET", "/")
  elseif what == "health" then
    reqs[1] = wrk.format("GET", "/tracking/health")
  else
    for c = 1, 10000 do
      reqs[c] = wrk.format("GET", "/tracking/queries/campa%C3%B1as/camp-" .. c .. "/estadisticas")
    end
  end
end

request = function()
  return reqs[math.random(1, #reqs)]
end
