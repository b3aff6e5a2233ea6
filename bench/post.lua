-- wrk script: POST /tracking/impresiones with a realistic body, a random
-- UUIDv4 client id, one of 10,000 campaigns and one of 100,000 influencers.
-- RASTRO_KIND=conversiones for conversions; RASTRO_DELAY_MS (fractions
-- allowed) paces each connection: wrk has no rate limit of its own.
--
-- wrk shares the two cores with the server, so a request costs it as little
-- as a fresh body allows: the request line and headers are formatted once,
-- in init(), and each body (its UUID included) is one string.format.
local kind = os.getenv("RASTRO_KIND") or "impresiones"
local pace = tonumber(os.getenv("RASTRO_DELAY_MS") or "0")
dofile(os.getenv("RASTRO_BENCH_DIR") .. "/common.lua")

local random, format = math.random, string.format
local monedas = { "COP", "USD", "EUR", "MXN" }
local tipos = { "VENTA", "REGISTRO", "SUSCRIPCION", "DESCARGAR", "CLICK" }
-- a UUIDv4: version nibble 4, variant bits 10
local uuid = '%08x-%04x-4%03x-%04x-%04x%08x'
local common = '"campa\195\177a_id":"camp-%d","influencer_id":"inf-%d","usuario_id":"user-%d",'
local agent = '"user_agent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",' ..
              '"ip_address":"203.0.113.%d","referrer":"https://example.com/p/%d"}'
local conv_fmt = '{"id":"' .. uuid .. '",' .. common ..
                 '"tipo_conversion":"%s","valor":%d.%02d,"moneda":"%s",' .. agent
local imp_fmt = '{"id":"' .. uuid .. '",' .. common .. '"tipo_evento":"IMPRESION",' .. agent
local head

-- everything up to the Content-Length value; wrk.format adds the Host header
function post_init()
  local probe = wrk.format("POST", "/tracking/" .. kind,
                           { ["Content-Type"] = "application/json" }, "")
  head = probe:gsub("Content%-Length: 0\r\n", "")       -- wherever pairs() put it
  head = head:sub(1, -3) .. "Content-Length: "           -- before the blank line
end

function init(args)
  seed_rng()
  post_init()
end

local function body()
  local camp = random(1, 10000)
  local a, b, c = random(0, 0xffffffff), random(0, 0xffff), random(0, 0xfff)
  local d, e, f = 0x8000 + random(0, 0x3fff), random(0, 0xffff), random(0, 0xffffffff)
  if kind == "conversiones" then
    return format(conv_fmt, a, b, c, d, e, f, camp, random(1, 100000), random(1, 1000000),
                  tipos[random(1, 5)], random(0, 500), random(0, 99), monedas[random(1, 4)],
                  random(1, 254), camp)
  end
  return format(imp_fmt, a, b, c, d, e, f, camp, random(1, 100000), random(1, 1000000),
                random(1, 254), camp)
end

function make_post()
  local b = body()
  return head .. #b .. "\r\n\r\n" .. b
end

request = make_post

-- wrk takes whole milliseconds from delay(): a fractional pace is kept by
-- carrying the remainder from one request to the next (the average is the
-- pace asked for).
if pace > 0 then
  local carry = 0
  delay = function()
    carry = carry + pace
    local ms = math.floor(carry)
    carry = carry - ms
    return ms
  end
end
