-- Fluent Bit Lua filter: keep every WARNING and above, and INFO/DEBUG lines for 10% of
-- traces, chosen by trace id exactly as OpenTelemetry's TraceIdRatioBased sampler does,
-- so the log lines you keep belong to the traces Jaeger keeps.
--
-- Fluent Bit calls sample(tag, timestamp, record) for every line (the `call sample` option
-- of its [FILTER] section). `record` is a Lua table of the line's fields: our services log
-- JSON (structlog), so it has record.level ("debug", "info", "warning", "error",
-- "critical": lower case), record.event, and record.trace_id (32 hex characters) on every
-- line written inside a request. Lines from outside a request have no trace_id; raw stderr
-- lines have no level at all.
--
-- Return three values: code, timestamp, record. The code means
--   -1  drop the line
--    0  keep the line unchanged (the timestamp and record you return are ignored)
--    1  keep it, replaced by the timestamp and record you return
--    2  keep it, replaced by the record you return, original timestamp
-- This filter only decides: return -1 or 0, with the timestamp and record you were given.

local RATIO = 0.1

function sample(tag, timestamp, record)
  -- TODO 1: WARNING and above (warning, error, critical) and lines without a level: keep.

  -- TODO 2: no trace id (a line from outside any request): keep.

  -- TODO 3: INFO and DEBUG inside a trace: keep when the low 64 bits of the trace id (its
  -- last 16 hex characters) are below RATIO * 2^64, else drop. 16 hex digits are 64 bits,
  -- more than a Lua number holds exactly (53): see README.md, "The rule", for LuaJIT's
  -- 64-bit integers (0ULL).

  return 0, timestamp, record
end
