-- 90% reads (campaign statistics) and 10% durable impression POSTs.
local dir = os.getenv("RASTRO_BENCH_DIR")
dofile(dir .. "/post.lua")
local post = make_post

request = function()
  if math.random(1, 10) == 1 then
    return post()
  end
  return wrk.format("GET", "/tracking/queries/campa%C3%B1as/camp-" .. math.random(1, 10000) .. "/estadisticas")
end
