-- Try your filter on a few lines: `luajit try.lua` in this folder.
-- (The checker runs it on ~5,000 lines; this one is yours to change.)
dofile("sampling.lua")

-- Each line with the code the rule expects: 0 keep, -1 drop ("0/-1": either, if you sample
-- lines without a trace id by a stable hash, as deploy/fluent-bit/sampling.lua does).
local lines = {
  {-1, {level = "info", event = "http_request", trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"}},
  {0, {level = "info", event = "http_request", trace_id = "4bf92f3577b34da60000000000000001"}},
  {-1, {level = "debug", event = "send_request_headers.complete", trace_id = "0af7651916cd43dd8448eb211c80319c"}},
  {0, {level = "warning", event = "request_rejected", trace_id = "0af7651916cd43dd8448eb211c80319c"}},
  {0, {level = "error", event = "request_failed", trace_id = "0af7651916cd43ddffffffffffffffff"}},
  {"0/-1", {level = "info", event = "Started server process [1]"}},
  {0, {log = "Traceback (most recent call last):"}},
  -- Just below the bound 0x1999999999999A00: kept. A double cannot tell it from the bound.
  {0, {level = "info", event = "http_request", trace_id = "5862b5574d4e7bf419999999999999ff"}},
  {-1, {level = "info", event = "http_request", trace_id = "5862b5574d4e7bf41999999999999a00"}},
}

local wrong = 0
for _, case in ipairs(lines) do
  local expected, record = case[1], case[2]
  local code = sample("kube.test", 1796112000.5, record)
  local right = code == expected or (expected == "0/-1" and (code == 0 or code == -1))
  local verdict = right and "ok" or "WRONG (expected " .. expected .. ")"
  if not right then
    wrong = wrong + 1
  end
  print(string.format("%-3s %-8s %-34s %-32s %s", tostring(code), tostring(record.level),
    tostring(record.trace_id), tostring(record.event or record.log), verdict))
end
print(wrong == 0 and "all as expected" or (wrong .. " line(s) not as expected"))
