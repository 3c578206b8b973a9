-- Fluent Bit Lua filter: keep every WARNING and above, and INFO/DEBUG lines for 10% of
-- traces, chosen by trace id exactly as OpenTelemetry's TraceIdRatioBased sampler does
-- (and as the services' own log sampler does), so the log lines kept belong to the traces
-- kept. Lines without a trace id (startup, shutdown, uvicorn) and lines without a level
-- (raw stderr) are always kept: they are few and they explain restarts.
--
-- Fluent Bit contract: sample(tag, timestamp, record) returns code, timestamp, record;
-- -1 drops the line, 0 keeps it unchanged.

local ffi = require("ffi")

local RATIO = 0.1

-- OpenTelemetry keeps a trace when the low 64 bits of its id are below round(RATIO * 2^64).
-- RATIO * 2^64 is below 2^63, so the double converts to uint64_t exactly
-- (0x1999999999999A00 for 0.1).
local KEEP_ALL = RATIO >= 1
local BOUND = KEEP_ALL and 0ULL or ffi.cast("uint64_t", RATIO * 2 ^ 64)

local SAMPLED_LEVELS = { debug = true, info = true }

-- The low 64 bits of a W3C trace id (32 hex characters) as an exact uint64_t, or nil.
-- Never tonumber() all 16 digits: a Lua number is a double (53 bits) and would round.
local function low64(trace_id)
  if type(trace_id) ~= "string" or #trace_id ~= 32 or trace_id:find("[^0-9a-fA-F]") then
    return nil
  end
  local high = tonumber(trace_id:sub(17, 24), 16)
  local low = tonumber(trace_id:sub(25, 32), 16)
  return ffi.new("uint64_t", high) * 0x100000000ULL + low
end

function sample(tag, timestamp, record)
  local level = record.level
  if type(level) ~= "string" or not SAMPLED_LEVELS[level:lower()] then
    return 0, timestamp, record -- WARNING and above, or no level: keep
  end
  local bits = low64(record.trace_id)
  if bits == nil or KEEP_ALL or bits < BOUND then
    return 0, timestamp, record -- outside a trace, or a sampled trace: keep
  end
  return -1, timestamp, record
end
