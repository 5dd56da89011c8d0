-- Retry: the operator restarts a rolled-back (or refused) rollout from its first step.
local phase = nil
if obj.status ~= nil then
  phase = obj.status.phase
end
if not (phase == "RolledBack" or phase == "Failed") then
  error("retry needs a RolledBack or Failed rollout, not " .. (phase or "one without status"), 0)
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["kubetune.io/retry"] = "true"
return obj
