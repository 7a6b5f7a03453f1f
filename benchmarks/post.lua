-- wrk script: POST the same JSON body on every request.
-- Usage: wrk ... -s benchmarks/post.lua http://127.0.0.1:PORT -- /path body.json
local request_bytes

function init(args)
  local path, file = args[1], args[2]
  local handle = assert(io.open(file, "rb"))
  local body = handle:read("*a")
  handle:close()
  request_bytes = wrk.format("POST", path, { ["Content-Type"] = "application/json" }, body)
end

function request()
  return request_bytes
end
