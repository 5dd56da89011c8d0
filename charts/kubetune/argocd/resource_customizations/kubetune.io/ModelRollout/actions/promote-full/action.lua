-- Promote fully: the operator skips the remaining steps and gives the candidate 100 %.
local phase = nil
if obj.status ~= nil then
  phase = obj.status.phase
end
if not (phase == "Progressing" or phase == "Paused") then
  error("promote-full needs a Progressing or Paused rollout, not " .. (phase or "one without status"), 0)
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["kubetune.io/promote"] = "full"
return obj
