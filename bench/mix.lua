-- 90% reads (campaign statistics) and 10% durable impression POSTs. The
-- GETs are formatted once, in init(), as in get.lua; each POST's body is
-- built per request (its id must be new), as in post.lua.
local dir = os.getenv("RASTRO_BENCH_DIR")
dofile(dir .. "/post.lua")
local post = make_post
local gets = {}

function init(args)
  seed_rng()
  post_init()
  for c = 1, 10000 do
    gets[c] = wrk.format("GET", "/tracking/queries/campa%C3%B1as/camp-" .. c .. "/estadisticas")
  end
end

request = function()
  if math.random(1, 10) == 1 then
    return post()
  end
  return gets[math.random(1, #gets)]
end
