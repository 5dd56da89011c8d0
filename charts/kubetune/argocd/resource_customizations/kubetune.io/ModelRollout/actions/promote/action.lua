-- Next step: the operator ends the current pause (or inconclusive analysis) and moves on.
local phase = nil
if obj.status ~= nil then
  phase = obj.status.phase
end
if not (phase == "Progressing" or phase == "Paused") then
  error("promote needs a Progressing or Paused rollout, not " .. (phase or "one without status"), 0)
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["kubetune.io/promote"] = "step"
return obj
