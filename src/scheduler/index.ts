export { RequestScheduler } from './request-scheduler.js';
export type { BatchExecutor, SchedulerPolicy } from './request-scheduler.js';
