export { PriorityQueues } from './priority-queues.js';
export { RequestScheduler } from './request-scheduler.js';
export type {
  AnswerListener, BatchExecutor, EnqueueOptions, ExecutionObserver, QueuePolicyLimits, RequestProgress, ScheduledResponse, SchedulerPolicy, StepListener,
} from './request-scheduler.js';
