import type { DynamicBatching, QueuePolicy, TimeoutAction } from './model-config-types.js';
import { configError, setMapEntry, type MessageReader, type MessageSchema } from './message-reader.js';

/** model_config.proto `ModelQueuePolicy.TimeoutAction`, in enum-number order. */
export const TIMEOUT_ACTIONS: readonly TimeoutAction[] = ['REJECT', 'DELAY'];

const UINT32_MAX = 0xffffffff;

export const DYNAMIC_BATCHING_SCHEMA: MessageSchema = {
  known: [
    'preferred_batch_size', 'max_queue_delay_microseconds', 'preserve_ordering', 'priority_levels',
    'default_priority_level', 'default_queue_policy', 'priority_queue_policy',
  ],
};

const QUEUE_POLICY_SCHEMA: MessageSchema = {
  known: ['timeout_action', 'default_timeout_microseconds', 'allow_timeout_override', 'max_queue_size'],
};

export function readDynamicBatching(batching: MessageReader, maxBatchSize: number): DynamicBatching {
  const preferred = batching.values('preferred_batch_size').map(({ value, path }) => {
    const size = batching.asInt(value, path, { min: 1 });
    if (maxBatchSize > 0 && size > maxBatchSize) {
      throw configError(batching.context, path,
        `preferred batch size ${size} exceeds max_batch_size ${maxBatchSize}`, value.position);
    }
    return size;
  });
  const priorityLevels = batching.int('priority_levels', 0, { min: 0 });
  const defaultQueuePolicy = batching.message('default_queue_policy', QUEUE_POLICY_SCHEMA);
  return {
    preferred_batch_size: preferred,
    max_queue_delay_microseconds: batching.int('max_queue_delay_microseconds', 0, { min: 0 }),
    preserve_ordering: batching.bool('preserve_ordering'),
    priority_levels: priorityLevels,
    default_priority_level: readDefaultPriorityLevel(batching, priorityLevels),
    ...(defaultQueuePolicy ? { default_queue_policy: readQueuePolicy(defaultQueuePolicy) } : {}),
    priority_queue_policy: readPriorityQueuePolicies(batching, priorityLevels),
  };
}

/** Levels run from 1 (highest) to priority_levels; without levels the default must stay 0. */
function readDefaultPriorityLevel(batching: MessageReader, priorityLevels: number): number {
  if (priorityLevels === 0) {
    batching.int('default_priority_level', 0, { min: 0, max: 0 });
    return 0;
  }
  if (!batching.has('default_priority_level')) {
    throw batching.fail(`default_priority_level is required when priority_levels is set (1..${priorityLevels})`);
  }
  return batching.int('default_priority_level', 0, { min: 1, max: priorityLevels });
}

function readPriorityQueuePolicies(batching: MessageReader, priorityLevels: number): Record<string, QueuePolicy> {
  const policies: Record<string, QueuePolicy> = {};
  for (const entry of batching.mapEntries('priority_queue_policy', QUEUE_POLICY_SCHEMA)) {
    if (entry.key === undefined) {
      throw configError(batching.context, entry.path, "map entry needs a 'key' (a priority level)", entry.position);
    }
    if (priorityLevels === 0) {
      throw configError(batching.context, entry.path, 'needs priority_levels to be set', entry.key.position);
    }
    const level = batching.asInt(entry.key, `${entry.path}.key`, { min: 1, max: priorityLevels });
    if (Object.hasOwn(policies, String(level))) {
      throw configError(batching.context, `${entry.path}.key`, `priority level ${level} has a policy already`, entry.key.position);
    }
    setMapEntry(policies, String(level), readQueuePolicy(entry.value));
  }
  return policies;
}

function readQueuePolicy(policy: MessageReader | undefined): QueuePolicy {
  return {
    timeout_action: policy?.enumValue('timeout_action', TIMEOUT_ACTIONS, 'REJECT') ?? 'REJECT',
    default_timeout_microseconds: policy?.int('default_timeout_microseconds', 0, { min: 0 }) ?? 0,
    allow_timeout_override: policy?.bool('allow_timeout_override') ?? false,
    max_queue_size: policy?.int('max_queue_size', 0, { min: 0, max: UINT32_MAX }) ?? 0,
  };
}
