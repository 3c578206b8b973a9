-- Fluent Bit Lua filter: log sampling by trace (deploy/fluent-bit/README.md).
--
-- Keeps every line that is not DEBUG or INFO (warning, error, critical, and lines without a
-- level, such as a raw traceback on stderr). Keeps DEBUG and INFO lines for RATIO of traces,
-- decided from the trace id with exactly the rule of OpenTelemetry's TraceIdRatioBased
-- sampler (Python SDK: sampled iff the low 64 bits of the id < round(ratio * 2^64)). The
-- services' own log sampler (servescope.telemetry.logging.LogSampler) and their head sampler
-- use that rule too, so the lines kept are the lines of the traces kept, in every service,
-- with no coordination; and sampling twice at one ratio (at the source, then here) keeps the
-- same traces, not RATIO^2 of them. DEBUG and INFO lines without a trace id (startup,
-- shutdown, background work) are sampled at RATIO by a stable hash of the line, so a line
-- replayed or shipped twice gets the same answer.
--
-- The ratio: SERVESCOPE_LOG_INFO_SAMPLE_RATIO (the services' variable), read once when the
-- script loads; `servescope stack install` sets it from the app chart's logSampling.infoRate.
-- Without it, DEFAULT_RATIO (the services' own default).
--
-- Fluent Bit's contract: a function(tag, timestamp, record) returning code, timestamp,
-- record; -1 drops the record, 0 keeps it unchanged. This filter only decides, never edits.
-- `sample` judges every level; `sample_debug` and `sample_info` judge one level each and keep
-- the others, for one [FILTER] instance per level whose Alias names Fluent Bit's counters
-- (deploy/stack/fluent-bit-sampling.yaml).

local ffi = require("ffi")
local bit = require("bit")

local DEFAULT_RATIO = 0.1

local function read_ratio()
  local raw = os.getenv("SERVESCOPE_LOG_INFO_SAMPLE_RATIO")
  if raw == nil or raw == "" then
    return DEFAULT_RATIO
  end
  local ratio = tonumber(raw)
  if ratio == nil or ratio ~= ratio or ratio < 0 or ratio > 1 then
    -- Fail at load: a typo must not silently keep or drop every INFO line.
    error("SERVESCOPE_LOG_INFO_SAMPLE_RATIO must be a number from 0 to 1, got " .. raw)
  end
  return ratio
end

local RATIO = read_ratio()

-- round(RATIO * 2^64) as Python's round() gives it (half to even). RATIO * 2^64 is an exact
-- double; from 2^53 up it is a whole number that converts to uint64_t exactly; below, round
-- it first. RATIO = 1 keeps everything (2^64 does not fit in 64 bits).
local KEEP_ALL = RATIO >= 1

local function bound_for(ratio)
  local x = ratio * 2 ^ 64
  if x < 2 ^ 53 then
    local whole = math.floor(x)
    local rest = x - whole
    if rest > 0.5 or (rest == 0.5 and whole % 2 == 1) then
      whole = whole + 1
    end
    x = whole
  end
  return ffi.cast("uint64_t", x)
end

local BOUND = KEEP_ALL and ffi.cast("uint64_t", 0) or bound_for(RATIO)

-- Exact 64-bit integer from 16 hex digits. Never tonumber() all 16: a Lua number is a double
-- (53 bits) and ids just below the bound would round up to it.
local function hex64(hex)
  local high = tonumber(hex:sub(1, 8), 16)
  local low = tonumber(hex:sub(9, 16), 16)
  return ffi.cast("uint64_t", high) * 0x100000000ULL + low
end

-- The low 64 bits of a W3C trace id (32 hex digits; the all-zero id is invalid), or nil.
local function trace_bits(trace_id)
  if type(trace_id) ~= "string" or #trace_id ~= 32 or trace_id:find("[^0-9a-fA-F]") then
    return nil
  end
  if not trace_id:find("[1-9a-fA-F]") then
    return nil
  end
  return hex64(trace_id:sub(17, 32))
end

-- FNV-1a (64-bit) over the bytes, then MurmurHash3's 64-bit finalizer. FNV-1a is tiny and
-- exact in LuaJIT's uint64_t arithmetic, but its multiply only carries a change upward, so
-- the last bytes barely reach the top bits compared with the bound; the finalizer spreads
-- every input bit over them. Not cryptographic: sampling needs spread and determinism only.
local FNV_OFFSET = 0xcbf29ce484222325ULL
local FNV_PRIME = 0x100000001b3ULL

local function line_hash(text)
  local h = FNV_OFFSET
  for i = 1, #text do
    h = bit.bxor(h, text:byte(i)) * FNV_PRIME
  end
  h = bit.bxor(h, bit.rshift(h, 33)) * 0xff51afd7ed558ccdULL
  h = bit.bxor(h, bit.rshift(h, 33)) * 0xc4ceb9fe1a85ec53ULL
  return bit.bxor(h, bit.rshift(h, 33))
end

-- What identifies a line: the service's own fields, not the shipper's (kubernetes, stream,
-- time), so the answer does not depend on which node or replay shipped it.
local KEY_FIELDS = { "timestamp", "service", "event", "logger" }

local function line_key(record)
  local parts = {}
  for i, name in ipairs(KEY_FIELDS) do
    local value = record[name]
    parts[i] = value == nil and "" or tostring(value)
  end
  return table.concat(parts, "\n")
end

-- structlog's and the standard library's spellings, to the services' five levels.
local ALIASES = { warn = "warning", exception = "error", fatal = "critical" }

local function level_of(record)
  local level = record.level
  if type(level) ~= "string" then
    return nil
  end
  level = level:lower()
  return ALIASES[level] or level
end

-- Whether a DEBUG or INFO line is kept.
local function keeps(record)
  if KEEP_ALL then
    return true
  end
  local bits = trace_bits(record.trace_id)
  if bits == nil then
    bits = line_hash(line_key(record))
  end
  return bits < BOUND
end

local SAMPLED = { debug = true, info = true }

function sample(tag, timestamp, record)
  if SAMPLED[level_of(record)] and not keeps(record) then
    return -1, timestamp, record
  end
  return 0, timestamp, record
end

local function for_level(wanted)
  return function(tag, timestamp, record)
    if level_of(record) == wanted and not keeps(record) then
      return -1, timestamp, record
    end
    return 0, timestamp, record
  end
end

sample_debug = for_level("debug")
sample_info = for_level("info")
