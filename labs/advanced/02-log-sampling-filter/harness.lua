-- The checker's harness for advanced/02-log-sampling-filter (not the learner's file).
--
--   luajit harness.lua FILTER.lua RECORDS.txt RESULTS.txt [FUNCTION]
--
-- Loads the learner's filter the way Fluent Bit does (a script that defines a global
-- function, called by name: `sample`, or FUNCTION; tests/logs/ runs the project's own
-- deploy/fluent-bit/sampling.lua through this harness too), then feeds it every record of RECORDS.txt: one
-- record per line, each a Lua table constructor {tag=..., ts=..., record={...}} written by
-- check.py. For each record it calls sample(tag, ts, record) and writes one line to
-- RESULTS.txt:
--
--   OK <tab> code <tab> timestamp returned unchanged (1/0) <tab> record returned unchanged (1/0)
--   ERR <tab> the error message
--
-- Exit status 0 when every record was processed (errors included, they are reported per
-- line); 2 when the filter cannot be loaded or defines no `sample` function.

local filter_path, records_path, results_path = arg[1], arg[2], arg[3]
local function_name = arg[4] or "sample"

local function one_line(text)
  return (tostring(text):gsub("[\r\n\t]+", " "))
end

local function copy(value)
  if type(value) ~= "table" then
    return value
  end
  local out = {}
  for k, v in pairs(value) do
    out[copy(k)] = copy(v)
  end
  return out
end

local function same(a, b)
  if type(a) ~= type(b) then
    return false
  end
  if type(a) ~= "table" then
    return a == b
  end
  for k, v in pairs(a) do
    if not same(v, b[k]) then
      return false
    end
  end
  for k in pairs(b) do
    if a[k] == nil then
      return false
    end
  end
  return true
end

-- The learner's script, in its own global table (it still sees the standard library and
-- `require`, as in Fluent Bit).
local chunk, load_error = loadfile(filter_path)
if not chunk then
  io.stderr:write("cannot load the filter: " .. one_line(load_error) .. "\n")
  os.exit(2)
end
local env = setmetatable({}, { __index = _G })
setfenv(chunk, env)
local ok, run_error = pcall(chunk)
if not ok then
  io.stderr:write("the filter failed while loading: " .. one_line(run_error) .. "\n")
  os.exit(2)
end
-- A global of the script; `_G.sample = ...` reaches the real global table instead.
local sample = rawget(env, function_name) or rawget(_G, function_name)
if type(sample) ~= "function" then
  io.stderr:write("the filter defines no global function `" .. function_name .. "`\n")
  os.exit(2)
end

local out = assert(io.open(results_path, "w"))
for line in io.lines(records_path) do
  local make = assert(loadstring("return " .. line))
  local item = make()
  local original = copy(item.record)
  local called, code, ts, record = pcall(sample, item.tag, item.ts, item.record)
  if not called then
    out:write("ERR\t" .. one_line(code) .. "\n")
  else
    out:write(
      string.format(
        "OK\t%s\t%d\t%d\n",
        one_line(code),
        ts == item.ts and 1 or 0,
        same(record, original) and 1 or 0
      )
    )
  end
end
out:close()
