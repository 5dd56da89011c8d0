-- Abort: the operator sets the candidate's weight to 0 and records this text as the reason.
local phase = nil
if obj.status ~= nil then
  phase = obj.status.phase
end
if not (phase ~= "Promoted" and phase ~= "RolledBack" and phase ~= "Failed") then
  error("abort needs a rollout still in progress, not " .. (phase or "one without status"), 0)
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["kubetune.io/abort"] = "aborted from Argo CD"
return obj
