-- Restart the gang from the newest checkpoint: the operator starts a new attempt when the
-- value of this annotation changes (the current time makes every run of the action new).
local os = require("os")
local phase = nil
if obj.status ~= nil then
  phase = obj.status.phase
end
if phase ~= "Running" and phase ~= "Queued" then
  error("restart needs a Running or Queued job, not " .. (phase or "one without status"), 0)
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["kubetune.io/restart"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
