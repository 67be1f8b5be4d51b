export { RequestScheduler } from './request-scheduler.js';
export type { BatchExecutor, ExecutionObserver, ScheduledResponse, SchedulerPolicy } from './request-scheduler.js';
