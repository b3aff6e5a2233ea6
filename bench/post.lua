-- wrk script: POST /tracking/impresiones with a realistic body, a random
-- UUIDv4 client id, one of 10,000 campaigns and one of 100,000 influencers.
-- RASTRO_KIND=conversiones for conversions; RASTRO_DELAY_MS paces each
-- connection (wrk has no rate limit of its own).
local kind = os.getenv("RASTRO_KIND") or "impresiones"
local pace = tonumber(os.getenv("RASTRO_DELAY_MS") or "0")
dofile(os.getenv("RASTRO_BENCH_DIR") .. "/common.lua")
local hex = "0123456789abcdef"
local function uuid4()
  local t = {}
  for i = 1, 32 do
    local r = math.random(1, 16)
    if i == 13 then r = 5 end                       -- version 4
    if i == 17 then r = 9 + math.random(0, 3) end   -- variant 10xx
    t[#t + 1] = hex:sub(r, r)
    if i == 8 or i == 12 or i == 16 or i == 20 then t[#t + 1] = "-" end
  end
  return table.concat(t)
end

local monedas = { "COP", "USD", "EUR", "MXN" }
local tipos = { "VENTA", "REGISTRO", "SUSCRIPCION", "DESCARGAR", "CLICK" }

function make_post()
  local body
  local camp = math.random(1, 10000)
  local infl = math.random(1, 100000)
  local user = math.random(1, 1000000)
  if kind == "conversiones" then
    body = string.format(
      '{"id":"%s","campa\195\177a_id":"camp-%d","influencer_id":"inf-%d","usuario_id":"user-%d",' ..
      '"tipo_conversion":"%s","valor":%d.%02d,"moneda":"%s","user_agent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",' ..
      '"ip_address":"203.0.113.%d","referrer":"https://example.com/p/%d"}',
      uuid4(), camp, infl, user, tipos[math.random(1, 5)], math.random(0, 500), math.random(0, 99),
      monedas[math.random(1, 4)], math.random(1, 254), camp)
  else
    body = string.format(
      '{"id":"%s","campa\195\177a_id":"camp-%d","influencer_id":"inf-%d","usuario_id":"user-%d",' ..
      '"tipo_evento":"IMPRESION","user_agent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",' ..
      '"ip_address":"203.0.113.%d","referrer":"https://example.com/p/%d"}',
      uuid4(), camp, infl, user, math.random(1, 254), camp)
  end
  return wrk.format("POST", "/tracking/" .. kind, { ["Content-Type"] = "application/json" }, body)
end

request = make_post

if pace > 0 then
  delay = function() return pace end
end
