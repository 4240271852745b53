-- Argo CD health check for kubetune.io/FineTuneJob.
--
--   Healthy      the model is published: phase Succeeded (manifest.json written last).
--   Degraded     phase Failed or a Failed condition is True, with its reason and message; also a
--                spec change the operator refused (SpecApplied=False: only spec.suspend may change
--                once the training job exists), which would otherwise look Healthy or Progressing
--                while running the old spec.
--   Suspended    phase Suspended or spec.suspend: true.
--   Progressing  everything else, with phase, percent, loss and ETA; also while the operator has
--                not yet acted on the latest spec (status.observedGeneration < metadata.generation).
--
-- Written for Lua 5.1 (Argo CD runs gopher-lua); tests also run it under Lua 5.4.

local function find_condition(status, condition_type)
  if status.conditions == nil then
    return nil
  end
  for _, condition in ipairs(status.conditions) do
    if condition.type == condition_type then
      return condition
    end
  end
  return nil
end

local function is_true(condition)
  return condition ~= nil and condition.status == "True"
end

local function non_empty(text)
  return text ~= nil and text ~= ""
end

local function failure_message(status, failed)
  if failed ~= nil and non_empty(failed.message) then
    if non_empty(failed.reason) then
      return failed.reason .. ": " .. failed.message
    end
    return failed.message
  end
  if status.progress ~= nil and non_empty(status.progress.message) then
    return status.progress.message
  end
  return "FineTuneJob failed"
end

local function success_message(status)
  local outputs = status.outputs
  if outputs ~= nil and non_empty(outputs.model) then
    return "Model at " .. outputs.model
  end
  if outputs ~= nil and non_empty(outputs.adapter) then
    return "Adapter at " .. outputs.adapter
  end
  return "Succeeded"
end

-- Conditions that say why a job is waiting (the operator's types): type -> the status that means "waiting".
local WAITING_CONDITIONS = {
  { type = "PyTorchJobCreated", status = "False" },
  { type = "Suspended", status = "True" },
  { type = "Running", status = "False" },
}

local function waiting_reason(status)
  if status.progress ~= nil and non_empty(status.progress.message) then
    return status.progress.message
  end
  for _, waiting in ipairs(WAITING_CONDITIONS) do
    local condition = find_condition(status, waiting.type)
    if condition ~= nil and condition.status == waiting.status and non_empty(condition.message) then
      return condition.message
    end
  end
  return nil
end

-- "Training 42% loss 1.23 eta 1h02m", or "Queued: <why>" before the trainer reports numbers.
local function progress_message(status)
  local parts = { status.phase or "Pending" }
  local progress = status.progress
  if progress ~= nil then
    if progress.percent ~= nil then
      table.insert(parts, string.format("%d%%", math.floor(progress.percent)))
    end
    if progress.loss ~= nil then
      table.insert(parts, string.format("loss %.2f", progress.loss))
    end
    if non_empty(progress.eta) then
      table.insert(parts, "eta " .. progress.eta)
    end
  end
  local message = table.concat(parts, " ")
  if #parts == 1 then
    local why = waiting_reason(status)
    if why ~= nil then
      message = message .. ": " .. why
    end
  end
  return message
end

local hs = {}
local status = obj.status

if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubetune operator"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = string.format(
    "Waiting for the operator to act on generation %d (observed %d)", generation, status.observedGeneration
  )
  return hs
end

local failed = find_condition(status, "Failed")
if status.phase == "Failed" or is_true(failed) then
  hs.status = "Degraded"
  hs.message = failure_message(status, failed)
  return hs
end

local applied = find_condition(status, "SpecApplied")
if applied ~= nil and applied.status == "False" then
  hs.status = "Degraded"
  hs.message = (applied.reason or "SpecImmutable") .. ": " .. (applied.message or "the spec change was refused")
  return hs
end

if status.phase == "Succeeded" or is_true(find_condition(status, "Succeeded")) then
  hs.status = "Healthy"
  hs.message = success_message(status)
  return hs
end

if status.phase == "Suspended" or (obj.spec ~= nil and obj.spec.suspend == true) then
  hs.status = "Suspended"
  hs.message = progress_message(status)
  return hs
end

hs.status = "Progressing"
hs.message = progress_message(status)
return hs
