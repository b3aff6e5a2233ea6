-- 90% reads (campaign statistics) and 10% durable impression POSTs.
local dir = os.getenv("RASTRO_BENCH_DIR")
dofile(dir .. "/post.lua")
local post = make_post

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
end

request = function()
  if math.random(1, 10) == 1 then
    return post()
  end
  return wrk.format("GET", "/tracking/queries/campa%C3%B1as/camp-" .. math.random(1, 10000) .. "/estadisticas")
end
